"""`mlx-opd build-data`: from a folder of photos to Vision-OPD training data.

    mlx-opd build-data --images DIR --model M --out DATA [--mine-with M2] [--limit N]

Stages, each a function over the previous stage's records, each resumable (store.py):
1. images: every image under DIR (sorted), bad or tiny ones skipped and counted;
2. regions: the model lists objects with boxes (grounding.py), optionally refined by SAM3
   (detector.py), or the user's COCO boxes (--boxes); filtered (regions.py);
3. questions: one question per region from its crop, then the check on crop and full
   image (questions.py); a template question (--question) skips both;
4. consensus: the crop answered k times (consensus.py);
5. mining: the model to be trained answers the plain full image m times (mining.py);
then DATA/train.jsonl + DATA/heldout.jsonl (mlx-opd's layout, provenance per row, the
images copied under DATA/images), DATA/report.json and DATA/sheet.html. Nothing is
written outside DATA.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlx_opd.builder import ask
from mlx_opd.builder.config import BuildConfig, to_dict
from mlx_opd.builder.consensus import consensus
from mlx_opd.builder.mining import mine
from mlx_opd.builder.photos import (  # noqa: F401  (moved to photos.py)
    _batches,
    coco_index,
    open_photo,
    stage_images,
    stage_regions,
)
from mlx_opd.builder.questions import (
    options_of,
    parse_question,
    parse_validation,
    style_for,
    template_question,
    validation_prompt,
    writing_prompt,
)
from mlx_opd.builder.regions import read_coco
from mlx_opd.builder.store import Progress, Store, stderr_log
from mlx_opd.data import Sample
from mlx_opd.run.config import PixelConfig
from mlx_opd.run.errors import DataError
from mlx_opd.run.files import (
    claim_output,
    marker_kind,
    write_json_atomically,
    write_marker,
    written_by_us,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_images(folder: Path, limit: int | None, out: Path | None = None) -> list[str]:
    """Image paths relative to `folder`, sorted, the first `limit` (never under `out`)."""
    if not folder.is_dir():
        raise DataError(f"--images {folder} is not a folder", str(folder),
                        "pass the folder that holds your photos")
    skip = out.resolve() if out is not None else None
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and (skip is None or not p.resolve().is_relative_to(skip)))
    if not found:
        raise DataError(f"no images under {folder} (looked for {', '.join(IMAGE_SUFFIXES)}, "
                        "in subfolders too)", str(folder), "point --images at your photos")
    return found[:limit] if limit is not None else found


def check_paths(cfg: BuildConfig) -> None:
    """DATA may not hold the photos (--force would delete them)."""
    out, images = Path(cfg.out).resolve(), Path(cfg.images).resolve()
    if images == out or images.is_relative_to(out):
        raise DataError(f"--out {cfg.out} holds --images {cfg.images}", str(cfg.out),
                        "write DATA to a folder of its own, beside the photos")


def claim_out(cfg: BuildConfig, force: bool) -> Path:
    """DATA, checked: a new folder, or an earlier build with the same settings (resume)."""
    out = Path(cfg.out)
    check_paths(cfg)
    state = out / ".build" / "config.json"
    if out.exists() and any(out.iterdir()):
        if not state.exists() and not written_by_us(out):
            raise DataError(f"--out {out} holds files build-data did not write", str(out),
                            "choose a new folder (--force replaces only a folder mlx-opd "
                            "wrote, and moves it aside when anything else is in it)")
        if force:
            if not written_by_us(out):  # a build from before the marker: ours by its state
                write_marker(out, "build-data")
            # a build grows in place (never sealed): moved aside, not deleted; another
            # command's output is moved aside too
            claim_output(out, force=True, kinds=("build-data",))
        elif not state.exists():
            raise DataError(f"--out {out} holds another mlx-opd output "
                            f"({marker_kind(out)}), not a build-data folder", str(out),
                            "choose a new folder, or --force to move it aside")
        else:
            before = json.loads(state.read_text())
            now = cfg.fingerprint()
            diff = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            if diff:
                raise DataError(f"--out {out} holds a build with other settings (they differ "
                                f"in: {', '.join(diff)})", str(state),
                                "resume with the same settings, use another --out, or "
                                "--force to start over")
    (out / ".build").mkdir(parents=True, exist_ok=True)
    if not written_by_us(out):
        write_marker(out, "build-data")
    write_json_atomically(state, cfg.fingerprint())
    return out


def _sample(cfg: BuildConfig, q: dict, image=None) -> Sample:
    """Item `q` as a Sample; `image`: its photo, already opened (else read from its path)."""
    return Sample(image=Path(cfg.images) / q["image"] if image is None else image,
                  question=q["question"],
                  box=tuple(q["region"]["box"]), options=tuple(q["options"]),
                  answer=q.get("answer"), id=q["id"], where=q["id"])


def stage_questions(cfg: BuildConfig, out: Path, regions: Store, loaded, log) -> Store:
    from mlx_opd.method.views import crop_box, draw_box

    store = Store(out, "questions")
    qc = cfg.questions
    planned = [(f"{img['id']}#{i}", img["id"], reg, i)
               for img in regions.records.values() for i, reg in enumerate(img["regions"])]
    todo = [x for x in planned if x[0] not in store]
    p = Progress("questions", len(planned), "region", log, already=len(planned) - len(todo))
    pixels = PixelConfig(max_pixels=cfg.max_pixels)
    for chunk in _batches(todo, cfg.batch):
        if qc.template is not None:
            recs = []
            for iid, rel, reg, _ in chunk:
                q = template_question(qc.template, reg["label"], qc.options)
                recs.append({"id": iid, "image": rel, "region": reg, "style": q.style,
                             "question": q.question, "options": list(q.distractors),
                             "answer": None, "keep": True, "reason": "", "raw": "",
                             "check": "template: not checked"})
            store.add(recs)
            p.tick(len(store.records))
            continue
        opened = {rel: open_photo(Path(cfg.images), rel, regions.records[rel]["size"])
                  for _, rel, _, _ in chunk}
        lost = [{"id": iid, "image": rel, "region": reg, "style": style_for(i, qc.styles),
                 "raw": "", "keep": False, "reason": opened[rel][1], "check": ""}
                for iid, rel, reg, i in chunk if opened[rel][0] is None]
        chunk = [x for x in chunk if opened[x[1]][0] is not None]
        fulls = {rel: im for rel, (im, _) in opened.items() if im is not None}
        crops = [crop_box(fulls[rel], reg["box"], cfg.views) for _, rel, reg, _ in chunk]
        styles = [style_for(i, qc.styles) for _, _, _, i in chunk]
        prompts = [([c], writing_prompt(reg["label"], s, qc.distractors))
                   for c, (_, _, reg, _), s in zip(crops, chunk, styles)]
        written, _ = ask.texts(loaded, prompts, cfg.question_tokens, pixels)
        recs, checks = lost, []
        for (iid, rel, reg, _), s, raw, crop in zip(chunk, styles, written, crops):
            q, why = parse_question(raw, s, qc.distractors)
            rec = {"id": iid, "image": rel, "region": reg, "style": s, "raw": raw[:1000],
                   "keep": q is not None, "reason": why, "check": ""}
            if q is not None:
                opts, letter = options_of(q, f"{cfg.seed}:{iid}")
                rec.update(question=q.question, options=list(opts), answer=letter,
                           answer_text=q.answer)
                if qc.validate:
                    boxed = draw_box(fulls[rel], reg["box"], cfg.views)
                    checks.append((rec, ([boxed, crop], validation_prompt(q.question, opts))))
            recs.append(rec)
        verdicts, _ = ask.texts(loaded, [c for _, c in checks], cfg.question_tokens, pixels)
        for (rec, _), text in zip(checks, verdicts):
            valid, why = parse_validation(text)
            rec["check"] = text[:500]
            if not valid:
                rec.update(keep=False, reason=why)
        store.add(recs)
        p.tick(len(store.records))
    return store


def _answer_stage(cfg: BuildConfig, out: Path, stage: str, items: list[dict], loaded, view,
                  n: int, temperature: float, score, lost: dict, log, sizes: dict,
                  full_image: bool = False) -> Store:
    """Sample n answers per item under `view` and record `score(letters, item)`; an item
    whose photo is gone or changed (`sizes`: at the images stage) records `lost` and why. A
    view of the full image (`full_image`) shares each photo's vision features across its
    items."""
    store = Store(out, stage)
    todo = [q for q in items if q["id"] not in store]
    p = Progress(stage, len(items), "item", log, already=len(items) - len(todo))
    pixels = PixelConfig(max_pixels=cfg.max_pixels)
    folder = Path(cfg.images)
    for batch in _batches(todo, cfg.batch):
        recs, chunk, views = [], [], []
        opened = {rel: open_photo(folder, rel, sizes.get(rel))
                  for rel in {q["image"] for q in batch}}  # once per photo, not per item
        for q in batch:
            im, why = opened[q["image"]]
            if im is None:
                recs.append({"id": q["id"], "letters": [], "answers": [], **lost,
                             "keep": False, "reason": why})
            else:
                chunk.append(q)
                views.append(view(_sample(cfg, q, im), cfg.views))
        keys = [ask.item_key(cfg.seed, stage, q["id"]) for q in chunk]
        letters, texts = ask.letters(loaded, [(v.images, v.text) for v in views],
                                     [q["options"] for q in chunk], n, temperature, keys,
                                     cfg.answer_tokens, pixels,
                                     [q["image"] for q in chunk] if full_image else None)
        recs += [{"id": q["id"], "letters": ls, "answers": [t[:40] for t in ts],
                  **score(ls, q)} for q, ls, ts in zip(chunk, letters, texts)]
        store.add(recs)
        p.tick(len(store.records))
    return store


def stage_consensus(cfg: BuildConfig, out: Path, questions: Store, loaded, log,
                    sizes: dict) -> Store:
    from mlx_opd.method.views import teacher_view

    cc = cfg.consensus

    def score(ls, q):
        c = consensus(ls, q.get("answer"), cc.min_agreement)
        return {"majority": c.majority, "agreement": c.agreement, "keep": c.keep,
                "reason": c.reason}

    items = [q for q in questions.records.values() if q["keep"]]
    return _answer_stage(cfg, out, "consensus", items, loaded, teacher_view, cc.k,
                         cc.temperature, score, {"majority": None, "agreement": None}, log,
                         sizes)


def stage_mining(cfg: BuildConfig, out: Path, items: list[dict], loaded, log,
                 sizes: dict) -> Store:
    from mlx_opd.method.views import plain_view

    mc = cfg.mining

    def score(ls, q):
        m = mine(ls, q["answer"], mc.max_full_acc)
        return {"full_acc": m.full_acc, "keep": m.keep, "reason": m.reason}

    # batches follow the items' order, so one photo's items meet in one batch
    return _answer_stage(cfg, out, "mining", items, loaded, plain_view, mc.m, mc.temperature,
                         score, {"full_acc": None}, log, sizes, full_image=True)


def _load(path: str, adapter: str | None = None):
    from mlx_opd import models

    return models.load(path, adapter_path=adapter)


def build_data(cfg: BuildConfig, force: bool = False, log=stderr_log) -> dict:
    """Run (or resume) every stage and write DATA's outputs; returns the report."""
    from mlx_opd.builder.output import joined, report, training_row, write_rows
    from mlx_opd.builder.sheet import write_sheet

    check_paths(cfg)
    found = list_images(Path(cfg.images), cfg.limit, Path(cfg.out))  # inputs first: a typo ...
    coco = read_coco(cfg.boxes) if cfg.boxes else None
    loaded = _load(cfg.model)  # ... never leaves DATA claimed with the wrong settings
    family = loaded.family
    out = claim_out(cfg, force)
    seconds = {}

    def timed(name, stage, *args, **kw):
        t0 = time.perf_counter()
        result = stage(*args, **kw)
        seconds[name] = time.perf_counter() - t0
        return result

    images = timed("images", stage_images, cfg, out, log, found)
    regions = timed("regions", stage_regions, cfg, out, images, loaded, log, coco=coco)
    questions = timed("questions", stage_questions, cfg, out, regions, loaded, log)
    sizes = {k: r["size"] for k, r in images.records.items()}
    cons = timed("consensus", stage_consensus, cfg, out, questions, loaded, log, sizes)
    mining = None
    if cfg.mining.enabled:
        passed = [{**questions.records[i], "answer": questions.records[i]["answer"]
                   or c["majority"]} for i, c in cons.records.items() if c["keep"]]
        same = cfg.mine_with in (None, cfg.model) and cfg.adapter is None
        if not same:
            import gc

            import mlx.core as mx

            loaded = None  # the builder's memory is freed before the miner loads
            gc.collect()
            mx.clear_cache()
        miner = loaded if same else _load(cfg.miner, cfg.adapter)
        mining = timed("mining", stage_mining, cfg, out, passed, miner, log, sizes).records
    items = joined(questions.records, cons.records, mining)
    provenance = {"builder": cfg.model, "miner": cfg.miner if cfg.mining.enabled else None,
                  "adapter": cfg.adapter}
    rows = [training_row(it, provenance) for it in items if it["status"] == "kept"]
    folder = Path(cfg.images)
    counts, lost = write_rows(out, rows, folder, cfg.heldout_share, cfg.seed,
                              lambda rel: open_photo(folder, rel, sizes.get(rel))[1])
    for it in items:
        if it["question_rec"]["id"] in lost:
            it.update(status="dropped: output", reason=lost[it["question_rec"]["id"]])
    n_img = max(1, sum(r["ok"] for r in images.records.values()))
    rep = report(images.records, regions.records, items, counts,
                 {**{k: round(v, 3) for k, v in seconds.items()},
                  "per_image": {k: round(v / n_img, 4) for k, v in seconds.items()}},
                 {"builder": cfg.model, "family": family, "miner": provenance["miner"],
                  "adapter": cfg.adapter}, to_dict(cfg))
    write_json_atomically(out / "report.json", rep)
    write_sheet(out / "sheet.html", items, rep, Path(cfg.images), cfg.views)
    return rep


