"""The build's results: training rows in mlx-opd's layout, the report, the split.

A row is kept when its question held, its crop consensus held and (with mining) its
full-image accuracy was below the threshold. Its image is copied under DATA/images (the
same relative path as under --images), so DATA is a dataset on its own. The held-out split
takes whole images (no image in both), chosen by a hash of the image's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

from mlx_opd.builder.mining import gap_summary
from mlx_opd.builder.regions import drop_kind


def joined(questions: dict, consensus: dict, mining: dict | None) -> list[dict]:
    """One dict per question with every stage's verdict: `status` kept or the stage that
    dropped it, `reason` its why."""
    items = []
    for q in questions.values():
        it = {"question_rec": q, "consensus": consensus.get(q["id"]),
              "mining": None if mining is None else mining.get(q["id"])}
        if not q["keep"]:
            it.update(status="dropped: questions", reason=q["reason"])
        elif it["consensus"] is None or not it["consensus"]["keep"]:
            it.update(status="dropped: consensus",
                      reason=(it["consensus"] or {}).get("reason", "not answered"))
        elif mining is not None and (it["mining"] is None or not it["mining"]["keep"]):
            it.update(status="dropped: mining",
                      reason=(it["mining"] or {}).get("reason", "not mined"))
        else:
            it.update(status="kept", reason="")
        items.append(it)
    return items


def is_heldout(image: str, share: float, seed: int) -> bool:
    h = int(hashlib.sha256(f"{seed}:{image}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < share


def training_row(it: dict, provenance: dict) -> dict:
    q, c, m = it["question_rec"], it["consensus"], it["mining"]
    answer = q["answer"] or c["majority"]
    prov = {**provenance, "source_image": q["image"], "region": q["region"],
            "style": q["style"], "answer_text": q.get("answer_text"),
            "check": q.get("check", "")[:200], "crop_letters": c["letters"],
            "crop_agreement": c["agreement"]}
    if m is not None:
        prov.update(full_letters=m["letters"], full_acc=m["full_acc"])
    return {"id": q["id"], "image": f"images/{q['image']}", "question": q["question"],
            "options": q["options"], "box": q["region"]["box"], "answer": answer,
            "provenance": prov}


def write_rows(out: Path, rows: list[dict], images_dir: Path, share: float, seed: int,
               problem=lambda rel: "") -> tuple[dict, dict]:
    """DATA/train.jsonl and DATA/heldout.jsonl (each written whole, then renamed) and the
    rows' images under DATA/images. `problem(source photo)` says why a photo can no longer
    be used ("" when it can): such a row is left out. Returns the counts (`lost`, with the
    first few photos in `lost_images`, when any row was left out) and {row id: why}."""
    split, lost, photos = {"train": [], "heldout": []}, {}, {}
    for r in rows:
        src = r["provenance"]["source_image"]
        if src not in photos:
            photos[src] = problem(src)
        if photos[src]:
            lost[r["id"]] = photos[src]
            continue
        dest = out / r["image"]
        if not dest.exists():  # copied whole, then renamed: an interrupted copy is redone
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copy2(images_dir / src, tmp)
            os.replace(tmp, dest)
        split["heldout" if is_heldout(src, share, seed) else "train"].append(r)
    for name, part in split.items():
        tmp = out / f".{name}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in part))
        os.replace(tmp, out / f"{name}.jsonl")
    counts = {k: len(v) for k, v in split.items()}
    if lost:
        counts.update(lost=len(lost),
                      lost_images=sorted(k for k, why in photos.items() if why)[:10])
    return counts, lost


def _kinds(reasons) -> dict:
    return dict(Counter(drop_kind(r) for r in reasons if r).most_common())


def report(images: dict, regions: dict, items: list[dict], counts: dict, seconds: dict,
           models: dict, config: dict) -> dict:
    """Counts per stage and their drop reasons, the gap on kept and dropped items."""
    img = list(images.values())
    regs = list(regions.values())
    answered = [it for it in items if it["consensus"] is not None]
    mined = [it for it in answered if it["mining"] is not None]

    def gap_rows(sel):
        return [{"crop_agreement": it["consensus"]["agreement"],
                 "full_acc": it["mining"]["full_acc"]} for it in sel
                if it["mining"]["full_acc"] is not None  # None: its photo was lost
                and it["consensus"]["agreement"] is not None]

    by_status = Counter(it["status"] for it in items)
    # what mining kept, including rows whose photo was gone when the outputs were written
    kept_by_mining = ("kept", "dropped: output")
    mined_kept = [it for it in mined if it["status"] in kept_by_mining]
    return {
        "models": models,
        "stages": {
            "images": {"in": len(img), "out": sum(r["ok"] for r in img),
                       "dropped": _kinds(r["reason"] for r in img if not r["ok"])},
            "regions": {"images": len(regs),
                        "proposed": sum(len(r["regions"]) + len(r["dropped"]) for r in regs),
                        "out": sum(len(r["regions"]) for r in regs),
                        "dropped": _kinds(d["reason"] for r in regs for d in r["dropped"]),
                        "parse_problems": _kinds(p for r in regs for p in r["problems"])},
            "questions": {"in": len(items), "out": len(items) - by_status["dropped: questions"],
                          "dropped": _kinds(it["reason"] for it in items
                                            if it["status"] == "dropped: questions")},
            "consensus": {"in": len(answered),
                          "out": sum(it["consensus"]["keep"] for it in answered),
                          "dropped": _kinds(it["reason"] for it in items
                                            if it["status"] == "dropped: consensus")},
            "mining": {"in": len(mined), "out": len(mined_kept),
                       "dropped": _kinds(it["reason"] for it in items
                                         if it["status"] == "dropped: mining"),
                       "gap_kept": gap_summary(gap_rows(mined_kept)),
                       "gap_dropped": gap_summary(gap_rows(
                           [it for it in mined if it["status"] not in kept_by_mining]))},
        },
        "output": counts,
        "seconds": seconds,
        "config": config,
    }
