"""`mlx-opd demo --compare-views`: privileged views beyond one crop, measured on the toy.

Two comparisons, each from a tiny base built like the demo's (`demo.build_base`: the
true answer on the teacher's view, the uniform answer on the student's, a gap checked on
a calibration split), then Vision-OPD with the demo's step, lr and validation, for
several rollout seeds:

- multi-region: scenes with two small objects far apart and a question comparing them
  ("are they the same colour?"; synth objects=2). The base learns the answer from the two
  crops (one per box). Vision-OPD then runs with three teachers: several crops, the
  crop of their union (for far-apart objects, most of the image: what mlx-opd did before
  `crops`), and the clean full image (no privilege).
- box-free: the demo's single-object scenes, the clean full image as the teacher and a
  degraded full image as the student (S2VOPD's set-up, our degradations: views.md). The
  base learns the answer from the clean image and the uniform answer on degraded ones.

Everything is reported as measured, whichever way it comes out: OUT/views.json and a
markdown table, OUT/views.md (docs/demo.md carries the figures of the last run).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

from mlx_opd.run.config import DegradeConfig
from mlx_opd.run.files import remove_own
from mlx_opd.toy.demo import (
    VAL_SEED_OFFSET,
    DemoRecipe,
    _accuracies,
    _guard_state,
    build_base,
    claim_output,
    student_key,
    train_config,
)
from mlx_opd.toy.demo_base import VIEW_SEEDS


def recipes(quick: bool = False) -> dict[str, tuple[DemoRecipe, tuple[str, ...]]]:
    """name -> (the base's recipe, the teachers Vision-OPD runs with on it)."""
    from mlx_opd.toy.demo import QUICK

    # no crop anchors (the demo's departure 6): the views are compared as the method runs
    # the probe rule (min_probe) is the demo's: measured on its one-object colour question
    r = dataclasses.replace(QUICK if quick else DemoRecipe(), anchor_share=0.0, min_probe=0.0)
    # "are both blue?": the tiny base did not learn "are they the same colour?" from two
    # crops (crops 0.46, chance 0.5, after 600 steps); yes / no is at chance at 0.5, so
    # the gap asked of the base is smaller than the demo's
    pair = dataclasses.replace(r, synth=dataclasses.replace(r.synth, objects=2,
                                                             pair_question="both"),
                               teacher="crops", min_gap=min(r.min_gap, 0.3))
    # a larger object, less clutter: the base did not learn to read the clean full view
    # of the demo's scenes (48 px in clutter 12: 0.46 after 200 steps). With views.degrade's
    # default (same-size images) the base did not tell the degraded view from the clean
    # one and answered both alike (80 px, clutter 4: 0.79 / 0.79 after 400 steps; a
    # stronger noise, 64 px: 0.52 / 0.52), so the student here also sees fewer pixels
    # (lowres; the base then read neither view with 64 px or 80 px objects in clutter 4:
    # 0.35 / 0.35 and 0.35 / 0.27), and the object is as large as synth allows (84 px,
    # clutter 2)
    free = dataclasses.replace(r, synth=dataclasses.replace(r.synth, evidence_size=84,
                                                             clutter=2),
                               teacher="clean", student="degraded",
                               # 0.79 after one round here, and lower after more (0.50)
                               min_teacher_acc=min(r.min_teacher_acc, 0.75),
                               degrade=DegradeConfig(ops=("lowres", "blur", "jpeg", "noise"),
                                                     lowres=(3.0, 3.0), blur=(1.0, 2.0)))
    return {"multi-region": (pair, ("crops", "union", "clean")),
            "box-free": (free, ("clean",))}


def run_one(r: DemoRecipe, base: Path, paths: dict, val_path: Path, held: list, out: Path,
            seed: int) -> dict:
    """One Vision-OPD run on `base` with recipe `r` (its teacher view) and rollout seed
    `seed`: the held-out accuracies before, of the best validated adapter and the last."""
    from mlx_opd import models
    from mlx_opd.method.trainer import train
    from mlx_opd.run.run_dir import best_adapter_dir

    cfg = train_config(r, base, paths["train"], out, val_path)
    # the student's own view picks the best adapter (a degraded one in the box-free mode)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed),
                              validation=dataclasses.replace(cfg.validation,
                                                             criterion=student_key(r)))
    remove_own(out, kinds=("run",))  # this command's earlier run (moved aside if anything
    # was added)
    t0 = time.time()
    train(cfg)
    guards = _guard_state(out)
    best_step = (guards.get("best") or {}).get("step", 0)
    before = _accuracies(models.load(base), held, r)
    after = _accuracies(models.load(base, best_adapter_dir(out)), held, r) if best_step \
        else dict(before)
    last = _accuracies(models.load(base, out / "adapters"), held, r)
    key = student_key(r)
    gap_b, gap_a = before["teacher_acc"] - before[key], after["teacher_acc"] - after[key]
    return {"teacher": r.teacher, "student": r.student, "seed": seed, "best_step": best_step,
            "before": before, "after": after, "last": last, "student_key": key,
            "gap_before": gap_b, "gap_after": gap_a,
            "closed": (gap_b - gap_a) / gap_b if gap_b > 0 else None,
            "student_gain": after[key] - before[key], "seconds": time.time() - t0}


