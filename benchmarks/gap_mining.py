"""Gap mining, measured on synthetic scenes with known answers (docs/build-data.md).

    python benchmarks/gap_mining.py --out runs/bench/gap_mining [--pool 200 --steps 60]

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
   the same number of steps and seed; the gap (crop - plain) on held-out scenes before and
   after (the demo's held-out scenes, all cluttered), and the share closed per 10 steps.
Writes OUT/gap_mining.json.
"""

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import mlx_opd  # noqa: F401  (first: preloads the BLAS)
from mlx_opd import demo, models
from mlx_opd.build import ask
from mlx_opd.build.config import BuildConfig, MiningConfig, QuestionConfig, RegionConfig
from mlx_opd.build.mining import precision_recall
from mlx_opd.build.pipeline import build_data
from mlx_opd.build.store import Store
from mlx_opd.config import COLOURS, DataConfig, PixelConfig
from mlx_opd.data import read_samples
from mlx_opd.synth import HELDOUT_SEED_OFFSET, write_photo_folder, write_split
from mlx_opd.trainer import train
from mlx_opd.views import plain_view

POOL_SEED_OFFSET = 9_000_011  # the pool's scenes: disjoint from the demo's streams


def truth_labels(cfg: BuildConfig, data: Path, truth: dict, n: int, log) -> dict:
    """Mining's verdicts against the known answers: (predicted, truth) per item that
    reached mining, truth from n fresh samples and from the greedy answers."""
    from mlx_opd.build.pipeline import _sample

    qs, cons, mined = (Store(data, s).records for s in ("questions", "consensus", "mining"))
    miner = models.load(cfg.miner, cfg.adapter)
    ids = sorted(cons)
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
            acc = sum(x == truth[j] for x in ls) / n
            sampled.append(crop_right and acc < cfg.mining.max_full_acc)
            greedy.append(crop_right and g[0] != truth[j])
            pred.append(bool(cons[j]["keep"] and mined.get(j, {}).get("keep", False)))
        log(f"truth: {min(i + cfg.batch, len(ids))}/{len(ids)} items")
    return {"fresh_samples": precision_recall(pred, sampled),
            "greedy": precision_recall(pred, greedy)}


def train_on(r, base: Path, data: Path, run_dir: Path, steps: int, seed: int) -> Path:
    train_path = run_dir.parent / f"{run_dir.name}-train.jsonl"
    rows = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    for row in rows:  # absolute image paths: the copy lives in another folder
        row["image"] = str((data / row["image"]).resolve())
    train_path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    demo.add_crop_anchors(train_path, r)
    cfg = demo.train_config(r, base, train_path, run_dir)
    cfg = replace(cfg, optim=replace(cfg.optim, max_steps=steps),
                  run=replace(cfg.run, save_every=steps, seed=seed))
    train(cfg)
    return run_dir / "adapters"


def held_out_accuracy(r, base, adapter, held) -> dict:
    return demo._accuracies(models.load(base, adapter), held, r, ("plain", "teacher"))


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
    ap.add_argument("--truth-samples", type=int, default=16)
    ap.add_argument("--seeds", default="0", help="Training seeds (comma-separated).")
    a = ap.parse_args()
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
    held, _ = read_samples(DataConfig(path=str(held_path)))
    start = held_out_accuracy(r, base, None, held)
    gap0 = start["teacher_acc"] - start["plain_acc"]
    results = {}
    for seed in [int(x) for x in a.seeds.split(",")]:
        for name in ("mined", "unmined"):
            ad = train_on(r, base, out / name, out / f"run-{name}-{seed}", a.steps, seed)
            acc = held_out_accuracy(r, base, ad, held)
            gap1 = acc["teacher_acc"] - acc["plain_acc"]
            closed = (gap0 - gap1) / gap0 if gap0 > 0 else None
            results[f"{name}/seed{seed}"] = {
                "train_rows": (rep_mined if name == "mined" else rep_all)["output"]["train"],
                "after": acc, "gap_after": gap1, "closed": closed,
                "closed_per_10_steps": None if closed is None else closed / a.steps * 10}
            log(f"{name} seed {seed}: plain {start['plain_acc']:.2f} -> {acc['plain_acc']:.2f}, "
                f"crop {start['teacher_acc']:.2f} -> {acc['teacher_acc']:.2f}, gap "
                f"{gap0:+.2f} -> {gap1:+.2f}")
    result = {"closeups": a.closeups, "pool": a.pool, "heldout": a.heldout, "m": a.m,
              "steps": a.steps, "truth_samples": a.truth_samples,
              "precision_recall": pr, "mining_report": rep_mined["stages"]["mining"],
              "build_seconds": build_seconds, "build_seconds_per_image": build_seconds / a.pool,
              "start": start, "gap_before": gap0, "train": results,
              "numerics": demo.numerics(), "seconds": time.time() - t0}
    (out / "gap_mining.json").write_text(json.dumps(result, indent=2))
    log(f"wrote {out / 'gap_mining.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
