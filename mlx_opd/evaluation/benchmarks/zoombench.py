"""ZoomBench (845 questions: 621 multiple choice, 224 open; from ZwZ, "Zooming without
Zooming", arXiv 2602.11858). Hub: inclusionAI/ZoomBench. Published layout:
data/test.parquet (about 4 GB) with columns id, query and prompt (the question text),
response and answer (the gold), image and crop_image (Image features {bytes, path}: the
full image and the benchmark's own evidence crop), a question-type column and a dimension
column (six: counting, OCR, colour, structure, material, identification). The authors'
harness reads id, query, response, image, crop_image (VisionOPD/Vision-OPD
eval/prepare_data.py @c2e345f lines 42-81); ZwZ's own converter reads prompt and answer
(inclusionAI/Zooming-without-Zooming utils/convert_benchmark.py @fdc0ba1 lines 18-47).

Prompt: the query stripped (prepare_data.py line 78). Views: `plain` is the full image,
`teacher` the benchmark's crop_image (the dual-view protocol behind the paper's Fig. 3 gap:
crop accuracy - full accuracy). Multiple-choice items are read by letter, open ones by
equivalence (mathruler); both are reported separately and together, per dimension too.
The parquet is streamed a few rows at a time, never loaded whole.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlx_opd.data import need
from mlx_opd.evaluation.benchmarks.item import BenchItem, Benchmark, guarded, sent
from mlx_opd.evaluation.benchmarks.source import (
    feature_image,
    parquet_count,
    parquet_files,
    parquet_rows,
)
from mlx_opd.run.errors import DataError

LAYOUT = "data/test.parquet as on inclusionAI/ZoomBench"
FIX = f"use the published layout: {LAYOUT}"
TYPE_COLUMNS = ("question_type", "type", "qtype", "question type")
DIMENSION_COLUMNS = ("dimension", "category", "capability", "task")
_OPTION_LINE = re.compile(r"^\s*\(?([A-F])[).:]\s*(.+?)\s*$", re.M)
_MC_WORDS = ("mc", "mcq", "multiple", "choice", "multi-choice", "multiple-choice", "select")


def _first(row: dict, names) -> str | None:
    for n in names:
        if row.get(n) not in (None, ""):
            return str(row[n])
    return None


def item_kind(qtype: str | None, gold: str, options) -> str:
    """'letter' for multiple choice, 'open' otherwise: the type column when it says,
    else a one-letter gold with lettered options in the question."""
    if qtype is not None:
        q = qtype.strip().lower()
        if any(w in q for w in _MC_WORDS):
            return "letter"
        if q:
            return "open"
    return "letter" if options and re.fullmatch(r"\(?[A-F]\)?", gold.strip()) else "open"


def read(root: Path):
    files = parquet_files(root, "test*.parquet") if root.is_dir() else [root]
    base = root if root.is_dir() else root.parent

    def make(where, row):
        query = _first(row, ("query", "prompt"))
        gold = _first(row, ("response", "answer"))
        if query is None or gold is None:
            raise DataError("row has no query/prompt or no response/answer", where, FIX)
        options = tuple(t for _, t in _OPTION_LINE.findall(query)) or None
        kind = item_kind(_first(row, TYPE_COLUMNS), gold, options)
        crop = row.get("crop_image")
        return BenchItem(id=str(row.get("id") if row.get("id") not in (None, "") else where),
                         image=feature_image(need(row, "image", where, FIX), where, base),
                         crop=feature_image(crop, where, base) if crop else None,
                         question=query.strip(), options=options if kind == "letter" else None,
                         answer=gold.strip().strip("()").upper() if kind == "letter" else gold.strip(),
                         category=_first(row, DIMENSION_COLUMNS) or "all", where=where,
                         kind=kind, extra={"question_type": "mc" if kind == "letter" else "open"})
    return parquet_count(files), guarded(parquet_rows(files), make)


def prompt(item: BenchItem) -> str:
    return sent(item.question)


BENCHMARK = Benchmark("zoombench", "ZoomBench", "inclusionAI/ZoomBench", "mixed", read, prompt,
                      allow_patterns=("data/test*.parquet",), layout=LAYOUT,
                      default_views=("plain", "teacher"))
