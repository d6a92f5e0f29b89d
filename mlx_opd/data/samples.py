"""Samples and the readers that make them.

A sample is one image, one question (with optional multiple-choice options), the
evidence box and optionally the answer (used only for evaluation) and a precomputed
teacher image. Readers:
- JSONL: one object per line, keys `image`, `question`, `options`, `box` (or `boxes`, a
  list of boxes: evidence in several places), `box_format`, `answer`, `teacher_image`,
  `id`; image paths are relative to the file's folder. Rows without a box are read when
  the caller's views need none (`need_boxes=False`: a clean teacher, no box drawn).
- the authors' layouts, recognised by their columns in JSONL or parquet alike: the
  published Vision-OPD-6K rows (`images`, `teacher_images`, `problem`, `answer`,
  `extra_info`; a dataset folder reads as its train.jsonl) and the parquet their
  prepare_data.py writes (`prompt`, `images`, `bbox_images`, `extra_info`): the student
  image already carries the red box and the problem the hint, options and instruction;
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
from typing import Any

from mlx_opd.data.archives import archive_groups, extract_hint
from mlx_opd.data.images import ImageRef, image_size
from mlx_opd.data.rows import (  # noqa: F401  (moved to rows.py)
    PARQUET_MAGIC,
    PUBLISHED_FILE,
    _sniff,
    _table_rows,
    detect_format,
    jsonl_rows,
    parquet_rows,
    resolve_data_path,
)
from mlx_opd.run.config import DataConfig
from mlx_opd.run.errors import DataError

BOX_FORMATS = ("xyxy", "xyxy_norm", "xywh")
FIELDS = ("image", "question", "options", "box", "boxes", "box_format", "answer",
          "teacher_image", "id")


@dataclass(frozen=True)
class Sample:
    image: ImageRef
    question: str
    box: tuple[float, float, float, float] | None  # xyxy pixels of `image`, validated;
                                                   # with several boxes, their union
    options: tuple[str, ...] | None = None
    answer: str | None = None
    teacher_image: ImageRef | None = None
    id: str = ""
    where: str = ""               # "file:line" / "file row N", for messages
    prompt_complete: bool = False  # question already holds hint, options, instruction
    boxed_image: bool = False      # image already has the evidence box drawn
    clean_image: ImageRef | None = None  # the unboxed original of a boxed `image`
    boxes: tuple = ()              # every evidence box (xyxy), in the data's order

    @property
    def all_boxes(self) -> tuple:
        """The evidence boxes: `boxes`, or the one `box`, or none."""
        return self.boxes or ((self.box,) if self.box is not None else ())


def union_box(boxes) -> tuple[float, float, float, float]:
    """The smallest xyxy box holding every box in `boxes`."""
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


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


def read_boxes(row: dict, size: tuple[int, int], where: str, default_box_format: str,
               need_boxes: bool) -> tuple:
    """The row's evidence boxes as xyxy pixels: `box` (one) or `boxes` (a list), never
    both; () when it has none and none is needed."""
    fmt = row.get("box_format") or default_box_format
    one, many = row.get("box"), row.get("boxes")
    if one is not None and many is not None:
        raise DataError("row has both 'box' and 'boxes'", where,
                        "give one box as \"box\" or several as \"boxes\": [[...], [...]]")
    if many is not None:
        if not isinstance(many, (list, tuple)) or not many:
            raise DataError(f"boxes must be a non-empty list of boxes, got {str(many)[:60]!r}",
                            where, "write them as [[x1, y1, x2, y2], [x1, y1, x2, y2]]")
        return tuple(box_to_xyxy(b, fmt, size, f"{where} (boxes[{i}])")
                     for i, b in enumerate(many))
    if one is None or one == "":
        if need_boxes:
            need(row, "box", where, "add \"box\" (or \"boxes\"), or train box-free with "
                 "views.teacher clean and views.student plain or degraded")
        return ()
    return (box_to_xyxy(one, fmt, size, where),)


def make_sample(row: dict, base: Path, where: str, default_box_format: str = "xyxy",
                need_boxes: bool = True) -> Sample:
    """Build and validate a Sample from a row in our JSONL field names."""
    image = _image_ref(need(row, "image", where), base, where, "image")
    question = need(row, "question", where)
    if not isinstance(question, str):
        raise DataError(f"question must be text, got {type(question).__name__}", where, "")
    boxes = read_boxes(row, image_size(image, where), where, default_box_format, need_boxes)
    box = boxes[0] if len(boxes) == 1 else (union_box(boxes) if boxes else None)
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
                  id=str(row.get("id", where)), where=where,
                  boxes=boxes if len(boxes) > 1 else ())


_IMAGE_PLACEHOLDER = re.compile(r"<image>\s*")

# The authors' layouts, told apart by their columns (never by the file's extension):
# - published: Vision-OPD-6K's train.jsonl (hub yuanqianhao/Vision-OPD-6K), as read by
#   VisionOPD/Vision-OPD scripts/prepare_data.py build_record (@c2e345f, lines 64-91):
#   images[0], teacher_images[0] (paths relative to the dataset folder), problem, answer,
#   extra_info;
# - prepared: the parquet that build_record writes: prompt [{role, content: problem}],
#   images [{"path"}], bbox_images [{"path"}] (the crop), reward_model.ground_truth,
#   extra_info {answer, question, source_extra_info: the published extra_info}.
PUBLISHED_COLUMNS = ("images", "teacher_images", "problem")
PREPARED_COLUMNS = ("images", "bbox_images", "prompt")


def authors_layout(row: dict) -> str | None:
    """'published' | 'prepared' for rows in the authors' layouts, else None."""
    if all(k in row for k in PREPARED_COLUMNS):
        return "prepared"
    if all(k in row for k in PUBLISHED_COLUMNS):
        return "published"
    return None


