"""Data-parallel training on MLX's ring backend, two processes on loopback."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_opd.run import checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
DATA = ROOT / "examples" / "data" / "samples.jsonl"
LAUNCH = Path(sys.executable).parent / "mlx.launch"
pytestmark = pytest.mark.skipif(not LAUNCH.exists(), reason="mlx.launch not installed")


def _launch(n, args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [str(LAUNCH), "-n", str(n), "--backend", "ring", "--", sys.executable, *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_two_ranks_equal_one_process_and_only_rank0_writes(tiny_dir, tmp_path):
    common = ["--config", EXAMPLE, "--model", tiny_dir["qwen2_5_vl"], "--data", DATA,
              "--set", "optim.epochs=2", "--save-every", 1]
    one = subprocess.run([sys.executable, "-m", "mlx_opd.cli", "train", *map(str, common),
                          "--out", str(tmp_path / "one")], env=dict(os.environ, HF_HUB_OFFLINE="1"),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = _launch(2, ["-m", "mlx_opd.cli", "train", *common, "--distributed", "--out", tmp_path / "two"])
    assert "  adapters: " in two.stdout, two.stdout + two.stderr  # launch's rc is always 0
    a = mx.load(str(tmp_path / "one" / "adapters" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "two" / "adapters" / "adapters.safetensors"))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(np.array(b[k]), np.array(a[k]), atol=1e-5, err_msg=k)
    assert max(float(mx.abs(v).max().item()) for k, v in a.items() if "lora_b" in k) > 0
    # only rank 0 wrote: one metrics line per step, one final message, nothing stray
    rows = [json.loads(ln) for ln in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["dist/ranks"] == 2 and r["dist/allreduce_bytes"] > 0 for r in rows)
    assert all("dist/rollout_seconds_rank1" in r for r in rows)
    assert (two.stdout + two.stderr).count("  adapters: ") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        [".mlx-opd.json", "adapters", "checkpoints", "config.yaml", "metrics.jsonl", "plots"]
    assert all(not p.name.startswith(".") for p in (tmp_path / "two" / "checkpoints").iterdir())


def test_ranks_with_different_configs_stop_clearly():
    r = _launch(2, [ROOT / "tests" / "dist_helper.py", "mismatch"], timeout=120)
    out = r.stdout + r.stderr
    assert "config hash mismatch" in out and "rank 0:" in out and "no mismatch" not in out


def test_a_dying_rank_stops_the_others_and_keeps_the_checkpoint(tiny_dir, tmp_path):
    t = time.time()
    r = _launch(2, [ROOT / "tests" / "dist_helper.py", "die", EXAMPLE, tiny_dir["qwen2_5_vl"],
                    DATA, tmp_path / "run"], timeout=200)
    assert time.time() - t < 150  # bounded: the survivor does not hang
    assert r.returncode != 0 or "  adapters: " not in r.stdout
    # the last complete checkpoint is loadable: step 2's, or step 1's when mlx.launch stops
    # rank 0 while it is still writing (and fsyncing) step 2's (atomic writes: never half)
    ck = checkpoint.latest(tmp_path / "run")
    assert ck is not None and checkpoint.load(ck)["state"]["step"] in (1, 2)
