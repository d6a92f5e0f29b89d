"""Samples and the readers that make them.

A sample is one image, one question (with optional multiple-choice options), the
evidence box and optionally the answer (used only for evaluation) and a precomputed
teacher image. Readers:
- JSONL: one object per line, keys `image`, `question`, `options`, `box`, `box_format`,
  `answer`, `teacher_image`, `id`; image paths are relative to the file's folder.
- the authors' Vision-OPD-6K rows (`images`, `teacher_images`, `problem`, `answer`,
  `extra_info`) in parquet: the student image already carries the red box and the
  problem already carries the hint, options and answer instruction;
- a parquet file / folder of parquet files / `datasets.save_to_disk` folder with a
  column mapping (our field -> their column).
Every row is validated when read (image decodes, box inside it); a bad row raises a
DataError naming the file and line/row, or is skipped and counted with on_bad_sample=skip.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .config import DataConfig
from .errors import DataError
from .images import ImageRef, image_size

BOX_FORMATS = ("xyxy", "xyxy_norm", "xywh")
FIELDS = ("image", "question", "options", "box", "box_format", "answer", "teacher_image", "id")


@dataclass(frozen=True)
class Sample:
    image: ImageRef
    question: str
    box: tuple[float, float, float, float] | None  # xyxy pixels of `image`, validated
    options: tuple[str, ...] | None = None
    answer: str | None = None
    teacher_image: ImageRef | None = None
    id: str = ""
    where: str = ""               # "file:line" / "file row N", for messages
    prompt_complete: bool = False  # question already holds hint, options, instruction
    boxed_image: bool = False      # image already has the evidence box drawn


@dataclass
class ReadReport:
    """What a reader did: how many rows it read and which it skipped, and why."""

    read: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.read} samples read"
        if self.skipped:
            s += f", {len(self.skipped)} skipped (first: {self.skipped[0]})"
        return s


def box_to_xyxy(box: Any, fmt: str, size: tuple[int, int], where: str) -> tuple[float, ...]:
    """Validate a box and convert it to xyxy pixels of an image of `size` = (w, h)."""
    if fmt not in BOX_FORMATS:
        raise DataError(f"unknown box_format {fmt!r}", where,
                        f"use one of {', '.join(BOX_FORMATS)}")
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise DataError(f"box must be a list of 4 numbers, got {box!r}", where,
                        "write it as [x1, y1, x2, y2] (or declare box_format)")
    if not all(math.isfinite(v) for v in box):
        raise DataError(f"box has a non-finite value: {box!r}", where, "use finite numbers")
    if any(v < 0 for v in box):
        raise DataError(f"box has a negative coordinate: {list(box)}", where,
                        "coordinates are pixels from the top-left corner and must be >= 0")
    w, h = size
    x1, y1, a, b = (float(v) for v in box)
    if fmt == "xywh":
        x2, y2 = x1 + a, y1 + b
    elif fmt == "xyxy_norm":
        if max(box) > 1.0:
            raise DataError(f"box_format xyxy_norm needs values in [0, 1], got {list(box)}",
                            where, "declare box_format xyxy for pixel boxes")
        x1, y1, x2, y2 = x1 * w, y1 * h, a * w, b * h
    else:
        x2, y2 = a, b
        if max(box) <= 1.0 and min(w, h) > 4:
            raise DataError(f"box {list(box)} looks normalised (all values <= 1) but is read "
                            f"as pixels of a {w}x{h} image", where,
                            "set \"box_format\": \"xyxy_norm\" for this row or for the dataset")
    if x2 <= x1 or y2 <= y1:
        kind = "zero-area" if (x2 == x1 or y2 == y1) else "inverted"
        raise DataError(f"{kind} box {list(box)} ({fmt}): needs x2 > x1 and y2 > y1", where,
                        "check the box format: xyxy is [x1, y1, x2, y2], xywh is [x, y, w, h]")
    if x2 > w + 0.5 or y2 > h + 0.5:
        raise DataError(f"box {list(box)} ({fmt}) -> [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies "
                        f"outside the {w}x{h} image", where,
                        "fix the box, or check that it refers to this image at its original size")
    return (x1, y1, min(x2, float(w)), min(y2, float(h)))


def need(row: dict, key: str, where: str, hint: str = "") -> Any:
    """row[key], or a DataError naming the field, the row's own fields and the fix."""
    if key not in row or row[key] is None or row[key] == "":
        raise DataError(f"row is missing the field {key!r} (it has: {', '.join(map(str, row))})",
                        where, hint or f"add \"{key}\" to the row (keys: {', '.join(FIELDS)})")
    return row[key]


def _image_ref(value: Any, base: Path, where: str, key: str) -> ImageRef:
    """A path (relative to `base`), raw bytes, a {'bytes'|'path'} dict or a PIL image."""
    from PIL import Image

    if isinstance(value, list):
        if not value:
            raise DataError(f"field {key!r} is an empty list", where, "give one image")
        value = value[0]
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    raise DataError(f"field {key!r} is not an image path or image bytes: {str(value)[:60]!r}",
                    where, "give a path relative to the data file, or embedded bytes")


