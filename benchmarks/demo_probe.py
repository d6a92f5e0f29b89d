"""How much of the evidence a demo base's full view still carries (docs/demo.md).

    python benchmarks/demo_probe.py --cache /tmp/probe-default --out probe.json

Builds (or reuses) the demo's base under this process's numeric configuration, and the
untrained initial model with the same seed, then fits linear probes for the evidence
colour on their full-view features (`mlx_opd/toy/demo_probe.py`) and writes the held-out
accuracies, with the numeric configuration, as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True, help="where the base is built (or reused)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-fit", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=200)
    a = ap.parse_args()

    from mlx_opd import models
    from mlx_opd.data import read_samples
    from mlx_opd.run.config import DataConfig
    from mlx_opd.toy.demo import DemoRecipe, build_base, numerics, tiny_size
    from mlx_opd.toy.demo_probe import PROBE_SEED_OFFSET, probe
    from mlx_opd.toy.synth import write_split
    from mlx_opd.toy.tiny import build_tiny_model

    r = DemoRecipe()
    cache = Path(a.cache)
    t0 = time.time()
    base = build_base(r, cache, log=lambda *x: None)
    built = time.time() - t0
    seed = r.seed + PROBE_SEED_OFFSET
    fit, _ = read_samples(DataConfig(path=str(write_split(cache / "probe", "fit", a.n_fit,
                                                          seed, r.synth))))
    test, _ = read_samples(DataConfig(path=str(write_split(cache / "probe", "test", a.n_test,
                                                           seed + 500_000, r.synth))))
    init = build_tiny_model("qwen2_5_vl", cache / "probe" / "init", seed=r.seed,
                            size=tiny_size(r))
    result = {
        "numerics": numerics(),
        "base_calibration": json.loads((base / "base_recipe.json").read_text())["calibration"],
        "base_seconds": built,
        "init": probe(models.load(init), fit, test, r),
        "base": probe(models.load(base), fit, test, r),
        "base_path": str(base),
    }
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
