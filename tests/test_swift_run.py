"""The ms-swift export, run for real: the generated script, unedited, trains 2 steps in
the real ms-swift on this CPU (its own virtual environment, `make test-engines`), and the
run is checked from ms-swift's own outputs: 2 optimizer steps with a finite loss, the
teacher's inputs the crop and the student's the full image (image-token counts recorded
as ms-swift encoded them: tests/engines/swift_tap), and a LoRA checkpoint on the language
model only. Skipped unless MLX_OPD_ENGINE_BIN names that environment's bin folder."""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlx_opd.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
DATA = ROOT / "examples" / "data" / "samples.jsonl"
TAP = Path(__file__).parent / "engines" / "swift_tap"
ENGINE_BIN = os.environ.get("MLX_OPD_ENGINE_BIN")

pytestmark = [pytest.mark.engine_run,
              pytest.mark.skipif(not ENGINE_BIN, reason="make test-engines runs it")]


def test_the_swift_export_trains_two_steps_in_ms_swift_as_written(tmp_path):
    assert (Path(ENGINE_BIN) / "swift").exists(), f"no swift in {ENGINE_BIN}: make engines"
    replica = tmp_path / "replica"
    r = CliRunner().invoke(main, ["tiny-model", "--like", "Qwen/Qwen2.5-VL-3B-Instruct",
                                  "--layers", "1", "--vision-layers", "1", "--out", str(replica)])
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["optim"]["max_steps"] = 2  # 2 prompts x 4 samples = 8 rows a step
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "swift"
    r = CliRunner().invoke(main, ["export-data", "--data", str(DATA), "--out", str(out),
                                  "--format", "swift", "--model", str(replica), "--config",
                                  str(tmp_path / "run.yaml")])
    assert r.exit_code == 0, r.output
    tap = tmp_path / "tap.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "USE_VLLM")}
    env.update(PATH=f"{ENGINE_BIN}:{env['PATH']}", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(TAP), MLX_OPD_SWIFT_TAP=str(tap))
    p = subprocess.run(["bash", str(out / "run_swift_opsd.sh")], env=env, capture_output=True,
                       text=True, timeout=1200)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert "1 process(es) x per-device batch 1 x accumulation 8 = 8 rows" in p.stderr
    # ms-swift's own outputs: its log, its trainer state, its checkpoint
    output = out / "output"
    args = json.loads((output / "args.json").read_text())
    assert args["template"] == "qwen2_5_vl" and args["use_vllm"] is False
    steps = [json.loads(x) for x in (output / "logging.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if "loss" in s]
    assert [s["global_step/max_steps"] for s in steps if "loss" in s] == ["1/2", "2/2"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    ck = output / "checkpoint-2"
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    adapter = json.loads((ck / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8
    assert "language_model" in adapter["target_modules"]
    from safetensors import safe_open

    with safe_open(str(ck / "adapter_model.safetensors"), "np") as f:
        names = list(f.keys())
    assert names and all(".language_model." in n and "lora_" in n for n in names), names[:4]
    # what ms-swift encoded: the student the full image, the teacher the crop
    seen = [json.loads(x) for x in tap.read_text().splitlines()]
    assert len(seen) >= 16 and all(s["opsd"] and s["image_token_id"] == 151655 for s in seen)
    assert all(s["teacher"] > 0 and s["student"] > 4 * s["teacher"] for s in seen), seen[:3]
    print(f"ms-swift encoded {len(seen)} inputs: image tokens student "
          f"{sorted({s['student'] for s in seen})}, teacher {sorted({s['teacher'] for s in seen})}")
