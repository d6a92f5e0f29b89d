"""V* Bench (191 questions; Wu & Xie, "V*: Guided Visual Search as a Core Mechanism in
Multimodal LLMs"). Hub: craigwu/vstar_bench. Published layout:

    direct_attributes/NAME.jpg + NAME.json     (115)
    relative_position/NAME.jpg + NAME.json     (76)
    test_questions.jsonl                       one row per question: image (path relative
                                               to the root), text, category, question_id, label

NAME.json holds {"target_object": [...], "bbox": [[x, y, w, h], ...], "question": ...,
"options": [...]} with the correct option FIRST (the authors score options by likelihood).
test_questions.jsonl holds the lettered form: text = question, "(A) ..." lines and the
answer instruction; label = the correct letter. We read test_questions.jsonl when present
(its letters are what everyone reports); without it, the options of NAME.json are rotated
by a hash of the question's id so the correct letter is not always A (documented, stable).
The evidence box for the crop view is the union of the target boxes (the paper's Fig. 3).

Prompt: the row's `text` verbatim (question, "(A) ..." lines, the instruction), with the
instruction appended when a text lacks it, as the authors' harness sends it
(VisionOPD/Vision-OPD eval/prepare_data.py @c2e345f lines 111-115; they read the same text
from lmms-lab/vstar-bench's parquet, which this adapter also reads: data/test-*.parquet
with image {bytes}, text, label, question_id, category; it has no boxes, so no crop view).
Without test_questions.jsonl the text is built the same way from NAME.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image

from mlx_opd.data import jsonl_rows, need
from mlx_opd.evaluation.benchmarks.item import (
    LETTERS,
    BenchItem,
    Benchmark,
    bracket_lines,
    guarded,
    sent,
)
from mlx_opd.evaluation.benchmarks.source import (
    feature_image,
    parquet_count,
    parquet_files,
    parquet_rows,
)
from mlx_opd.run.errors import DataError

CATEGORIES = ("direct_attributes", "relative_position")
INSTRUCTION = "Answer with the option's letter from the given choices directly."
LAYOUT = ("direct_attributes/ and relative_position/ (NAME.jpg + NAME.json) and "
          "test_questions.jsonl, as on craigwu/vstar_bench")
FIX = f"use the published layout: {LAYOUT}"


def split_lettered(text: str, where: str) -> tuple[str, tuple[str, ...]]:
    """'question\\n(A) x\\n(B) y\\n...\\nAnswer with ...' -> (question, (x, y, ...))."""
    body = text.split(INSTRUCTION)[0]
    marks, start = [], 0
    for letter in LETTERS:
        i = body.find(f"({letter})", start)
        if i < 0:
            break
        marks.append(i)
        start = i + 3
    if len(marks) < 2:
        raise DataError("question text has no (A)/(B) options", where,
                        "use the published test_questions.jsonl")
    ends = marks[1:] + [len(body)]
    options = tuple(body[a + 3:b].strip() for a, b in zip(marks, ends))
    return body[:marks[0]].strip(), options


def union_box(bboxes, size, where: str) -> tuple[float, float, float, float] | None:
    """Union of [x, y, w, h] target boxes as xyxy pixels, clipped to the image."""
    if not bboxes:
        return None
    try:
        x1 = min(b[0] for b in bboxes)
        y1 = min(b[1] for b in bboxes)
        x2 = max(b[0] + b[2] for b in bboxes)
        y2 = max(b[1] + b[3] for b in bboxes)
    except (TypeError, IndexError):
        raise DataError(f"bbox is not a list of [x, y, w, h]: {str(bboxes)[:60]}", where,
                        "use the published NAME.json") from None
    W, H = size
    box = (max(0.0, x1), max(0.0, y1), min(float(W), x2), min(float(H), y2))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _annotation(image: Path) -> tuple[dict | None, str]:
    ann = image.with_suffix(".json")
    if not ann.exists():
        return None, str(ann)
    try:
        return json.loads(ann.read_text(encoding="utf-8")), str(ann)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg})", str(ann), "use the published file") from None


def _box_for(image: Path, where: str):
    ann, _ = _annotation(image)
    if not ann or not image.exists():
        return None
    with Image.open(image) as im:
        size = im.size
    return union_box(ann.get("bbox"), size, where)


def rotate_correct_first(item_id: str, options: list[str]) -> tuple[tuple[str, ...], str]:
    """Options with the correct one (first) moved to a letter fixed by the id's hash."""
    k = int(hashlib.sha256(item_id.encode()).hexdigest(), 16) % len(options)
    rest = options[1:]
    out = rest[:k] + [options[0]] + rest[k:]
    return tuple(out), LETTERS[k]


def read(root: Path):
    if root.is_file():
        root = root.parent
    questions = root / "test_questions.jsonl"
    if questions.exists():
        rows = list(jsonl_rows(questions))

        def make(where, row):
            rel = need(row, "image", where, FIX)
            image = root / rel
            question, options = split_lettered(need(row, "text", where, FIX), where)
            label = str(need(row, "label", where, FIX)).strip().strip("()").upper()
            category = row.get("category") or Path(rel).parent.name
            return BenchItem(id=str(row.get("question_id", rel)), image=image,
                             question=question, options=options, answer=label,
                             category=category, where=where, box=_box_for(image, where),
                             extra={"image": rel, "text": row["text"]})
        return len(rows), guarded(rows, make)
    if list(root.glob("data/test-*.parquet")):
        return _read_lmms_lab(root)
    images = sorted(p for c in CATEGORIES if (root / c).is_dir() for p in (root / c).iterdir()
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise DataError("no V* layout here", str(root), f"--data must hold {LAYOUT}")

    def make(where, image):
        ann, where = _annotation(image)
        if ann is None:
            raise DataError("image has no annotation file beside it", where, LAYOUT)
        item_id = f"{image.parent.name}/{image.stem}"
        options, label = rotate_correct_first(item_id, list(need(ann, "options", where, FIX)))
        return BenchItem(id=item_id, image=image, question=need(ann, "question", where, FIX),
                         options=options, answer=label, category=image.parent.name,
                         where=where, box=_box_for(image, where),
                         extra={"image": f"{image.parent.name}/{image.name}"})
    return len(images), guarded(((str(i), i) for i in images), make)


def _read_lmms_lab(root: Path):
    """lmms-lab/vstar-bench's parquet (what the authors read; no boxes)."""
    files = parquet_files(root, "test-*.parquet")

    def make(where, row):
        text = str(need(row, "text", where, FIX))
        question, options = split_lettered(text, where)
        return BenchItem(id=str(row.get("question_id", where)),
                         image=feature_image(need(row, "image", where, FIX), where, root),
                         question=question, options=options,
                         answer=str(need(row, "label", where, FIX)).strip().strip("()").upper(),
                         category=str(row.get("category") or "unknown"), where=where,
                         extra={"text": text})
    return parquet_count(files), guarded(parquet_rows(files), make)


def prompt(item: BenchItem) -> str:
    text = item.extra.get("text") or \
        f"{item.question}\n{bracket_lines(item.options)}\n{INSTRUCTION}"
    text = text.strip()
    if not text.endswith(INSTRUCTION):
        text += "\n" + INSTRUCTION
    return sent(text)


BENCHMARK = Benchmark("vstar", "V* Bench", "craigwu/vstar_bench", "letter", read, prompt,
                      layout=LAYOUT, default_views=("plain", "teacher"))
