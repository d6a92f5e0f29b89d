"""Training that watches itself: held-out validation, guards, the best adapter, resume,
and the metrics read back by TensorBoard's own reader."""

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_opd.cli import main
from mlx_opd.data import read_samples
from mlx_opd.method import validation as val
from mlx_opd.run.config import ValidationConfig, load_train_config
from mlx_opd.run.run_dir import resolve_adapter

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "samples.jsonl"


def test_carve_is_disjoint_fixed_and_never_trained_on(tmp_path):
    from mlx_opd.toy.synth import write_dataset

    paths = write_dataset(tmp_path / "d", 20, 0)
    cfg = load_train_config(None, {"data.path": str(paths["train"]), "validation.fraction": 0.25})
    samples, _ = read_samples(cfg.data)
    train, held, note = val.carve(samples, cfg)
    assert len(held) == 5 and len(train) == 15 and "never trained on" in note
    assert not {s.id for s in train} & {s.id for s in held}
    again = val.carve(samples, cfg)[1]
    assert [s.id for s in again] == [s.id for s in held]  # the same split every time
    other = val.carve(samples, dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=1)))
    assert [s.id for s in other[1]] != [s.id for s in held]
    cfg2 = load_train_config(None, {"data.path": str(paths["train"]),
                                    "validation.path": str(paths["heldout"])})
    assert len(val.carve(samples, cfg2)[1]) == 20 and val.carve(samples, cfg2)[0] == samples
    with pytest.raises(ValueError, match="validation.fraction"):
        load_train_config(None, {"validation.fraction": 1.5})


def test_guards_stop_on_format_and_on_patience():
    v = ValidationConfig(fraction=0.1, patience=2, margin=0.05, min_format=0.5)
    st = val.GuardState([])
    rec = lambda acc, fmt=1.0: {"val/plain_acc": acc, "val/format": fmt,  # noqa: E731
                                "val/divergence": 0.1}
    assert val.check(st, rec(0.50), v, 0) == (True, None)
    assert val.check(st, rec(0.60), v, 10) == (True, None)
    assert val.check(st, rec(0.58), v, 20) == (False, None)        # within the margin
    assert val.check(st, rec(0.50), v, 30) == (False, None)        # worse: 1 in a row
    best, why = val.check(st, rec(0.40), v, 40)                    # worse: 2 in a row
    assert not best and "worse than its best 0.600 (step 10)" in why and "2 evaluations" in why
    assert st.best["step"] == 10 and len(st.history) == 5
    assert "below validation.min_format" in val.check(val.GuardState([]), rec(0.9, 0.4), v, 0)[1]
    # without labels the held-out divergence decides (lower is better)
    d = val.GuardState([])
    v2 = ValidationConfig(fraction=0.1, patience=1, margin=0.01)
    assert val.check(d, {"val/format": 1.0, "val/divergence": 0.2}, v2, 0)[0]
    assert val.check(d, {"val/format": 1.0, "val/divergence": 0.1}, v2, 5)[0]
    assert d.best["criterion"] == "divergence" and d.best["step"] == 5
    assert "divergence 0.300" in val.check(d, {"val/format": 1.0, "val/divergence": 0.3}, v2, 9)[1]
    # saved and restored exactly
    assert val.GuardState.from_dict(json.loads(json.dumps(st.to_dict()))) == st


def test_teacher_drop_guard_stops_on_forgetting_and_never_keeps_that_step():
    v = ValidationConfig(fraction=0.1, max_teacher_drop=0.05, patience=2)
    st = val.GuardState([])
    rec = lambda plain, crop: {"val/plain_acc": plain, "val/teacher_acc": crop,  # noqa: E731
                               "val/format": 1.0, "val/divergence": 0.1}
    assert val.check(st, rec(0.30, 1.00), v, 0) == (True, None)
    assert val.check(st, rec(0.70, 0.95), v, 50) == (True, None)     # exactly the allowance
    assert val.check(st, rec(0.90, 0.9375), v, 100) == (False, None)  # better plain, crop lost:
    assert st.best["step"] == 50                                      # skipped, one dip only
    assert val.check(st, rec(0.80, 1.00), v, 150) == (True, None)     # the crop is back
    assert val.check(st, rec(0.90, 0.90), v, 200) == (False, None)
    best, why = val.check(st, rec(0.95, 0.875), v, 250)               # second in a row: stop
    assert not best and why.startswith("forgetting: the teacher view (crop) is answered at 0.88")
    assert "below its 1.00 at step 0" in why and why.endswith("2 evaluation(s) in a row")
    assert st.best["step"] == 150
    assert st.stopped == why and val.GuardState.from_dict(st.to_dict()) == st
    # patience 0: such steps are skipped as the best, and never stop the run
    skip = val.GuardState([])
    v0 = ValidationConfig(fraction=0.1, max_teacher_drop=0.05)
    val.check(skip, rec(0.3, 1.0), v0, 0)
    for step in (10, 20, 30):
        assert val.check(skip, rec(0.9, 0.9), v0, step) == (False, None)
    assert skip.best["step"] == 0 and skip.forgot_in_a_row == 3
    # off by default: the same records never stop a run
    off = val.GuardState([])
    for step, r in ((0, rec(0.3, 1.0)), (100, rec(0.9, 0.5))):
        assert val.check(off, r, ValidationConfig(fraction=0.1), step)[1] is None
    with pytest.raises(ValueError, match="max_teacher_drop"):
        ValidationConfig(max_teacher_drop=1.5)


