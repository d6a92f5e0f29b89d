"""The synthetic benchmark generator and the evaluator's answer parsing."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_opd.cli import main
from mlx_opd.data import read_samples
from mlx_opd.evaluation.benchmarks import answers as bench_answers
from mlx_opd.evaluation.evaluate import evaluate
from mlx_opd.method.answers import parse_answer
from mlx_opd.method.views import teacher_view
from mlx_opd.run.config import DataConfig, ViewConfig
from mlx_opd.toy.synth import COLOURS, SynthConfig, make_scene, write_dataset


@pytest.mark.parametrize("text,expected", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B) blue", "B"), ("The answer is B", "B"),
    ("Answer: C", "C"), ("answer is (D).", "D"), ("option A", "A"), ("blue", "B"),
    ("It is Blue.", "B"), ("", None), ("E", None), ("blue or green", None), ("Banana", None),
    # the authors' reader (method/answers.py rules 1-4), which the benchmarks use too
    ("C D", None), ("**C**", "C"), ("<answer>(A)</answer>", "A"), ("Answer: B", "B"),
    ("I think it is option B", None), ("the answer is b", None),
])
def test_parse_answer(text, expected):
    options = ["green", "blue", "cyan", "yellow"]
    assert parse_answer(text, options) == expected
    # one reader: the benchmarks' letter questions read the same letter
    assert bench_answers.parse("letter", text, options) == expected


def test_scene_is_deterministic_and_answerable_in_the_crop():
    cfg = SynthConfig(evidence_size=10, clutter=30, distractors=3)
    a, b, c = make_scene(5, cfg), make_scene(5, cfg), make_scene(6, cfg)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.answer == b.answer
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))
    x1, y1, x2, y2 = a.box
    assert x2 - x1 == 10 and a.options["ABCDEF".index(a.answer)] == a.colour
    # inside the box: the evidence colour is there, no other saturated colour
    crop = np.asarray(a.image)[y1:y2, x1:x2].reshape(-1, 3)
    assert (np.abs(crop - np.array(COLOURS[a.colour])).sum(1) == 0).sum() > 10
    saturated = crop[(crop.max(1) - crop.min(1)) > 60]
    assert all(tuple(p) == COLOURS[a.colour] for p in saturated)


def test_difficulty_options_and_splits(tmp_path):
    paths = write_dataset(tmp_path, 6, 3, SynthConfig(evidence_size=8, fixed_options=True),
                          n_heldout=4)
    train, _ = read_samples(DataConfig(path=str(paths["train"])))
    held, _ = read_samples(DataConfig(path=str(paths["heldout"])))
    assert len(train) == 6 and len(held) == 4
    assert all(s.options == train[0].options for s in train + held)  # fixed option order
    assert {s.box for s in train}.isdisjoint({s.box for s in held})  # different seed streams
    assert all(s.box[2] - s.box[0] == 8 for s in train)
    again = write_dataset(tmp_path / "again", 6, 3, SynthConfig(evidence_size=8, fixed_options=True),
                          n_heldout=4)
    assert again["train"].read_text() == paths["train"].read_text()
    with pytest.raises(ValueError, match="evidence_size"):
        SynthConfig(evidence_size=500)


def test_synth_and_eval_commands(tiny_dir, tmp_path):
    r = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "d"), "--n", "3", "--seed", "1",
                                  "--evidence-size", "14", "--clutter", "5", "--distractors", "1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", "--model", str(tiny_dir["qwen2_5_vl"]), "--data",
                                  str(tmp_path / "d" / "heldout.jsonl"), "--out",
                                  str(tmp_path / "e.json"), "--views", "plain,teacher",
                                  "--max-tokens", "3"])
    assert r.exit_code == 0, r.output
    e = json.loads((tmp_path / "e.json").read_text())
    assert {"plain_acc", "teacher_acc", "gap", "n", "unparsed"} <= set(e) and e["n"] == 3
    assert e["gap"] == pytest.approx(e["teacher_acc"] - e["plain_acc"])
    rows = (tmp_path / "e.jsonl").read_text().splitlines()
    assert len(rows) == 6 and (tmp_path / "e.png").stat().st_size > 1000
    r = CliRunner().invoke(main, ["eval", "--model", str(tiny_dir["qwen2_5_vl"]), "--data",
                                  str(tmp_path / "d" / "heldout.jsonl"), "--out",
                                  str(tmp_path / "x.json"), "--views", "plain,zoomed"])
    assert r.exit_code != 0 and "unknown view" in r.output


def test_evaluate_counts_against_a_scripted_model(loaded, tmp_path):
    """The scorer itself: with the answer planted as the model's only possible output."""
    import mlx.core as mx

    from mlx_opd import models

    write_dataset(tmp_path, 4, 0, SynthConfig(fixed_options=True), n_heldout=1)
    samples, _ = read_samples(DataConfig(path=str(tmp_path / "train.jsonl")))
    L = models.load(loaded("qwen2_vl").path)
    letter = samples[0].answer
    tok = L.tokenizer.encode(letter, add_special_tokens=False)[0]
    w = L.model.language_model.lm_head.weight
    L.model.language_model.lm_head.weight = mx.zeros_like(w)
    bias = mx.zeros((w.shape[0],)).at[tok].add(100.0)
    head = L.model.language_model.lm_head
    L.model.language_model.lm_head = lambda h: head(h) + bias  # always answers `letter`
    summary, rows = evaluate(L, samples, ("plain", "teacher"), ViewConfig(), max_tokens=1)
    expected = sum(s.answer == letter for s in samples) / len(samples)
    assert summary["plain_acc"] == expected and summary["teacher_acc"] == expected
    assert summary["unparsed"] == 0 and len(rows) == 8
    assert teacher_view(samples[0]).image.size[0] >= 28