def compare_views(out: str | Path, quick: bool = False, cache: str | Path | None = None,
                  seeds: tuple[int, ...] = VIEW_SEEDS, log=print,
                  modes: tuple[str, ...] | None = None) -> dict:
    """Both comparisons (or `modes`), every teacher, every seed; OUT/views.json and
    OUT/views.md."""
    from mlx_opd.data import read_samples
    from mlx_opd.run.config import DataConfig
    from mlx_opd.toy.synth import write_dataset, write_split

    out = claim_output(Path(out), log)
    cache = Path(cache) if cache else out / "cache"
    results = {"seeds": list(seeds), "modes": {}}
    for name, (r, teachers) in recipes(quick).items():
        if modes is not None and name not in modes:
            continue
        log(f"== {name}: base recipe teacher {r.teacher}, student {r.student}")
        data = out / name / "data"
        paths = write_dataset(data, r.train_scenes, r.seed, r.synth, r.heldout_scenes)
        val_path = write_split(data, "validation", r.val_scenes, r.seed + VAL_SEED_OFFSET,
                               r.synth)
        base = build_base(r, cache, log=log)
        calibration = json.loads((base / "base_recipe.json").read_text()).get("calibration")
        held, _ = read_samples(DataConfig(path=str(paths["heldout"])))
        runs = []
        for teacher in teachers:
            rt = dataclasses.replace(r, teacher=teacher)
            for seed in seeds:
                log(f"-- {name}: teacher {teacher}, seed {seed}")
                res = run_one(rt, base, paths, val_path, held, out / name / f"{teacher}-s{seed}",
                              seed)
                log(f"   {res['student_key'][:-4]} {res['before'][res['student_key']]:.2f} -> "
                    f"{res['after'][res['student_key']]:.2f} (best step {res['best_step']}); "
                    f"teacher view {res['before']['teacher_acc']:.2f} -> "
                    f"{res['after']['teacher_acc']:.2f}")
                runs.append(res)
        results["modes"][name] = {"recipe": dataclasses.asdict(r), "base": str(base),
                                  "calibration": calibration, "runs": runs}
    (out / "views.json").write_text(json.dumps(results, indent=2, default=list))
    (out / "views.md").write_text(table(results))
    log((out / "views.md").read_text())
    return results


def _mean_sd(xs: list[float], digits: int = 2, unit: str = "") -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f}{unit} (sd {sd:.{digits}f})"


def table(results: dict) -> str:
    """One row per (mode, teacher): held-out figures, mean and sd over the seeds."""
    lines = ["| mode | teacher | student | seeds | student view before -> best | "
             "teacher view before -> best | gap before -> best | gap closed | last: student "
             "/ teacher view | per seed (student view, best adapter) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, mode in results["modes"].items():
        by_teacher: dict[str, list] = {}
        for run in mode["runs"]:
            by_teacher.setdefault(run["teacher"], []).append(run)
        for teacher, runs in by_teacher.items():
            key = runs[0]["student_key"]
            b = _mean_sd([x["before"][key] for x in runs])
            a = _mean_sd([x["after"][key] for x in runs])
            tb = _mean_sd([x["before"]["teacher_acc"] for x in runs])
            ta = _mean_sd([x["after"]["teacher_acc"] for x in runs])
            gb = _mean_sd([x["gap_before"] for x in runs])
            ga = _mean_sd([x["gap_after"] for x in runs])
            closed = [100 * x["closed"] for x in runs if x["closed"] is not None]
            last = (f"{_mean_sd([x['last'][key] for x in runs])} / "
                    f"{_mean_sd([x['last']['teacher_acc'] for x in runs])}")
            per = ", ".join(f"s{x['seed']}: {x['after'][key]:.2f} (step {x['best_step']})"
                            for x in runs)
            closed_text = _mean_sd(closed, 0, "%") if closed else "- (no gap)"
            lines.append(f"| {name} | {teacher} | {runs[0]['student']} | {len(runs)} | "
                         f"{b} -> {a} | {tb} -> {ta} | {gb} -> {ga} | {closed_text} | "
                         f"{last} | {per} |")
    return "\n".join(lines) + "\n"
