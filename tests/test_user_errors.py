"""What a user sees when things go wrong: run folders never mixed, skips never silent,
errors that say what, where and how to fix it, never a traceback."""

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlx_opd.cli import main
from mlx_opd.run import checkpoint
from mlx_opd.run.config import ConfigError, load_train_config
from mlx_opd.toy.synth import make_scene, write_scene

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
DATA = ROOT / "examples" / "data" / "samples.jsonl"


def invoke(*args):
    # catch_exceptions=True: an uncaught exception would show up as r.exception
    return CliRunner().invoke(main, [str(a) for a in args])


def no_traceback(r):
    text = r.output + (repr(r.exception) if r.exception and not isinstance(r.exception, SystemExit) else "")
    return "Traceback" not in text and not (r.exception and not isinstance(r.exception, SystemExit))


def _train(tiny_dir, out, *extra):
    return invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
                  "--out", out, "--max-steps", 1, *extra)


def test_train_refuses_an_existing_run_and_force_moves_it_aside(tiny_dir, tmp_path):
    out = tmp_path / "run"
    r = _train(tiny_dir, out)
    assert r.exit_code == 0, r.output
    first = (out / "metrics.jsonl").read_text()
    r = _train(tiny_dir, out, "--set", "optim.lr=2e-3")
    assert r.exit_code != 0 and "--resume" in r.output and "--force" in r.output
    assert (out / "metrics.jsonl").read_text() == first  # untouched
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 1e-3
    r = _train(tiny_dir, out, "--force", "--set", "optim.lr=2e-3")
    assert r.exit_code == 0, r.output
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text() == first
    assert [p.name for p in checkpoint.complete(aside[0])] == ["step_000001"]
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 2e-3
    assert "moved the existing" in r.output


