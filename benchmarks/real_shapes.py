"""One Vision-OPD step at the real widths of the models users run.

    python benchmarks/real_shapes.py --json docs/benchmarks/real_shapes.json
    python benchmarks/real_shapes.py --models Qwen/Qwen2-VL-2B-Instruct --layers 2 4 --json OUT

For each replica (mlx_opd/models/replicas.py: real config, tokenizer and template, random
weights) at 2 and 4 text layers (2 vision blocks), one `mlx-opd train` step in a fresh
process on one 1280x960 photo-like image with a small evidence box: image tokens per view,
prompt lengths, time and peak memory per phase (the trainer's own metrics), next to what
`mlx-opd plan` predicts for the same run before loading anything. From the two depths: the
per-layer slope and the extrapolated full-depth peak, in this backend's dtype (float32 on
CPU) and for a Mac in bf16 and 4-bit (`plan`). Writes JSON; docs/benchmarks.md quotes it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))

import mlx_opd  # noqa: E402,F401  (first: preloads the BLAS)
from mlx_opd.models.replicas import REAL_MODELS, build_replica  # noqa: E402
from mlx_opd.preflight import plan as planner  # noqa: E402
from mlx_opd.run.config import load_train_config  # noqa: E402

BOX = [600, 400, 660, 450]  # a 60x50 px evidence box in the 1280x960 photo
SETTINGS = {"rollout.n": 2, "rollout.max_tokens": 16, "optim.prompts_per_step": 1,
            "memory.grad_checkpoint": True, "optim.max_steps": 1, "run.save_every": 1000}


def write_data(folder: Path) -> Path:
    from make_benchmarks import photo

    photo(7, size=(1280, 960), colour="red", box=BOX).save(folder / "photo.jpg", quality=85)
    row = {"image": "photo.jpg", "question": "What colour is the small ball?",
           "options": ["red", "blue", "green", "yellow"], "box": BOX, "answer": "A"}
    (folder / "data.jsonl").write_text(json.dumps(row) + "\n")
    return folder / "data.jsonl"


def run_step(model: Path, data: Path, out: Path, timeout: int) -> dict:
    sets = [x for k, v in SETTINGS.items() for x in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "mlx_opd.cli", "train", "--model", str(model), "--data", str(data),
           "--out", str(out), "--memory-gb", "1000", *sets]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if p.returncode != 0:  # a negative code is a signal: -9 is the OOM killer
        return {"error": f"exit code {p.returncode}: " + p.stderr[-2000:]}
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
           if '"step"' in x][-1]
    rec["wall_seconds"] = time.perf_counter() - t0
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--models", nargs="*", default=list(REAL_MODELS))
    ap.add_argument("--layers", nargs="*", type=int, default=[2, 4])
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--fit-table", action="store_true",
                    help="Print the README's 'Will it fit my Mac?' table (plan only).")
    ap.add_argument("--repredict", action="store_true",
                    help="Recompute plan's predictions for the runs in --json (no measuring).")
    args = ap.parse_args()
    if args.fit_table:
        return print(fit_table_markdown())
    if args.repredict:
        return repredict(Path(args.json))
    out_path = Path(args.json)
    results = json.loads(out_path.read_text()) if out_path.exists() else {"runs": []}
    done = {(r["model"], r["layers"]) for r in results["runs"]
            if "error" not in r.get("measured", {"error": 1})}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_data(tmp)
        for hub_id in args.models:
            for layers in args.layers:
                if (hub_id, layers) in done:
                    continue
                rep = tmp / f"rep-{layers}"
                print(f"{hub_id} @ {layers} layers: building replica", flush=True)
                t0 = time.perf_counter()
                build_replica(hub_id, rep, layers=layers, vision_layers=2, force=True)
                build_s = time.perf_counter() - t0
                cfg = load_train_config(None, {"model.path": str(rep), "data.path": str(data),
                                               **{k: v for k, v in SETTINGS.items()}})
                predicted = planner.plan(cfg)
                print(f"  predicted peak {predicted['peak_bytes'] / 2**30:.2f} GiB; running one "
                      "step", flush=True)
                measured = run_step(rep, data, tmp / f"run-{layers}", args.timeout)
                row = {"model": hub_id, "layers": layers, "vision_layers": 2,
                       "build_seconds": build_s, "settings": SETTINGS,
                       "predicted": predicted, "measured": measured}
                if "error" not in measured:
                    row["error_pct"] = 100 * (predicted["peak_bytes"] / measured["memory/peak_bytes"] - 1)
                    print(f"  measured peak {measured['memory/peak_bytes'] / 2**30:.2f} GiB "
                          f"({row['error_pct']:+.1f}%), step {measured['time/step_seconds']:.0f} s",
                          flush=True)
                else:
                    print("  failed:", measured["error"][-300:], flush=True)
                results["runs"] = [r for r in results["runs"]
                                   if (r["model"], r["layers"]) != (hub_id, layers)] + [row]
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(results, indent=2))
                import shutil

                shutil.rmtree(rep, ignore_errors=True)
                shutil.rmtree(tmp / f"run-{layers}", ignore_errors=True)
    cfg = load_train_config(None, dict(SETTINGS))
    crop = (round((BOX[2] - BOX[0]) * cfg.views.zoom), round((BOX[3] - BOX[1]) * cfg.views.zoom))
    results["extrapolated"] = planner.extrapolate(results["runs"], cfg, (1280, 960), crop)
    out_path.write_text(json.dumps(results, indent=2))
    print(f"wrote {out_path}")


def fit_table_markdown(memories=(8, 16, 24, 32, 64)) -> str:
    """The README table: plan's Metal peaks for every real model at n = 8, 256 tokens,
    checkpointing, at default pixels and at max_pixels 401408."""
    from mlx_opd.preflight.plan import GIB, fit_table

    base = {"memory.grad_checkpoint": True}
    a = fit_table(load_train_config(None, base), memories=memories)
    b = fit_table(load_train_config(None, {**base, "pixels.max_pixels": 401408}), memories=memories)
    lines = ["| model | weights | peak, default pixels | peak, max_pixels 401408 | "
             + " | ".join(f"{m} GB" for m in memories) + " |",
             "|---|---|---|---|" + "---|" * len(memories)]
    for x, y in zip(a, b):
        name = x["model"].split("/")[1] + (" 4-bit" if x["bits"] == 4 else " bf16")
        cells = ["yes" if x["fits"][m] else "reduced pixels" if y["fits"][m] else "no"
                 for m in memories]
        lines.append(f"| {name} | {x['phases']['weights'] / GIB:.1f} GiB | "
                     f"{x['peak_bytes'] / GIB:.1f} GiB | {y['peak_bytes'] / GIB:.1f} GiB | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def repredict(path: Path) -> None:
    """plan's predictions again for every measured run (config files only, no weights)."""
    from mlx_opd.models.replicas import preprocessor_config, replica_config
    from mlx_opd.preflight.plan import predict

    results = json.loads(path.read_text())
    cfg = load_train_config(None, dict(SETTINGS))
    crop = (round((BOX[2] - BOX[0]) * cfg.views.zoom), round((BOX[3] - BOX[1]) * cfg.views.zoom))
    for r in results["runs"]:
        real = REAL_MODELS[r["model"]]
        config = replica_config(real, r["layers"], r["vision_layers"])
        r["predicted"] = {**r["predicted"], **predict(config, preprocessor_config(real), cfg,
                                                      (1280, 960), crop, "float32", "cpu")}
        if "error" not in r["measured"]:
            r["error_pct"] = 100 * (r["predicted"]["peak_bytes"] / r["measured"]["memory/peak_bytes"] - 1)
    results["extrapolated"] = planner.extrapolate(results["runs"], cfg, (1280, 960), crop)
    path.write_text(json.dumps(results, indent=2))
    for r in results["runs"]:
        print(f"{r['model']:<30} {r['layers']} layers: error {r.get('error_pct', float('nan')):+.1f}%")


if __name__ == "__main__":
    main()