@pytest.mark.numerics
def test_tiny_base_is_built_once_and_cached(tmp_path):
    from mlx_opd import models
    from mlx_opd.toy import demo

    logs = []
    path = demo.build_base(demo.QUICK, tmp_path, log=logs.append)
    assert (path / "base_recipe.json").exists() and any("built" in m for m in logs)
    again = demo.build_base(demo.QUICK, tmp_path, log=logs.append)
    assert again == path and "cached" in logs[-1]
    L = models.load(path)  # an ordinary Hugging Face-layout checkpoint
    assert L.family == "qwen2_5_vl"
    assert not any(p.name.startswith(".build") for p in tmp_path.iterdir())


@pytest.mark.numerics
def test_demo_base_keeps_the_full_views_evidence_at_the_answer(tmp_path):
    """The mechanism the demo's outcome hangs on (docs/demo.md), under whatever numeric
    configuration runs the test: after supervised training with the probe term, the
    full view's hidden state at the answer position still carries the evidence colour (a
    linear probe fitted on the base's scenes reads it on the calibration split). A short
    build of the demo's base (its model, scenes and loss; 128 scenes, 60 steps: the full
    build's 200 steps cost minutes), held to twice chance; the full build's own rule
    (min_probe 0.75) runs in every demo, and the figures are in its summary."""
    import dataclasses

    from mlx_opd.toy import demo

    r = dataclasses.replace(demo.DemoRecipe(), sft_scenes=128, sft_steps=60,
                            calibration_scenes=32, probe_fit=128, min_teacher_acc=0.0,
                            min_gap=-1.0, max_rounds=1, min_probe=2 / 4)
    base = demo.build_base(r, tmp_path, log=lambda *a: None)
    cal = json.loads((base / "base_recipe.json").read_text())["calibration"]
    assert len(cal) == 1 and cal[0]["answer_probe"] >= 2 / r.synth.n_options, cal