def make_sample(row: dict, base: Path, where: str, default_box_format: str = "xyxy") -> Sample:
    """Build and validate a Sample from a row in our JSONL field names."""
    image = _image_ref(need(row, "image", where), base, where, "image")
    question = need(row, "question", where)
    if not isinstance(question, str):
        raise DataError(f"question must be text, got {type(question).__name__}", where, "")
    box_raw = need(row, "box", where)
    fmt = row.get("box_format") or default_box_format
    box = box_to_xyxy(box_raw, fmt, image_size(image, where), where)
    options = row.get("options")
    if options is not None:
        if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) for o in options) \
                or not options:
            raise DataError("options must be a non-empty list of strings", where,
                            "write them as [\"red\", \"blue\", ...]; letters are added for you")
        options = tuple(options)
    teacher = row.get("teacher_image")
    teacher = None if teacher in (None, "") else _image_ref(teacher, base, where, "teacher_image")
    if teacher is not None:
        image_size(teacher, where)
    answer = row.get("answer")
    return Sample(image=image, question=question, box=box, options=options,
                  answer=None if answer is None else str(answer), teacher_image=teacher,
                  id=str(row.get("id", where)), where=where)


_IMAGE_PLACEHOLDER = re.compile(r"<image>\s*")


def make_vision_opd_sample(row: dict, base: Path, where: str) -> Sample:
    """A row in the authors' Vision-OPD-6K layout (boxed image, crop, complete problem)."""
    image = _image_ref(need(row, "images", where), base, where, "images")
    teacher = _image_ref(need(row, "teacher_images", where), base, where, "teacher_images")
    problem = _IMAGE_PLACEHOLDER.sub("", need(row, "problem", where)).strip()
    size = image_size(image, where)
    image_size(teacher, where)
    extra = row.get("extra_info") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = {}
    bbox = extra.get("bbox") if isinstance(extra, dict) else None
    box = box_to_xyxy(list(bbox), "xyxy", size, where) if bbox is not None else None
    answer = row.get("answer")
    if isinstance(answer, dict):  # verl reward_model style {"ground_truth": ...}
        answer = answer.get("ground_truth")
    return Sample(image=image, question=problem, box=box, answer=None if answer is None
                  else str(answer), teacher_image=teacher, id=str(extra.get("index", where))
                  if isinstance(extra, dict) else where, where=where, prompt_complete=True,
                  boxed_image=True)


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", where,
                                "each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataError("line is not a JSON object", where,
                                "each line must be one JSON object")
            yield where, row


def _table_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Rows of a parquet file, a folder of parquet files, or a datasets folder."""
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[next(iter(ds))]
        for i, row in enumerate(ds):
            yield f"{path} row {i}", row
        return
    import pyarrow.parquet as pq

    files = sorted(path.glob("**/*.parquet")) if path.is_dir() else [path]
    if not files:
        raise DataError("no .parquet files found", str(path),
                        "point --data at a .jsonl file, a .parquet file or a folder of them")
    for file in files:
        table = pq.read_table(file)
        for i, row in enumerate(table.to_pylist()):
            yield f"{file} row {i}", row


def detect_format(path: Path) -> str:
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".parquet" or path.is_dir():
        return "parquet"
    raise DataError(f"cannot tell the data format of {path.name}", str(path),
                    "use a .jsonl file, a .parquet file or a folder, or set format explicitly")


def read_samples(cfg: DataConfig) -> tuple[list[Sample], ReadReport]:
    """Read and validate all samples of `cfg.path`. Raises DataError on the first bad row
    (on_bad_sample=error) or skips and counts it (skip); an empty result is an error."""
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError("data path not found", str(path), "check --data")
    fmt = detect_format(path) if cfg.format == "auto" else cfg.format
    base = path.parent if path.is_file() else path
    rows = jsonl_rows(path) if fmt == "jsonl" else _table_rows(path)
    report, out = ReadReport(), []
    cols = dict(cfg.columns)
    for where, row in rows:
        if cfg.limit is not None and len(out) >= cfg.limit:
            break
        try:
            if cols:
                row = {ours: row.get(theirs) for ours, theirs in cols.items()} | {
                    k: v for k, v in row.items() if k not in cols.values()}
            if fmt == "vision_opd" or (fmt == "parquet" and "problem" in row
                                       and "teacher_images" in row):
                s = make_vision_opd_sample(row, base, where)
            else:
                s = make_sample(row, base, where, cfg.box_format)
        except DataError as e:
            if cfg.on_bad_sample == "error":
                raise
            report.skipped.append(str(e))
            continue
        out.append(s)
        report.read += 1
    if not out:
        what = "the dataset is empty" if not report.skipped else \
            f"every row was skipped ({len(report.skipped)}); first: {report.skipped[0]}"
        raise DataError(what, str(path), "give at least one valid sample")
    return out, report
