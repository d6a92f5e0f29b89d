"""`mlx-opd plan`: image tokens as the processor counts them, the fit verdict and advice
that works when applied, `train --memory-gb` stopping before any weights are loaded, and
the base model's identity recorded for resume."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlx_opd.cli import main
from mlx_opd.preflight import plan as planner
from mlx_opd.run.config import PixelConfig, load_train_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
DATA = ROOT / "examples" / "data" / "samples.jsonl"


def _cfg(model, **overrides):
    return load_train_config(str(EXAMPLE), {"model.path": str(model), "data.path": str(DATA),
                                            **overrides})


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("size", [(1280, 960), (4000, 3000), (61, 17), (600, 8), (2048, 64)])
def test_plan_image_tokens_equal_the_processors(family, size, loaded):
    """The processor itself is the oracle: plan's smart_resize must count as it does."""
    from PIL import Image

    from mlx_opd import models

    lm = loaded(family)
    config = json.loads((lm.path / "config.json").read_text())
    proc = json.loads((lm.path / "preprocessor_config.json").read_text())
    s = planner.shapes_of(config)
    for pixels in (PixelConfig(), PixelConfig(max_pixels=28 * 28 * 64)):
        bounds = planner.pixel_bounds(proc, pixels)
        want = planner.image_tokens(size, s, bounds)
        enc = models.encode(lm, Image.new("RGB", size, (90, 120, 150)), "Q?", pixels)
        assert models.image_token_count(lm, enc) == want, (size, pixels)


def test_plan_parameter_counts_are_exact(tiny_dir, loaded):
    from mlx.utils import tree_flatten

    lm = loaded("qwen2_5_vl")
    counts = planner.param_counts(json.loads((lm.path / "config.json").read_text()))
    total = sum(v.size for _, v in tree_flatten(lm.model.parameters()))
    assert sum(v for k, v in counts.items() if k != "lora_fans") == total


def test_plan_verdict_and_advice_that_fits_when_applied(tiny_dir):
    cfg = _cfg(tiny_dir["qwen2_5_vl"])
    roomy = planner.plan(cfg, memory_gb=64)
    assert roomy["fits"] and set(roomy["phases"]) >= {"weights", "rollout", "teacher", "student"}
    assert roomy["peak_bytes"] == max(roomy["phases"][k] for k in ("rollout", "teacher", "student"))
    # a budget between the weights and the peak: refused, with advice
    tight_gb = (roomy["phases"]["resident"] + 0.3 * (roomy["peak_bytes"] - roomy["phases"]["resident"])) \
        / planner.GIB / planner.FIT_FRACTION
    tight = planner.plan(cfg, memory_gb=tight_gb)
    assert not tight["fits"] and tight["advice"]
    combined = next(a for a in tight["advice"] if a.get("combined"))
    assert combined["fits"]
    sets = {k: yaml.safe_load(v) for k, v in
            (x.split("=") for x in combined["set"].replace("--set ", "").split())}
    applied = _cfg(tiny_dir["qwen2_5_vl"], **sets)
    assert planner.plan(applied, memory_gb=tight_gb)["fits"]


def test_plan_cli_json_and_train_refusal_before_loading(tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(main, ["plan", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA),
                                  "--memory-gb", "64", "--chip", "m3-pro", "--json", str(out)])
    assert r.exit_code == 0, r.output
    p = json.loads(out.read_text())
    assert {"peak_bytes", "phases", "fits"} <= set(p) and p["time"]["seconds_per_step"] > 0

    from mlx_opd import models

    def no_weights(*a, **k):
        raise AssertionError("weights were loaded")
    monkeypatch.setattr(models, "load", no_weights)
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA), "--out",
                                  str(run), "--memory-gb", "0.001"])
    assert r.exit_code != 0 and "cannot fit" in r.output and "try " in r.output
    assert "weights were loaded" not in r.output and not run.exists()


def _hub_model(tmp_path, src, rev):
    root = tmp_path / "hub" / "models--mlx-opd-test--tiny"
    shutil.copytree(src, root / "snapshots" / rev)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    return tmp_path / "hub"


def test_plan_hub_id_resolves_and_the_revision_is_recorded(tiny_dir, tmp_path):
    rev = "1111111111111111111111111111111111111111"
    cache = _hub_model(tmp_path, tiny_dir["qwen2_5_vl"], rev)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mlx_opd.cli", "train", "--config", str(EXAMPLE), "--model",
           "mlx-opd-test/tiny", "--data", str(DATA), "--out", str(run), "--max-steps", "1"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["revision"] == rev