@pytest.mark.numerics
def test_demo_quick_end_to_end(tmp_path):
    from mlx_opd.cli import main as cli
    from mlx_opd.run.files import write_marker

    from .next_steps import run_next

    # an earlier demo's folder where the user added files: both survive the rerun
    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    write_marker(out, "demo")
    write_marker(out / "run", "run")
    (out / "notes.txt").write_text("mine")
    (out / "run" / "mine.txt").write_text("mine too")
    (out / "summary.json").write_text('{"edited": true}')
    r = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.read_text() for p in out.glob("run.old-*/mine.txt")] == ["mine too"]
    assert [p.read_text() for p in out.glob("summary.old-*.json")] == ['{"edited": true}']
    run_next(r.output, expect=3)  # the trainer's (eval, export) and the demo's own eval
    s = json.loads((tmp_path / "demo" / "summary.json").read_text())
    # the demo's base and adapter on the held-out split: the page of what changed lists
    # exactly the items the two evals' rows say were fixed and broken (in Chromium)
    from .test_pages import check_changes_page

    held = out / "data" / "heldout.jsonl"
    for name, extra in (("before", []), ("after", ["--adapter", str(out / "run")])):
        e = CliRunner().invoke(cli, ["eval", "--model", s["base_model"], "--data", str(held),
                                     "--config", str(out / "run"), "--out",
                                     str(tmp_path / f"{name}.json"), *extra])
        assert e.exit_code == 0, e.output
    c = CliRunner().invoke(cli, ["eval", "--compare", str(tmp_path / "before.json"),
                                 str(tmp_path / "after.json"), "--out", str(tmp_path / "c.json")])
    assert c.exit_code == 0, c.output
    check_changes_page(tmp_path / "c.html", tmp_path / "before.json", tmp_path / "after.json")
    for part in ("before", "after"):
        assert {"plain_acc", "student_acc", "teacher_acc"} <= set(s[part])
        assert all(0.0 <= s[part][k] <= 1.0 for k in ("plain_acc", "student_acc", "teacher_acc"))
    assert s["gap_before"] == pytest.approx(s["before"]["teacher_acc"] - s["before"]["plain_acc"])
    assert s["gap_after"] == pytest.approx(s["after"]["teacher_acc"] - s["after"]["plain_acc"])
    assert s["train_steps"] == 2 and s["wall_seconds"] > 0 and s["last_step"] == 2
    assert Path(s["base_model"]).exists()
    assert (Path(s["last_adapter"]) / "adapter_config.json").exists()
    # validated at the start and after every step, on its own split (4 scenes)
    assert [h["step"] for h in s["validation"]] == [0, 1, 2]
    assert all(h["n"] == 4 and 0.0 <= h["format"] <= 1.0 for h in s["validation"])
    if s["best_step"]:  # the adapter reported is the one validation kept
        assert Path(s["adapter"]).name == "best"
        assert (Path(s["adapter"]) / "adapter_config.json").exists()
    else:  # no step beat the base: the base is what is reported, said as such
        assert s["after"] == s["before"] and s["adapter"] == s["base_model"]
    assert s["missed_targets"] is None  # a plumbing run has no targets
    assert (tmp_path / "demo" / "summary.png").stat().st_size > 1000


def test_demo_targets_name_each_miss_with_its_figure():
    from mlx_opd.toy.demo import missed_targets

    def summary(p0, c0, p1, c1):
        return {"before": {"plain_acc": p0, "teacher_acc": c0},
                "after": {"plain_acc": p1, "teacher_acc": c1},
                "gap_before": c0 - p0, "gap_after": c1 - p1}

    assert missed_targets(summary(0.30, 1.00, 0.90, 0.97)) == []
    # exactly on every bar passes: shares of whole counts compared with 1e-9 slack
    assert missed_targets(summary(0.40, 1.00, 0.70, 0.95)) == []
    assert missed_targets(summary(0.30, 1.00, 0.30, 1.00)) == [
        "gap closed 0% < 50%", "plain 0.30 -> 0.30: up less than 0.15"]
    # closing the gap by forgetting the crop is not the method working
    assert missed_targets(summary(0.30, 1.00, 0.85, 0.85)) == [
        "crop 1.00 -> 0.85: down more than 0.05"]
    assert missed_targets(summary(0.80, 1.00, 0.99, 1.00))[0] == "gap before +0.20 < 0.3"


def test_tiny_base_calibration_rule_trains_more_then_says_so(tmp_path):
    """The documented rule: a base whose calibration gap is too small trains more rounds
    (never a new seed) and, past max_rounds, stops with a clear error."""
    import dataclasses

    from mlx_opd.toy import demo

    impossible = dataclasses.replace(demo.QUICK, min_gap=1.5, max_rounds=2)
    logs = []
    with pytest.raises(RuntimeError, match="no crop-vs-full gap after 2 rounds"):
        demo.build_base(impossible, tmp_path, log=logs.append)
    assert sum("one more round" in m for m in logs) == 1
    assert sum("calibration after" in m for m in logs) == 2
    assert not any(p.name.startswith("tiny-base") for p in tmp_path.iterdir())  # nothing cached


