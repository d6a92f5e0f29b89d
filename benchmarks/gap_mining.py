"""Gap mining, measured on synthetic scenes with known answers (docs/build-data.md).

    python benchmarks/gap_mining.py --out runs/bench/gap_mining --cache runs/demo/cache \
        --pool 600 --closeups 0.6667 --steps 80 --eval-every 10 --seeds 0,1,2,3,4

1. The model to be trained: the demo's tiny base (demo.build_base, cached under --cache):
   it reads a colour when the object fills the image and not in a cluttered scene.
2. A pool of photos: cluttered scenes, and a share --closeups of close-ups (the
   object's zoomed crop as the photo, its box the whole image: no crop-vs-full gap); their
   true boxes as COCO (--boxes, area filter off: a close-up's box is the whole photo) and
   the demo's template question. `build-data` (builder and miner: the base) with mining
   (the mined set) and without (the unmined set: every item whose crop consensus held).
3. Precision and recall of "crop right, full wrong" against the known answers: truth is
   the crop consensus equal to the true letter AND the miner's accuracy on the plain full
   image, on --truth-samples fresh samples (other seeds than the mining's), against the
   true letter, below the mining threshold.
   Also against the greedy answers (the evaluation's definition of right and wrong).
4. `mlx-opd train` (the demo's recipe, crop anchors included) from that base on each set,
   the same number of steps and seeds; the learning curve: the gap (crop - plain) on
   held-out scenes (the demo's, all cluttered) at step 0 and every --eval-every steps,
   as the share of the base's gap closed; compared seed by seed (the mean over the
   evaluated steps: more of the gap per step is a larger mean).
Writes OUT/gap_mining.json and OUT/gap_mining.png (the curves; --plot JSON redraws them).
"""

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import mlx_opd  # noqa: F401  (first: preloads the BLAS)
from mlx_opd import models
from mlx_opd.builder import ask
from mlx_opd.builder.config import BuildConfig, MiningConfig, QuestionConfig, RegionConfig
from mlx_opd.builder.mining import mine, precision_recall
from mlx_opd.builder.pipeline import build_data
from mlx_opd.builder.store import Store
from mlx_opd.method.trainer import train
from mlx_opd.method.views import plain_view
from mlx_opd.run.config import COLOURS, PixelConfig
from mlx_opd.toy import demo
from mlx_opd.toy.synth import HELDOUT_SEED_OFFSET, write_photo_folder, write_split

POOL_SEED_OFFSET = 9_000_011  # the pool's scenes: disjoint from the demo's streams


def truth_labels(cfg: BuildConfig, data: Path, truth: dict, n: int, log) -> dict:
    """Mining's verdicts against the known answers: (predicted, truth) per item that
    reached mining, truth from n fresh samples and from the greedy answers."""
    from mlx_opd.builder.pipeline import _sample

    qs, cons, mined = (Store(data, s).records for s in ("questions", "consensus", "mining"))
    miner = models.load(cfg.miner, cfg.adapter)
    ids = sorted(j for j, c in cons.items() if c["majority"] is not None)  # None: photo lost
    pred, sampled, greedy = [], [], []
    for i in range(0, len(ids), cfg.batch):
        chunk = ids[i:i + cfg.batch]
        views = [plain_view(_sample(cfg, {**qs[j], "answer": truth[j]}), cfg.views)
                 for j in chunk]
        prompts = [(v.images, v.text) for v in views]
        opts = [qs[j]["options"] for j in chunk]
        pixels = PixelConfig(max_pixels=cfg.max_pixels)
        fresh, _ = ask.letters(miner, prompts, opts, n, cfg.mining.temperature,
                               [ask.item_key(cfg.seed + 1, "truth", j) for j in chunk],
                               cfg.answer_tokens, pixels)
        top, _ = ask.letters(miner, prompts, opts, 1, 0.0,
                             [ask.item_key(cfg.seed, "greedy", j) for j in chunk],
                             cfg.answer_tokens, pixels)
        for j, ls, g in zip(chunk, fresh, top):
            crop_right = cons[j]["majority"] == truth[j]
            sampled.append(crop_right and mine(ls, truth[j], cfg.mining.max_full_acc).keep)
            greedy.append(crop_right and g[0] != truth[j])
            pred.append(bool(cons[j]["keep"] and mined.get(j, {}).get("keep", False)))
        log(f"truth: {min(i + cfg.batch, len(ids))}/{len(ids)} items")
    return {"fresh_samples": precision_recall(pred, sampled),
            "greedy": precision_recall(pred, greedy)}


