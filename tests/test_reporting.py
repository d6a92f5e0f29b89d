"""`run.report_to: wandb` for real: the wandb package, offline, writes the run's metrics,
validation rows and config, and wandb's own reader (its DataStore over the run's .wandb
file) returns them."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlx_opd.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
DATA = ROOT / "examples" / "data" / "samples.jsonl"


def read_wandb_run(path: Path) -> tuple[dict, list[dict]]:
    """(config, history rows) of an offline run file, through wandb's own reader."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal.datastore import DataStore

    ds = DataStore()
    ds.open_for_scan(str(path))
    config, history = {}, []
    while (data := ds.scan_data()) is not None:
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                            for i in rec.history.item})
    return config, history


def test_a_run_reported_to_wandb_offline_reads_back_with_wandbs_reader(tiny_dir, tmp_path,
                                                                       monkeypatch):
    pytest.importorskip("wandb.sdk.internal.datastore")  # the dev extra pins a wandb with it
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(EXAMPLE), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA), "--out",
                                  str(out), "--max-steps", "2", "--set", "run.report_to=wandb",
                                  "--set", f"validation.path={DATA}", "--set",
                                  "validation.every=1"])
    assert r.exit_code == 0, r.output
    files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, list((out / "wandb").rglob("*"))
    assert f"wandb sync {files[0].parent}" in r.output  # where it is and how to upload
    config, history = read_wandb_run(files[0])
    assert config["lora"]["rank"] == 8 and config["optim"]["lr"] == 1e-3
    assert config["run_dir"] == str(out)
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    by_step = {}
    for row in history:
        by_step.setdefault(row["_step"], {}).update(row)
    for rec in steps:  # every step's metrics and every validation row, at its step
        got = by_step[rec["step"]]
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k  # float64 -> JSON
    assert {s for s, row in by_step.items() if "val/plain_acc" in row} == {0, 1, 2}
    assert {s for s, row in by_step.items() if "loss/objective" in row} == {1, 2}