def test_plan_resume_refuses_a_changed_local_base(tiny_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_dir["qwen2_5_vl"], base)
    run = tmp_path / "run"
    args = ["train", "--config", str(EXAMPLE), "--model", str(base), "--data", str(DATA),
            "--out", str(run), "--max-steps", "1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    recorded = yaml.safe_load((run / "config.yaml").read_text())["model"]["revision"]
    assert recorded.startswith("local:")
    cfg = json.loads((base / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5  # someone edits the base between the two sessions
    (base / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(main, ["train", "--resume", str(run), "--max-steps", "2"])
    assert r.exit_code != 0 and "base model changed" in r.output and "Traceback" not in r.output


def test_generation_time_counts_prefill_decode_and_weight_reads():
    """build-data's Mac estimate (benchmarks/build_data.py): the formula's parts, each
    checked on its own against the counts."""
    from mlx_opd.models.replicas import REAL_MODELS
    from mlx_opd.preflight import plan

    cfg = REAL_MODELS["Qwen/Qwen2.5-VL-3B-Instruct"].config
    c = plan.param_counts(cfg)
    bw, tf = plan.CHIPS["m3-pro"]
    lm, vis, head = c["text_layers"], c["vision"], c["head"] or c["embed"]
    t = plan.generation_time(cfg, "m3-pro", 3, 500, 400, 10, rows=2, batch=2)
    flops = 3 * (2 * lm * 500 + 2 * vis * 400 * 4 + 2 * head) + 3 * 2 * 10 * 2 * (lm + head)
    reads = 2 * 10 * (lm + head) * 2.0  # ceil(3 / 2) batches x 10 steps, bf16
    assert t == pytest.approx(flops / (plan.MFU * tf * 1e12) + reads / (bw * 1e9), rel=1e-12)
    four = plan.generation_time(cfg, "m3-pro", 3, 500, 400, 10, rows=2, batch=2, bits=4)
    assert four < t
    with pytest.raises(ValueError, match="--chip"):
        plan.generation_time(cfg, "m9", 1, 1, 1, 1)


def test_step_time_counts_decode_as_the_engine_runs_it(tiny_dir, tmp_path):
    """One weight read per decode step of the whole batch (4 prompts decoded together cost
    less than 4 groups of one, which cost 4x one prompt); a finished run's answer lengths
    replace max_tokens in decode and scoring, not in prefill; the phases add up."""
    model = tiny_dir["qwen2_5_vl"]

    def timing(prompts, together=0, answers=None):
        cfg = _cfg(model, **{"optim.prompts_per_step": prompts, "rollout.prompt_batch": together})
        return planner.plan(cfg, memory_gb=64, chip="m3-max", answers=answers)["time"]

    one, four, groups = timing(1), timing(4), timing(4, together=1)
    for t in (one, four, groups):
        assert t["seconds_per_step"] == pytest.approx(
            t["prefill_seconds"] + t["decode_seconds"] + t["scoring_seconds"], rel=1e-12)
    assert groups["decode_seconds"] == pytest.approx(4 * one["decode_seconds"], rel=1e-12)
    assert four["decode_seconds"] < groups["decode_seconds"]
    assert four["prefill_seconds"] == pytest.approx(4 * one["prefill_seconds"], rel=1e-12)

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1, "rollout/mean_response_len": 3.0, "rollout/max_response_len": 5.0},
            {"step": 2, "rollout/mean_response_len": 5.0, "rollout/max_response_len": 7.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "ro')
    answers = planner.answer_lengths(run)
    assert (answers["mean"], answers["longest"], answers["steps"]) == (4.0, 6.0, 2)
    short = timing(4, answers=answers)
    assert short["answers_from"] == str(run) and short["answer_tokens_mean"] == 4.0
    assert short["prefill_seconds"] == four["prefill_seconds"]
    assert short["decode_seconds"] < four["decode_seconds"]
    assert short["scoring_seconds"] < four["scoring_seconds"]


def test_plan_answers_from_a_folder_without_metrics_is_one_line(tiny_dir, tmp_path):
    r = CliRunner().invoke(main, ["plan", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA),
                                  "--chip", "m3-pro", "--answers-from", str(tmp_path)])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "--answers-from" in r.output and "metrics.jsonl" in r.output
    ok = CliRunner().invoke(main, ["plan", "--config", str(EXAMPLE), "--model",
                                   str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA),
                                   "--chip", "m3-pro"])
    assert ok.exit_code == 0 and "decode" in ok.output and "scoring" in ok.output