def test_soft_first_token_ce_matches_a_float64_oracle_and_the_hard_case():
    """The demo base's uniform answer: CE against equal weight on several token ids."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np

    from mlx_opd.toy.sft import _first_targets, soft_token_ce

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 11)).astype(np.float32) * 3
    alts = [[1, 4, 7, 9], [2], [0, 5]]
    choices, weights = _first_targets([(None, [a[0], 10], a) for a in alts])
    got = np.array(soft_token_ce(mx.array(logits), choices, weights))
    x = logits.astype(np.float64)
    logp = x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)
    want = np.array([-logp[b, a].mean() for b, a in enumerate(alts)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 vs float64
    # one choice is the ordinary cross-entropy
    hard = np.array(nn.losses.cross_entropy(mx.array(logits), mx.array([1, 2, 0]),
                                            reduction="none"))
    one = np.array(soft_token_ce(mx.array(logits), mx.array([[1], [2], [0]]),
                                 mx.array([[1.0], [1.0], [1.0]])))
    np.testing.assert_allclose(one, hard, rtol=1e-6, atol=1e-6)
    assert _first_targets([(None, [3, 10]), (None, [4, 10])]) is None  # all hard: plain CE


def test_crop_anchor_rows_show_the_student_the_teachers_own_view(tmp_path):
    """The demo's crop anchors (departure 6): a quarter of the scenes get a second row
    whose student view is exactly the teacher's (same crop pixels, same text), so their
    divergence is zero until the LoRA moves the crop answers; no answer is written."""
    import dataclasses

    from mlx_opd.method.views import student_view
    from mlx_opd.toy import demo

    r = dataclasses.replace(demo.DemoRecipe(), train_scenes=8)
    paths = write_dataset(tmp_path, r.train_scenes, r.seed, r.synth, 2)
    assert demo.add_crop_anchors(paths["train"], r) == 2
    rows = [json.loads(x) for x in paths["train"].read_text().splitlines()]
    assert len(rows) == 10 and all("answer" not in x for x in rows[8:])
    samples = read_samples(DataConfig(path=str(paths["train"])))[0]
    for scene, anchor in zip(samples[:2], samples[8:]):
        crop = teacher_view(scene, demo.views(r))
        s, t = student_view(anchor, demo.views(r)), teacher_view(anchor, demo.views(r))
        assert np.array_equal(np.asarray(s.image), np.asarray(t.image))
        assert np.array_equal(np.asarray(s.image), np.asarray(crop.image))
        assert s.text == t.text == crop.text


def test_probed_ce_is_response_ce_plus_the_probes_cross_entropy(loaded):
    """The demo base's probe term (sft.probed_ce): the response CE plus weight x the
    probe's CE on the labelled rows' first-response hidden states; value and gradient
    against a reference assembled from the separate pieces (float32, 1e-5)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_opd import models
    from mlx_opd.toy.sft import Probed, probed_ce, response_ce

    from .conftest import random_image

    L = loaded("qwen2_5_vl")
    encs = [models.encode(L, random_image(i, 56, 84), f"colour {i}?") for i in range(3)]
    batch = models.make_batch(encs, [[5, 9], [7, 2], [3, 4]])
    m = Probed(L.model, 4)
    rows, labels, w = mx.array([0, 2]), mx.array([3, 1]), 0.7

    def reference(m):
        hidden = models.response_hidden(m.model, batch)
        p = m.probe(hidden[:, 0])  # every row, then the labelled ones picked
        aux = (nn.losses.cross_entropy(p[0], labels[0]) + nn.losses.cross_entropy(p[2], labels[1])) / 2
        return response_ce(m.model, batch) + w * aux

    got, g = nn.value_and_grad(m, probed_ce)(m, batch, None, rows, labels, w)
    want, gw = nn.value_and_grad(m, reference)(m)
    assert abs(got.item() - want.item()) < 1e-5
    assert abs(got.item() - response_ce(L.model, batch).item()) > 1e-3  # the term counts
    for (k, a), (_, b) in zip(tree_flatten(g), tree_flatten(gw)):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5, err_msg=k)
    assert any(k.startswith("probe.") for k, _ in tree_flatten(g))