def train_on(r, base: Path, data: Path, run_dir: Path, steps: int, seed: int,
             held_path: Path, every: int) -> list[dict]:
    """Train on DATA's train.jsonl; the learning curve: the held-out accuracies at step 0
    and every `every` steps (the trainer's own validation on the held-out scenes, greedy,
    as the demo scores them; nothing is chosen by it: the guards are off)."""
    train_path = run_dir.parent / f"{run_dir.name}-train.jsonl"
    rows = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    for row in rows:  # absolute image paths: the copy lives in another folder
        row["image"] = str((data / row["image"]).resolve())
    train_path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    demo.add_crop_anchors(train_path, r)
    cfg = demo.train_config(r, base, train_path, run_dir, val_data=held_path)
    cfg = replace(cfg, optim=replace(cfg.optim, max_steps=steps),
                  run=replace(cfg.run, save_every=steps, seed=seed),
                  validation=replace(cfg.validation, every=every, min_format=0.0,
                                     max_teacher_drop=None))
    train(cfg)
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "val/plain_acc" in rec:
            curve.append({"step": rec["step"], "plain_acc": rec["val/plain_acc"],
                          "teacher_acc": rec["val/teacher_acc"]})
    return curve


def closed_share(gap0: float, point: dict) -> float | None:
    gap = point["teacher_acc"] - point["plain_acc"]
    return (gap0 - gap) / gap0 if gap0 > 0 else None


def compare(results: dict, seeds: list[int], steps: list[int]) -> dict:
    """Mined vs unmined, seed by seed (the same seed: the same initial noise and order of
    draws): the gap closed at each evaluated step, its mean over the evaluated steps after
    step 0 (the area under the curve per step: "more of the gap per step"), and the wins."""
    out = {}
    for name in ("mined", "unmined"):
        per_step = {st: [results[f"{name}/seed{s}"]["closed"][i] for s in seeds]
                    for i, st in enumerate(steps)}
        out[name] = {"mean_closed_by_step": {st: sum(v) / len(v) for st, v in per_step.items()},
                     "area_per_seed": [results[f"{name}/seed{s}"]["area"] for s in seeds]}
        a = out[name]["area_per_seed"]
        out[name]["area_mean"] = sum(a) / len(a)
    diffs = [m - u for m, u in zip(out["mined"]["area_per_seed"], out["unmined"]["area_per_seed"])]
    out["area_difference_per_seed"] = diffs
    out["area_difference_mean"] = sum(diffs) / len(diffs)
    out["mined_ahead_seeds"] = sum(d > 0 for d in diffs)
    out["mined_ahead_points"] = sum(
        results[f"mined/seed{s}"]["closed"][i] > results[f"unmined/seed{s}"]["closed"][i]
        for s in seeds for i in range(1, len(steps)))
    out["points"] = len(seeds) * (len(steps) - 1)
    return out


