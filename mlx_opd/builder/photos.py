"""Build-data's first two stages: the photos (listed, opened, recorded with their sizes)
and their regions (boxes from the model, refined by SAM3, or read from a COCO file)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mlx_opd.builder import ask
from mlx_opd.builder.config import BuildConfig
from mlx_opd.builder.grounding import TOKEN_FAMILIES, check_box, listing_prompt, parse_grounding
from mlx_opd.builder.regions import Region, filter_regions
from mlx_opd.builder.store import Progress, Store
from mlx_opd.data.images import open_rgb
from mlx_opd.run.config import PixelConfig
from mlx_opd.run.errors import DataError


def _batches(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def stage_images(cfg: BuildConfig, out: Path, log, found: list[str]) -> Store:
    """`found`: list_images of --images."""
    store = Store(out, "images")
    folder = Path(cfg.images)
    todo = [r for r in found if r not in store]
    p = Progress("images", len(todo) + len(store.records), "image", log,
                 already=len(store.records))
    for chunk in _batches(todo, 64):
        recs = []
        for rel in chunk:
            try:
                w, h = open_rgb(folder / rel, rel).size
                ok = min(w, h) >= cfg.regions.min_image_side
                reason = "" if ok else (f"tiny image: {w}x{h} < "
                                        f"{cfg.regions.min_image_side} px")
                recs.append({"id": rel, "ok": ok, "reason": reason, "size": [w, h]})
            except DataError as e:
                recs.append({"id": rel, "ok": False, "reason": f"unreadable image: {e.what}",
                             "size": None})
        store.add(recs)
        p.tick(len(store.records))
    return store


def open_photo(folder: Path, rel: str, size) -> tuple:
    """(the photo `rel`, "") or (None, why): gone or unreadable since the images stage, or
    changed (another size: its boxes would point elsewhere). A photo lost mid-build drops
    its items with that reason; it never stops the build (on a resume it stays dropped)."""
    try:
        im = open_rgb(folder / rel, rel)
    except DataError as e:
        return None, f"unreadable image: {e.what} (after the images stage)"
    if size is not None and list(im.size) != list(size):
        return None, (f"changed image: {im.size[0]}x{im.size[1]}, {size[0]}x{size[1]} at the "
                      "images stage (build again with --force to use it)")
    return im, ""


def _region_dict(r: Region) -> dict:
    return {"label": r.label, "box": [round(v, 2) for v in r.box], "source": r.source,
            "score": r.score}


def coco_index(coco: dict, photos: list[str]) -> dict[str, list[Region]]:
    """Photo -> its COCO boxes: by its path under --images, else by its file name when that
    name is unique among both the photos and the COCO images."""
    photo_names = Counter(Path(p).name for p in photos)
    by_name: dict[str, list] = {}
    for k, v in coco.items():
        by_name.setdefault(Path(k).name, []).append(v)
    index = {}
    for p in photos:
        name = Path(p).name
        if p in coco:
            index[p] = coco[p]
        elif photo_names[name] == 1 and len(by_name.get(name, ())) == 1:
            index[p] = by_name[name][0]
    return index


def _coco_check(coco: dict, index: dict, photos: list[str], path: str) -> None:
    """Refuse a COCO file that names none of the photos (before any model runs)."""
    if photos and not index:
        names = ", ".join(list(coco)[:3])
        raise DataError(f"no photo under --images is named in --boxes (it names {names}, "
                        f"...; the photos are {', '.join(photos[:3])}, ...)", path,
                        "COCO file_name must be the path under --images (or a unique name)")


def stage_regions(cfg: BuildConfig, out: Path, images: Store, loaded, log,
                  coco: dict | None = None) -> Store:
    """`coco`: the user's boxes (read_coco of --boxes), instead of the model's."""
    store = Store(out, "regions")
    folder = Path(cfg.images)
    ok = [r for r in images.records.values() if r["ok"]]
    todo = [r for r in ok if r["id"] not in store]
    p = Progress("regions", len(ok), "image", log, already=len(ok) - len(todo))
    photos = sorted(images.records)
    index = coco_index(coco, photos) if coco is not None else {}
    if coco is not None:
        _coco_check(coco, index, photos, cfg.boxes)
    sam3 = None
    if cfg.detector == "sam3":
        from mlx_opd.builder.detector import load_sam3

        sam3 = load_sam3(cfg.detector_model)
    pixels = PixelConfig(max_pixels=cfg.max_pixels)
    for batch in _batches(todo, cfg.batch):
        opened = [(r, *open_photo(folder, r["id"], r["size"])) for r in batch]
        lost = [{"id": r["id"], "size": None, "regions": [], "dropped": [], "problems": [why],
                 "raw": ""} for r, im, why in opened if im is None]
        chunk = [r for r, im, _ in opened if im is not None]
        ims = [im for _, im, _ in opened if im is not None]
        if coco is not None:
            proposed, problems, raws = _coco_regions(chunk, ims, index)
        elif ims:
            proposed, problems, raws = _model_regions(loaded, ims, cfg, pixels)
        else:
            proposed, problems, raws = [], [], []
        recs = lost
        for r, im, regs, probs, raw in zip(chunk, ims, proposed, problems, raws):
            dropped = []
            if sam3 is not None and regs:
                from mlx_opd.builder.detector import refine

                regs, dropped = refine(sam3, im, regs)
            kept, filtered = filter_regions(regs, im.size, cfg.regions)
            dropped += filtered
            recs.append({"id": r["id"], "size": list(im.size),
                         "regions": [_region_dict(x) for x in kept],
                         "dropped": [{**_region_dict(x), "reason": why} for x, why in dropped],
                         "problems": probs, "raw": raw[:2000]})
        store.add(recs)
        p.tick(len(ok) - len(todo) + sum(1 for x in todo if x["id"] in store))
    return store


def _coco_regions(chunk: list, ims: list, index: dict) -> tuple[list, list, list]:
    """Each photo's boxes from --boxes, checked against the photo: (regions, problems,
    raw texts)."""
    proposed, problems, raws = [], [], []
    for r, im in zip(chunk, ims):
        found, why = [], []
        for reg in index.get(r["id"], []):
            box, bad = check_box(reg.box, im.size)
            if bad:
                why.append(f"{bad} ({reg.label!r}, --boxes)")
            else:
                found.append(Region(reg.label, box, reg.source, reg.score))
        proposed.append(found)
        problems.append(why or ([] if found else ["no boxes: not in --boxes"]))
        raws.append("")
    return proposed, problems, raws


def _model_regions(loaded, ims: list, cfg: BuildConfig, pixels) -> tuple[list, list, list]:
    """Each photo's boxes as the model lists them (its grounding format read per family):
    (regions, problems, the model's texts)."""
    family = loaded.family
    prompts = [([im], listing_prompt(family, cfg.regions.max_per_image)) for im in ims]
    texts, sizes = ask.texts(loaded, prompts, cfg.list_tokens, pixels,
                             keep_special=family in TOKEN_FAMILIES)
    proposed, problems, raws = [], [], []
    for im, text, size in zip(ims, texts, sizes):
        dets, why = parse_grounding(text, family, im.size, size)
        proposed.append([Region(d.label, d.box, "model") for d in dets])
        problems.append(why)
        raws.append(text)
    return proposed, problems, raws