@pytest.fixture(scope="module")
def answering_base(tmp_path_factory):
    """A tiny base that answers in the format (the demo's recipe, a short SFT)."""
    from mlx_opd.toy import demo

    r = dataclasses.replace(demo.QUICK, sft_steps=12, sft_scenes=64)
    root = tmp_path_factory.mktemp("valbase")
    return r, demo.build_base(r, root / "cache", log=lambda m: None)


def _train_args(base, r, data, out, lr, steps, extra=()):
    sets = {"views.draw_box": "false", "views.hint": "null", "pixels.max_pixels": r.max_pixels,
            "rollout.n": 2, "rollout.max_tokens": 3, "loss.k": 20, "loss.chunk_size": 64,
            "teacher.mode": "frozen", "optim.lr": lr, "optim.warmup_steps": 0,
            "optim.prompts_per_step": 2, "optim.epochs": 100, "run.save_every": 1,
            "validation.fraction": 0.25, "validation.every": 1, "validation.min_format": 0.3,
            "validation.patience": 2, "run.report_to": "tensorboard", **dict(extra)}
    args = ["train", "--model", str(base), "--data", str(data), "--out", str(out),
            "--max-steps", str(steps)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args


@pytest.mark.numerics
def test_degrading_run_stops_keeps_the_best_and_resumes(answering_base, tmp_path):
    """lr far too high: the answers leave the format, the format guard stops the run with a
    checkpoint, adapters/best is the adapter from before, and a resume keeps the history."""
    from mlx_opd.run import checkpoint
    from mlx_opd.toy.synth import write_dataset

    r, base = answering_base
    data = write_dataset(tmp_path / "d", 24, 0, r.synth, 4)["train"]
    out = tmp_path / "run"
    res = CliRunner().invoke(main, _train_args(base, r, data, out, 0.5, 8))
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [x for x in rows if "val/format" in x]
    assert vals[0]["step"] == 0 and vals[0]["val/format"] >= 0.3  # the base answers in format
    stop = vals[-1]["step"]
    assert stop < 8 and "stopped early at step" in res.output and "answer format" in res.output
    best = json.loads((out / "adapters" / "best" / "best.json").read_text())
    assert best["step"] < stop and best["metrics"]["val/format"] >= 0.3
    assert "best adapter" in res.output and "last adapter" in res.output
    ck = checkpoint.latest(out)
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == stop and state["validation"]["history"] == [
        {k: v for k, v in x.items()} for x in vals]
    # `--adapter RUN_DIR` takes the best, and says so
    found, note = resolve_adapter(out)
    assert found == out / "adapters" / "best" and "the best adapter" in note
    # the metrics through TensorBoard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "val/format" in tags and "loss/objective" in tags
    tb = [(e.step, e.value) for e in acc.Scalars("val/format")]
    assert [s for s, _ in tb] == [x["step"] for x in vals]
    assert all(abs(v - x["val/format"]) < 1e-6 for (_, v), x in zip(tb, vals))  # float32
    # resume: the validation history and the best carry over exactly
    res = CliRunner().invoke(main, ["train", "--resume", str(out), "--max-steps", str(stop + 1)])
    assert res.exit_code == 0, res.output
    state2 = json.loads((checkpoint.latest(out) / "state.json").read_text())
    assert state2["validation"]["history"][:len(vals)] == state["validation"]["history"]
    assert len(state2["validation"]["history"]) == len(vals) + 1
    assert state2["validation"]["best"] == state["validation"]["best"]
