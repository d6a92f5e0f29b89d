"""build-data's speed: seconds per image per stage on this CPU, and plan's Mac estimate.

    python benchmarks/build_data.py --json runs/bench/build_data.json [--photos 3]

Measured: `build_data` on --photos photo-sized scenes (1280x960, synth.write_photo_folder)
with a replica of --model (mlx_opd/models/replicas.py: the real widths, --layers text layers and
2 vision blocks, random weights, float32 on this CPU). A random model writes no usable
answer, so each stage runs in the build that exercises it and every answer runs to its
token budget (the worst case): (a) regions listed by the model; (b) the user's boxes
(--boxes) with questions written and checked; (c) the user's boxes with a template
question, for the consensus and mining stages. The report's seconds per stage are divided
by the images (regions) or items (the others).

Estimated: plan.generation_time for the full-depth model on Apple chips, bf16 and 4-bit,
per image with --regions regions and typical answer lengths (listing 150 tokens, a
question 60, a check 20, consensus 8 and mining 16 samples of 4 tokens), prompts measured
here with the real processor settings. `--fit-table` prints plan's build peak (the rollout
phase) of each real model on a 16 / 32 GB Mac (docs/build-data.md's table).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import mlx_opd  # noqa: F401  (first: preloads the BLAS)
from mlx_opd import models
from mlx_opd.builder.config import BuildConfig, ConsensusConfig, MiningConfig, QuestionConfig
from mlx_opd.builder.pipeline import build_data, stage_mining
from mlx_opd.builder.store import Store
from mlx_opd.method.views import crop_box
from mlx_opd.models.replicas import REAL_MODELS, build_replica
from mlx_opd.preflight import plan
from mlx_opd.run.config import SynthConfig, ViewConfig
from mlx_opd.toy.synth import write_photo_folder

CHIPS = ("m2", "m3-pro", "m4-max")
TYPICAL = {"regions": 150, "question": 60, "check": 20, "answer": 4}


def measure(replica: Path, photos: dict, work: Path, list_tokens: int, log) -> dict:
    common = dict(images=str(photos["photos"]), model=str(replica), batch=8,
                  list_tokens=list_tokens, question_tokens=60, answer_tokens=4,
                  consensus=ConsensusConfig(k=8, min_agreement=0.0),
                  mining=MiningConfig())
    runs = {
        "listing": BuildConfig(out=str(work / "a"), **common),
        "questions": BuildConfig(out=str(work / "b"), boxes=str(photos["boxes"]), **common),
        "answers": BuildConfig(out=str(work / "c"), boxes=str(photos["boxes"]), questions=
                               QuestionConfig(template="What is the colour of the small {label}?",
                                              options=("red", "green", "blue", "yellow")),
                               **common),
    }
    out = {}
    for name, cfg in runs.items():
        t0 = time.perf_counter()
        rep = build_data(cfg, force=True, log=log)
        out[name] = {"wall_seconds": time.perf_counter() - t0, "seconds": rep["seconds"],
                     "stages": {k: {kk: v.get(kk) for kk in ("in", "out")}
                                for k, v in rep["stages"].items()}}
    # a random model's crop answers never agree, so no item reaches mining: time the mining
    # stage on the template build's items directly, each with answer A
    cfg = runs["answers"]
    items = [{**q, "answer": "A"} for q in Store(Path(cfg.out), "questions").records.values()]
    loaded = models.load(cfg.model)
    t0 = time.perf_counter()
    sizes = {k: r["size"] for k, r in Store(Path(cfg.out), "images").records.items()}
    stage_mining(cfg, Path(cfg.out), items, loaded, log, sizes)
    out["answers"]["seconds"]["mining"] = time.perf_counter() - t0
    out["answers"]["stages"]["mining"]["in"] = len(items)
    per = {"regions_per_image": out["listing"]["seconds"]["per_image"]["regions"],
           "questions_per_region": out["questions"]["seconds"]["questions"]
           / max(1, out["questions"]["stages"]["questions"]["in"]),
           "consensus_per_item": out["answers"]["seconds"]["consensus"]
           / max(1, out["answers"]["stages"]["consensus"]["in"]),
           "mining_per_item": out["answers"]["seconds"]["mining"]
           / out["answers"]["stages"]["mining"]["in"]}
    return {"runs": out, "seconds": per}


def prompt_sizes(replica: Path, image_path: Path, box) -> dict:
    from PIL import Image

    L = models.load(replica)
    im = Image.open(image_path).convert("RGB")
    full = models.encode(L, [im], "List the objects.")
    crop = models.encode(L, [crop_box(im, box, ViewConfig())], "A question?")
    return {"full_prompt": full.prompt_len, "full_image_tokens": models.image_token_count(L, full),
            "crop_prompt": crop.prompt_len, "crop_image_tokens": models.image_token_count(L, crop)}


def mac_estimate(config: dict, sizes: dict, regions: int, k: int = 8,
                 m: int = MiningConfig().m) -> dict:
    fp, fi, cp, ci = (sizes[x] for x in ("full_prompt", "full_image_tokens", "crop_prompt",
                                          "crop_image_tokens"))
    out = {}
    for chip in CHIPS:
        for label, bits in (("bf16", None), ("4bit", 4)):
            def g(p, pt, it, n, rows=1, chip=chip, bits=bits):
                return plan.generation_time(config, chip, p, pt, it, n, rows, 8, bits)

            stages = {"regions": g(1, fp + 60, fi, TYPICAL["regions"]),
                      "questions": g(regions, cp + 80, ci, TYPICAL["question"])
                      + g(regions, fp + ci + 120, fi + ci, TYPICAL["check"]),
                      "consensus": g(regions, cp + 40, ci, TYPICAL["answer"], k),
                      # one photo's items share its vision features (ask.py)
                      "mining": g(1, fp + 40, fi, TYPICAL["answer"], m)
                      + g(regions - 1, fp + 40, 0, TYPICAL["answer"], m)}
            out[f"{chip}/{label}"] = {**{s: round(v, 3) for s, v in stages.items()},
                                      "total": round(sum(stages.values()), 3)}
    return out


def fit_rows(memories=(16, 32)) -> list[dict]:
    """Per real model, bf16 and 4-bit: plan's rollout-phase peak on Metal (a build's peak:
    inference, 8 rows over a 1280x960 photo) and whether it fits each memory size."""
    from mlx_opd.run.config import load_train_config

    cfg = load_train_config(None, {"model.path": "x", "data.path": "y"})
    return [{"model": r["model"], "bits": r["bits"],
             "rollout_peak_gib": round(r["phases"]["rollout"] / plan.GIB, 1),
             "fits": {m: r["phases"]["rollout"] <= plan.FIT_FRACTION * m * plan.GIB
                      for m in memories}} for r in plan.fit_table(cfg)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="runs/bench/build_data.json")
    ap.add_argument("--model", default="Qwen/Qwen2.5-VL-3B-Instruct", choices=sorted(REAL_MODELS))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--regions", type=int, default=4, help="Regions per image (estimate).")
    ap.add_argument("--list-tokens", type=int, default=64,
                    help="The listing's budget here (a random model always uses it all).")
    ap.add_argument("--fit-table", action="store_true",
                    help="Print which builders fit a 16 / 32 GB Mac (plan) and stop.")
    a = ap.parse_args()
    if a.fit_table:
        for row in fit_rows():
            print(json.dumps(row))
        return
    log = lambda m: print(m, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        replica = build_replica(a.model, tmp / "replica", layers=a.layers)
        photos = write_photo_folder(tmp / "in", a.photos, 0, SynthConfig(
            image_size=(1280, 960), evidence_size=80, clutter=60))
        measured = measure(replica, photos, tmp / "work", a.list_tokens, log)
        first = json.loads(photos["boxes"].read_text())["annotations"][0]["bbox"]
        box = (first[0], first[1], first[0] + first[2], first[1] + first[3])
        sizes = prompt_sizes(replica, photos["photos"] / "00000.png", box)
    result = {"model": a.model, "replica_layers": a.layers, "photos": a.photos,
              "photo_size": [1280, 960], "list_tokens": a.list_tokens,
              "measured_cpu": measured, "prompt_sizes": sizes,
              "mac_estimate_seconds_per_image": mac_estimate(
                  REAL_MODELS[a.model].config, sizes, a.regions),
              "m": MiningConfig().m,
              "estimate_assumes": {"regions_per_image": a.regions, "typical_new_tokens": TYPICAL,
                                   "k": 8, "m": MiningConfig().m, "batch": 8}}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2))
    log(json.dumps({"cpu_seconds": measured["seconds"],
                    "mac": result["mac_estimate_seconds_per_image"]}, indent=1))


if __name__ == "__main__":
    main()
