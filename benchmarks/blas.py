"""fp32 matmul GFLOP/s of MLX with and without mlx-opd's OpenBLAS preload.

    python benchmarks/blas.py --json runs/bench/blas.json

Each setting runs in its own process (the preload must happen before mlx.core loads).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = ("import mlx_opd, mlx_opd.blas as b, json; "
         "print(json.dumps({'blas': b.STATE, 'gflops': {n: b.matmul_gflops(n) for n in (256, 1024, 2048)}}))")


def run(env_extra: dict) -> dict:
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    result = {"preloaded": run({}), "reference": run({"MLX_OPD_NO_BLAS": "1"})}
    g1, g0 = result["preloaded"]["gflops"]["1024"], result["reference"]["gflops"]["1024"]
    result["speedup_1024"] = g1 / g0
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
