"""Step time with 1 and 2 local processes (ring backend on loopback), and the all-reduce share.

    python benchmarks/distributed.py --json runs/bench/distributed.json

Trains a tiny offline checkpoint for a few steps each way (same global batch) and reads
RUN_DIR/metrics.jsonl: median step seconds (first step excluded: warm-up), all-reduce
seconds and bytes. Two processes on one 2-core machine share its cores, so the speed-up
here is a lower bound for two Macs; what transfers is the all-reduce share and bytes.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(n, model, out, steps, per_step):
    args = ["-m", "mlx_opd.cli", "train", "--config", str(ROOT / "examples" / "tiny.yaml"),
            "--model", str(model), "--data", str(ROOT / "examples" / "data" / "samples.jsonl"),
            "--out", str(out), "--max-steps", str(steps), "--save-every", "1000",
            "--set", f"optim.prompts_per_step={per_step}", "--set", "optim.epochs=100",
            "--set", "rollout.max_tokens=16"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if n == 1:
        cmd = [sys.executable, *args]
    else:
        launch = Path(sys.executable).parent / "mlx.launch"
        cmd = [str(launch), "-n", str(n), "--backend", "ring", "--", sys.executable, *args]
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()][1:]
    step = statistics.median(r["time/step_seconds"] for r in rows)
    rec = {"processes": n, "steps_measured": len(rows), "step_seconds": step}
    if n > 1:
        ar = statistics.median(r["dist/allreduce_seconds"] for r in rows)
        wait = statistics.median(r["dist/wait_seconds"] for r in rows)
        rec.update({"allreduce_seconds": ar, "allreduce_share": ar / step,
                    "wait_seconds": wait, "wait_share": wait / step,
                    "allreduce_bytes": rows[0]["dist/allreduce_bytes"],
                    "rollout_seconds_per_rank": [statistics.median(r[f"dist/rollout_seconds_rank{i}"]
                                                                   for r in rows) for i in range(n)]})
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from mlx_opd.toy.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model("qwen2_5_vl", tmp / "model")
        recs = [run(n, model, tmp / f"run{n}", args.steps, args.prompts_per_step) for n in (1, 2)]
    recs[1]["speedup_vs_1"] = recs[0]["step_seconds"] / recs[1]["step_seconds"]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(recs, indent=2))
    print(json.dumps(recs, indent=2))


if __name__ == "__main__":
    main()