def _as_dict(value: Any) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def _prompt_text(prompt: Any, where: str) -> str:
    """The user turn's text of a verl `prompt` column (a list of chat messages)."""
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt) if prompt.lstrip().startswith("[") else prompt
        except json.JSONDecodeError:
            pass
        if isinstance(prompt, str):
            return prompt
    if isinstance(prompt, (list, tuple)):
        for msg in prompt:
            if isinstance(msg, dict) and msg.get("role") == "user":
                content = msg.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, (list, tuple)):  # [{"type": "text", "text": ...}]
                    return "".join(c.get("text") or "" for c in content if isinstance(c, dict))
    raise DataError(f"field 'prompt' has no user message with text: {str(prompt)[:80]!r}",
                    where, "write prompt as [{\"role\": \"user\", \"content\": \"<image>...\"}]")


def _moved_path(ref: ImageRef, base: Path) -> ImageRef:
    """prepare_data.py writes absolute paths of the machine it ran on: when one is gone,
    the same folder/name under this dataset's folder (images/x.jpg) is tried."""
    if isinstance(ref, Path) and ref.is_absolute() and not ref.exists():
        moved = base / ref.parent.name / ref.name
        if moved.exists():
            return moved
    return ref


def make_vision_opd_sample(row: dict, base: Path, where: str) -> Sample:
    """A row in the authors' layouts (boxed image, crop, complete problem: the student
    image already carries the red box and the problem the hint, options and instruction,
    so neither is added again)."""
    layout = authors_layout(row) or "published"
    teacher_key = "bbox_images" if layout == "prepared" else "teacher_images"
    image = _moved_path(_image_ref(need(row, "images", where), base, where, "images"), base)
    teacher = _moved_path(_image_ref(need(row, teacher_key, where), base, where, teacher_key),
                          base)
    extra = _as_dict(row.get("extra_info"))
    if layout == "prepared":
        problem = _prompt_text(need(row, "prompt", where), where)
        answer = _as_dict(row.get("reward_model")).get("ground_truth", extra.get("answer"))
        source = _as_dict(extra.get("source_extra_info"))
    else:
        problem = need(row, "problem", where)
        answer = row.get("answer")
        if isinstance(answer, dict):  # verl reward_model style {"ground_truth": ...}
            answer = answer.get("ground_truth")
        source = extra | {k: row[k] for k in ("bbox", "original_images") if row.get(k)}
    if not isinstance(problem, str):
        raise DataError(f"the problem text is {type(problem).__name__}, not text", where,
                        "give the question (with its <image> placeholder) as a string")
    size = image_size(image, where)
    image_size(teacher, where)
    box = None
    bbox = source.get("bbox")
    if bbox is not None:  # informational: the crop is given, so a box that does not fit
        try:              # this image (another resolution) is dropped, not fatal
            box = box_to_xyxy(list(bbox), "xyxy", size, where)
        except (DataError, TypeError):
            box = None
    clean = source.get("original_images") or extra.get("original_images")
    if clean:  # later revisions of the dataset ship the clean originals too
        clean = _moved_path(_image_ref(clean, base, where, "original_images"), base)
        if image_size(clean, where) != size:
            clean = None
    rid = source.get("id", source.get("index", extra.get("index")))
    return Sample(image=image, question=_IMAGE_PLACEHOLDER.sub("", problem).strip(), box=box,
                  answer=None if answer in (None, "") else str(answer), teacher_image=teacher,
                  id=str(where if rid is None else rid), where=where, prompt_complete=True,
                  boxed_image=True, clean_image=clean or None)


