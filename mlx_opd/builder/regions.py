"""Regions: the evidence boxes questions are asked about, and the filters they pass.

A region is a labelled xyxy box in the original image's pixels, from the VLM's grounding
answer (grounding.py), refined by a detector (detector.py), or the user's own COCO
annotations (`read_coco`). `filter_regions` keeps the small, distinct ones; each drop has
its reason, counted in report.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mlx_opd.builder.config import RegionConfig
from mlx_opd.run.errors import DataError


@dataclass(frozen=True)
class Region:
    label: str
    box: tuple[float, float, float, float]
    source: str = "model"          # model | sam3 | boxes
    score: float | None = None     # the detector's, where it gives one


def area_ratio(box, image_size) -> float:
    W, H = image_size
    return (box[2] - box[0]) * (box[3] - box[1]) / float(W * H)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def filter_regions(regions: list[Region], image_size: tuple[int, int],
                   cfg: RegionConfig = RegionConfig()) -> tuple[list[Region], list[tuple]]:
    """(kept, [(region, reason), ...]) in the input's order. Rules, in order: a label
    that occurs more than once names no single object (unique_labels); a box of area
    ratio >= max_area_ratio is no fine detail (ZwZ's 0.10); a side under min_side px holds
    too little to read; a box with IoU >= dedup_iou with a kept one is its duplicate; past
    max_per_image the rest are dropped."""
    counts: dict[str, int] = {}
    for r in regions:
        counts[r.label.lower()] = counts.get(r.label.lower(), 0) + 1
    kept, dropped = [], []
    for r in regions:
        x1, y1, x2, y2 = r.box
        ratio = area_ratio(r.box, image_size)
        dup = next((k for k in kept if iou(k.box, r.box) >= cfg.dedup_iou), None)
        if cfg.unique_labels and counts[r.label.lower()] > 1:
            why = f"ambiguous label: {r.label!r} occurs {counts[r.label.lower()]} times"
        elif cfg.max_area_ratio < 1.0 and ratio >= cfg.max_area_ratio:  # 1: no filter
            why = f"too large: area ratio {ratio:.2f} >= {cfg.max_area_ratio}"
        elif min(x2 - x1, y2 - y1) < cfg.min_side:
            why = f"too small: side {min(x2 - x1, y2 - y1):.0f} px < {cfg.min_side}"
        elif dup is not None:
            why = f"duplicate box: of {dup.label!r}, IoU {iou(dup.box, r.box):.2f}"
        elif len(kept) >= cfg.max_per_image:
            why = f"over max_per_image: {cfg.max_per_image}"
        else:
            kept.append(r)
            continue
        dropped.append((r, why))
    return kept, dropped


def drop_kind(reason: str) -> str:
    """The counted kind of a drop reason: its words before the first ':' (every reason is
    written "kind: detail")."""
    return reason.split(":")[0].strip()


def read_coco(path: str | Path) -> dict[str, list[Region]]:
    """{image file name: [Region, ...]} from a COCO detection JSON (images, annotations
    with bbox [x, y, width, height] in pixels, categories). Keys are the images'
    `file_name` as written (matched against paths relative to --images, then base names).
    Annotations flagged iscrowd are skipped (a crowd is no single object)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}", str(path), "pass a COCO JSON file") from None
    except json.JSONDecodeError as e:
        raise DataError(f"not JSON: {e.msg}", f"{path}:{e.lineno}",
                        "fix the file (a COCO detection JSON)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("annotations"), list):
        raise DataError("not a COCO detection file: needs lists 'images' and 'annotations'",
                        str(path), "export the boxes in COCO format (images, annotations, "
                        "categories)")
    names = {c.get("id"): str(c.get("name", c.get("id")))
             for c in doc.get("categories", []) if isinstance(c, dict)}
    files = {}
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DataError("image entry needs 'id' and 'file_name'", f"{path} images[{i}]",
                            "fix the entry")
        files[im["id"]] = str(im["file_name"])
    out: dict[str, list[Region]] = {f: [] for f in files.values()}
    for i, a in enumerate(doc["annotations"]):
        where = f"{path} annotations[{i}]"
        if not isinstance(a, dict) or a.get("image_id") not in files:
            raise DataError("annotation with no matching image_id", where,
                            "every annotation's image_id must be an id in 'images'")
        if a.get("iscrowd"):
            continue
        b = a.get("bbox")
        if not (isinstance(b, list) and len(b) == 4
                and all(isinstance(v, (int, float)) for v in b)) or b[2] <= 0 or b[3] <= 0:
            raise DataError(f"bbox must be [x, y, width, height] with positive size, got {b!r}",
                            where, "COCO boxes are [x, y, width, height] in pixels")
        label = names.get(a.get("category_id"), str(a.get("category_id", "object")))
        out[files[a["image_id"]]].append(
            Region(label, (float(b[0]), float(b[1]), float(b[0] + b[2]), float(b[1] + b[3])),
                   "boxes", a.get("score")))
    return out