def test_failed_start_leaves_no_run_folder(tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    out = tmp_path / "run"
    r = invoke("train", "--config", EXAMPLE, "--model", empty, "--data", DATA, "--out", out)
    assert r.exit_code != 0 and "config.json" in r.output and no_traceback(r)
    assert not out.exists()


def test_train_says_whether_epochs_or_max_steps_wins(tiny_dir, tmp_path):
    r = _train(tiny_dir, tmp_path / "a", "--set", "optim.epochs=1")  # 3 samples / 2 = 2 steps
    assert r.exit_code == 0, r.output
    assert "optim.epochs wins over optim.max_steps=1" not in r.output
    assert "optim.max_steps=1 wins" in r.output
    r = invoke("train", "--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
               "--out", tmp_path / "b", "--max-steps", 3, "--set", "optim.epochs=1")
    assert r.exit_code == 0, r.output
    assert "optim.epochs wins over optim.max_steps=3" in r.output
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2
    # the summary at the end: loss, time, plots and what to run next
    assert "done: 2 step(s)" in r.output and "next:" in r.output and "plots:" in r.output


@pytest.mark.parametrize("value,expected", [("abc", "expected a number"),
                                            ("[1, 2]", "expected a number")])
def test_set_values_are_type_checked(value, expected):
    with pytest.raises(ConfigError) as e:
        load_train_config(str(EXAMPLE), {"optim.lr": __import__("yaml").safe_load(value)})
    msg = str(e.value)
    assert msg.startswith("--set optim.lr") and expected in msg and "tiny.yaml" not in msg
    r = invoke("train", "--config", EXAMPLE, "--set", f"optim.lr={value}")
    assert r.exit_code != 0 and "optim.lr" in r.output and no_traceback(r)
    assert "not supported between" not in r.output


def test_yaml_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository
    cfg = load_train_config(str(EXAMPLE))
    assert Path(cfg.data.path) == DATA and Path(cfg.data.path).exists()
    assert Path(cfg.run.out) == (ROOT / "runs" / "tiny-opd").resolve()
    # overrides resolve against the working directory; hub ids stay hub ids
    cfg = load_train_config(str(EXAMPLE), {"run.out": "mine", "model.path": "org/name"})
    assert Path(cfg.run.out) == tmp_path / "mine" and cfg.model.path == "org/name"


def test_hub_ids_and_missing_paths_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    data = write_scene(make_scene(3), tmp_path / "d")
    r = invoke("eval", "--model", "some-org/some-model", "--data", data, "--out", tmp_path / "e.json")
    assert r.exit_code != 0 and no_traceback(r)
    assert "some-org/some-model" in r.output and "HF_HUB_OFFLINE" in r.output
    assert "huggingface-cli download" in r.output
    r = invoke("eval", "--model", tmp_path / "no" / "such" / "model", "--data", data, "--out",
               tmp_path / "e.json")
    assert r.exit_code != 0 and "no such local folder" in r.output and no_traceback(r)


def test_eval_reports_skipped_rows(tiny_dir, tmp_path):
    data = write_scene(make_scene(4), tmp_path / "d")
    row = json.loads(data.read_text())
    rows = [row, {**row, "box": [-5, 0, 10, 10]}, {**row, "image": "missing.png"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "e.json"
    r = invoke("eval", "--model", tiny_dir["qwen2_5_vl"], "--data", data, "--out", out,
               "--on-bad-sample", "skip", "--views", "plain", "--max-tokens", 2)
    assert r.exit_code == 0, r.output
    summary = json.loads(out.read_text())
    assert summary["skipped_bad_samples"] == 2 and summary["n"] == 1
    assert r.output.count("skipped:") == 2 and "ETA" in r.output
    assert summary["model"] == str(tiny_dir["qwen2_5_vl"]) and summary["data"] == str(data)


def test_export_force_replaces_only_what_mlx_opd_wrote(tiny_dir, tmp_path):
    train_out = tmp_path / "run"
    assert _train(tiny_dir, train_out).exit_code == 0
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my own file")
    r = invoke("export", "--model", tiny_dir["qwen2_5_vl"], "--adapter", train_out, "--out", target,
               "--format", "peft", "--force")
    assert r.exit_code != 0 and "did not write" in r.output and no_traceback(r)
    assert (target / "notes.txt").read_text() == "my own file"
    out = tmp_path / "export"
    for _ in range(2):  # a second --force replaces the first export (mlx-opd wrote it)
        r = invoke("export", "--model", tiny_dir["qwen2_5_vl"], "--adapter", train_out, "--out",
                   out, "--format", "peft", "--force")
        assert r.exit_code == 0, r.output
    r = invoke("export", "--model", tiny_dir["qwen2_5_vl"], "--adapter", train_out, "--out",
               tmp_path / "hf", "--format", "hf", "--hf-source", tmp_path / "missing")
    assert r.exit_code != 0 and "--hf-source" in r.output and no_traceback(r)


def test_synth_replaces_its_own_folder_without_stale_images(tmp_path):
    out = tmp_path / "s"
    assert invoke("synth", "--out", out, "--n", 5, "--n-heldout", 2).exit_code == 0
    r = invoke("synth", "--out", out, "--n", 3, "--n-heldout", 2)
    assert r.exit_code != 0 and "--force" in r.output
    assert invoke("synth", "--out", out, "--n", 3, "--n-heldout", 2, "--force").exit_code == 0
    assert len(list((out / "train").glob("*.png"))) == 3


BAD_ARGS = [
    ["compare", "--model", "{tiny}", "--image", "{tmp}/none.png", "--question", "Q", "--box", "1,1,5,5"],
    ["views", "--data", "{tmp}/none.jsonl", "--out", "{tmp}/v"],
    ["eval", "--model", "{tiny}", "--data", "{tmp}/none.jsonl", "--out", "{tmp}/e.json"],
    ["train", "--config", "{tmp}/none.yaml"],
    ["train", "--resume", "{tmp}/no-run"],
    ["train", "--config", str(EXAMPLE), "--set", "optim.lr"],
    ["train", "--config", str(EXAMPLE), "--set", "loss.nope=1"],
    ["export", "--model", "{tmp}/no-model", "--adapter", "{tmp}", "--out", "{tmp}/x"],
    ["export-data", "--data", "{tmp}/none.jsonl", "--out", "{tmp}/x"],
    ["synth", "--out", "{tmp}/s", "--evidence-size", "1"],
    ["tiny-model", "--family", "qwen2_vl", "--out", "{tmp}", "--layers", "0"],
    ["plot", "{tmp}"],
    ["demo", "--out", "{tmp}"],
]


@pytest.mark.parametrize("args", BAD_ARGS, ids=lambda a: " ".join(a[:2]))
def test_no_command_prints_a_traceback_on_bad_input(args, tiny_dir, tmp_path):
    (tmp_path / "user-file.txt").write_text("x")  # makes {tmp} a folder the user owns
    argv = [a.format(tiny=tiny_dir["qwen2_5_vl"], tmp=tmp_path) for a in args]
    r = invoke(*argv)
    assert r.exit_code != 0, r.output
    assert no_traceback(r), (r.output, r.exception)
    assert r.output.strip(), "an error must say something"
    assert os.path.exists(tmp_path / "user-file.txt")


def test_eval_takes_the_runs_config(tiny_dir, tmp_path):
    """`eval --config RUN_DIR` sees images as the run did: its pixel limit changes the
    number of image tokens against the default, and flags given still override it."""
    run = tmp_path / "run"
    r = _train(tiny_dir, run, "--set", "pixels.max_pixels=3136")  # 56 x 56: 4 image tokens
    assert r.exit_code == 0, r.output
    data = write_scene(make_scene(5), tmp_path / "d")
    from mlx_opd.cli.common import _run_config

    cfg = _run_config(str(run))
    assert cfg.pixels.max_pixels == 3136
    out = tmp_path / "e.json"
    r = invoke("eval", "--model", tiny_dir["qwen2_5_vl"], "--data", data, "--out", out,
               "--config", run, "--views", "plain", "--max-tokens", 2)
    assert r.exit_code == 0, r.output
    r = invoke("eval", "--model", tiny_dir["qwen2_5_vl"], "--data", data, "--out",
               tmp_path / "d.json", "--views", "plain", "--max-tokens", 2)
    assert r.exit_code == 0, r.output
    with_config = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[0])
    default = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert with_config["prompt_tokens"] < default["prompt_tokens"]
    r = invoke("eval", "--model", tiny_dir["qwen2_5_vl"], "--data", data, "--out",
               tmp_path / "f.json", "--config", run, "--max-pixels", 200704, "--views", "plain",
               "--max-tokens", 2)
    flag = json.loads((tmp_path / "f.jsonl").read_text().splitlines()[0])
    assert flag["prompt_tokens"] > with_config["prompt_tokens"]  # the flag overrides