def _check_extracted(row: dict, base: Path, where: str) -> None:
    """Stop at the first row when the authors' images are still in their tarballs."""
    groups = archive_groups(base) if authors_layout(row) is not None else {}
    if not groups:
        return
    for key in ("images", "teacher_images", "bbox_images"):
        if row.get(key):
            try:
                ref = _moved_path(_image_ref(row[key], base, where, key), base)
            except DataError:
                return
            if isinstance(ref, Path) and not ref.exists():
                names = [p.name for parts in groups.values() for p in parts]
                raise DataError(f"image {ref} is not there: the dataset's images are still "
                                f"in their archives ({', '.join(names)})", where,
                                f"extract them once: {extract_hint(base)}")


SKIP_HINT = "or skip and count such rows with --on-bad-sample skip"


def with_skip_hint(e: DataError) -> DataError:
    """A bad row's error, saying that such rows can be skipped (every command that reads
    data has the flag)."""
    if SKIP_HINT in e.fix:
        return e
    return DataError(e.what, e.where, f"{e.fix}; {SKIP_HINT}" if e.fix else SKIP_HINT)


def read_samples(cfg: DataConfig, need_boxes: bool = True) -> tuple[list[Sample], ReadReport]:
    """Read and validate all samples of `cfg.path`. Raises DataError on the first bad row
    (on_bad_sample=error) or skips and counts it (skip); an empty result is an error.
    Rows in the authors' layouts are recognised by their columns in any container.
    `need_boxes`: False when the views need no box (ViewConfig.needs_boxes)."""
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError("data path not found", str(path), "check --data")
    path = resolve_data_path(path)
    fmt = cfg.format
    if fmt in ("auto", "vision_opd"):
        fmt = detect_format(path)
    elif path.is_file() and (found := _sniff(path)) != fmt:
        raise DataError(f"data.format is {fmt} but the file is {found}", str(path),
                        "drop data.format (auto tells them apart by their content)")
    base = path.parent if path.is_file() else path
    report, out = ReadReport(), []

    def bad_line(e: DataError) -> None:
        if cfg.on_bad_sample == "error":
            raise with_skip_hint(e)
        report.skipped.append(str(e))
    rows = jsonl_rows(path, bad_line) if fmt == "jsonl" else _table_rows(path)
    cols = dict(cfg.columns)
    first = True
    for where, row in rows:
        if cfg.limit is not None and len(out) >= cfg.limit:
            break
        if first:
            _check_extracted(row, base, where)
            first = False
        try:
            if cols:
                row = {ours: row.get(theirs) for ours, theirs in cols.items()} | {
                    k: v for k, v in row.items() if k not in cols.values()}
            if cfg.format == "vision_opd" or (not cols and authors_layout(row)):
                s = make_vision_opd_sample(row, base, where)
            else:
                s = make_sample(row, base, where, cfg.box_format, need_boxes)
        except DataError as e:
            if cfg.on_bad_sample == "error":
                raise with_skip_hint(e) from None
            report.skipped.append(str(e))
            continue
        out.append(s)
        report.read += 1
    if not out:
        what = "the dataset is empty" if not report.skipped else \
            f"every row was skipped ({len(report.skipped)}); first: {report.skipped[0]}"
        raise DataError(what, str(path), "give at least one valid sample")
    return out, report