def plot_curves(result: dict, png: Path) -> Path:
    """The gap closed by step, mined vs unmined: each seed thin, the mean thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, colour in (("mined", "tab:green"), ("unmined", "tab:grey")):
        runs = [v for k, v in result["train"].items() if k.startswith(f"{name}/")]
        steps = [pt["step"] for pt in runs[0]["curve"]]
        for r in runs:
            ax.plot(steps, [100 * c for c in r["closed"]], color=colour, alpha=0.3, lw=1)
        mean = [100 * sum(r["closed"][i] for r in runs) / len(runs) for i in range(len(steps))]
        ax.plot(steps, mean, color=colour, lw=2.5,
                label=f"{name} ({runs[0]['train_rows']} rows; mean of {len(runs)} seeds)")
    ax.set_xlabel("training step (4 prompts each)")
    ax.set_ylabel("held-out gap closed (%)")
    ax.set_title(f"Training on the mined vs the unmined set ({result['pool']} photos, "
                 f"{result['closeups']:.0%} gap-free)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/gap_mining")
    ap.add_argument("--cache", default="runs/demo/cache")
    ap.add_argument("--closeups", type=float, default=1 / 3,
                    help="Share of the pool's photos that are close-ups (no gap).")
    ap.add_argument("--pool", type=int, default=200)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--m", type=int, default=MiningConfig().m, help="Mining samples per item.")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=10,
                    help="Held-out accuracies every N steps (the learning curve).")
    ap.add_argument("--truth-samples", type=int, default=16)
    ap.add_argument("--seeds", default="0", help="Training seeds (comma-separated).")
    ap.add_argument("--plot", metavar="JSON", help="Only draw JSON's curves (beside it, .png).")
    a = ap.parse_args()
    if a.plot:
        try:
            result = json.loads(Path(a.plot).read_text())
        except (OSError, json.JSONDecodeError) as e:
            ap.error(f"--plot {a.plot}: cannot read it as JSON ({e})")
        runs = result.get("train") or {}
        if not runs or not all("curve" in r for r in runs.values()):
            ap.error(f"--plot {a.plot}: no learning curves in it (files written before "
                     "--eval-every have end points only)")
        print(plot_curves(result, Path(a.plot).with_suffix(".png")))
        return
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.time()
    r = demo.DemoRecipe()
    base = demo.build_base(r, Path(a.cache), log=log)
    pool = write_photo_folder(out / "pool", a.pool, r.seed + POOL_SEED_OFFSET, r.synth,
                              closeup_share=a.closeups)
    truth = json.loads(pool["truth"].read_text())
    options = tuple(sorted(COLOURS)[: r.synth.n_options])
    cfg = BuildConfig(images=str(pool["photos"]), model=str(base), out=str(out / "mined"),
                      boxes=str(pool["boxes"]), mining=MiningConfig(m=a.m),
                      regions=RegionConfig(max_area_ratio=1.0),
                      questions=QuestionConfig(template="What is the colour of the small {label}?",
                                               options=options),
                      views=demo.views(r), max_pixels=r.max_pixels, heldout_share=0.0)
    t = time.time()
    rep_mined = build_data(cfg, force=True, log=log)
    build_seconds = time.time() - t
    rep_all = build_data(replace(cfg, out=str(out / "unmined"),
                                 mining=MiningConfig(enabled=False)), force=True, log=log)
    pr = truth_labels(cfg, out / "mined", truth, a.truth_samples, log)
    log(f"mining vs known answers: {pr}")
    held_path = write_split(out / "eval", "heldout", a.heldout, r.seed + HELDOUT_SEED_OFFSET,
                            r.synth)
    seeds = [int(x) for x in a.seeds.split(",")]
    results, gap0, steps = {}, None, None
    for seed in seeds:
        for name in ("mined", "unmined"):
            curve = train_on(r, base, out / name, out / f"run-{name}-{seed}", a.steps, seed,
                             held_path, a.eval_every)
            start, end = curve[0], curve[-1]
            gap0 = start["teacher_acc"] - start["plain_acc"]  # the base: the same every run
            closed = [closed_share(gap0, p) for p in curve]
            steps = [p["step"] for p in curve]
            results[f"{name}/seed{seed}"] = {
                "train_rows": (rep_mined if name == "mined" else rep_all)["output"]["train"],
                "curve": curve, "closed": closed,
                "area": sum(closed[1:]) / max(len(closed) - 1, 1)}
            log(f"{name} seed {seed}: plain {start['plain_acc']:.2f} -> {end['plain_acc']:.2f}, "
                f"crop {start['teacher_acc']:.2f} -> {end['teacher_acc']:.2f}; gap closed by "
                "step " + ", ".join(f"{st}: {c:.0%}" for st, c in zip(steps[1:], closed[1:])))
    comparison = compare(results, seeds, steps)
    log(f"mean gap closed over steps {steps[1:]}: mined {comparison['mined']['area_mean']:.0%}, "
        f"unmined {comparison['unmined']['area_mean']:.0%}; mined ahead in "
        f"{comparison['mined_ahead_seeds']} of {len(seeds)} seeds, "
        f"{comparison['mined_ahead_points']} of {comparison['points']} (seed, step) points")
    result = {"closeups": a.closeups, "pool": a.pool, "heldout": a.heldout, "m": a.m,
              "steps": a.steps, "truth_samples": a.truth_samples,
              "precision_recall": pr, "mining_report": rep_mined["stages"]["mining"],
              "build_seconds": build_seconds, "build_seconds_per_image": build_seconds / a.pool,
              "eval_every": a.eval_every, "gap_before": gap0, "train": results,
              "comparison": comparison,
              "numerics": demo.numerics(), "seconds": time.time() - t0}
    (out / "gap_mining.json").write_text(json.dumps(result, indent=2))
    plot_curves(result, out / "gap_mining.png")
    log(f"wrote {out / 'gap_mining.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