def summary_text(rep: dict, out: Path) -> str:
    st = rep["stages"]
    lines = [f"build-data: {rep['output']['train']} train + {rep['output']['heldout']} "
             f"held-out items in {out}"]
    for name, s in st.items():
        drops = ", ".join(f"{k} {v}" for k, v in list(s.get("dropped", {}).items())[:3])
        lines.append(f"  {name:<9} in {s.get('in', s.get('images'))}, out {s.get('out')}"
                     + (f" (dropped: {drops})" if drops else ""))
    if rep["output"].get("lost"):
        lines.append(f"  output    {rep['output']['lost']} kept item(s) left out: their photo "
                     f"is gone or changed ({', '.join(rep['output']['lost_images'][:3])})")
    g, d = st["mining"]["gap_kept"], st["mining"]["gap_dropped"]
    if g["n"] or d["n"]:
        fmt = lambda x: "-" if x["gap"] is None else f"{x['gap']:+.2f} (n {x['n']})"  # noqa: E731
        lines.append(f"  crop-vs-full gap: kept {fmt(g)}, dropped {fmt(d)}")
    lines.append(f"  look at the items: {out / 'sheet.html'}")
    if not rep["output"]["train"]:
        lines.append("next: nothing was kept to train on; open the sheet to see why items "
                     "were dropped, then build from more photos, or with --no-mining to keep "
                     "gap-free items")
        return "\n".join(lines)
    model = rep.get("models", {}).get("miner") or rep.get("models", {}).get("builder")
    held = (f" --set validation.path={out / 'heldout.jsonl'}"
            if rep["output"]["heldout"] else "")
    lines.append(f"next: mlx-opd train --model {model} --data {out / 'train.jsonl'}{held} "
                 f"--out {out}-run")
    return "\n".join(lines)
