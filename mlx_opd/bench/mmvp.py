"""MMVP (300 questions in 150 image pairs; Tong et al., "Eyes Wide Shut? Exploring the
Visual Shortcomings of Multimodal LLMs"). Hub: MMVP/MMVP. Published layout: Questions.csv
with columns Index, Question, Options ("(a) Open (b) Closed"), Correct Answer ("(a)"), and
"MMVP Images/{Index}.jpg". Questions 1-2, 3-4, ... form pairs; the benchmark's headline
number is pair accuracy (both questions of a pair right), reported beside per-question
accuracy.

Prompt (paper, Appendix B, as the MMVP authors' script): `{question} {options}` with the
options string as published ("(a) ... (b) ..."); answers are the lower-case letters.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..data import need
from ..errors import DataError
from .item import BenchItem, Benchmark
from .source import csv_rows

LAYOUT = "Questions.csv and 'MMVP Images/N.jpg', as on MMVP/MMVP"
_OPTION = re.compile(r"\(([a-z])\)\s*(.*?)\s*(?=\([a-z]\)|$)", re.IGNORECASE)
FIX = f"use the published layout: {LAYOUT}"


def parse_options(raw: str) -> tuple[str, ...]:
    return tuple(text for _, text in _OPTION.findall(raw))


def read(root: Path):
    csv_path = root if root.is_file() else root / "Questions.csv"
    if not csv_path.exists():
        raise DataError("no Questions.csv", str(root), f"--data must hold {LAYOUT}")
    images = csv_path.parent / "MMVP Images"
    rows = csv_rows(csv_path)

    def items():
        for where, row in rows:
            index = str(need(row, "Index", where, FIX)).strip()
            raw = str(need(row, "Options", where, FIX))
            answer = str(need(row, "Correct Answer", where, FIX)).strip().strip("()").upper()
            yield BenchItem(id=index, image=images / f"{index}.jpg",
                            question=str(need(row, "Question", where, FIX)).strip(),
                            options=parse_options(raw), answer=answer, category="all",
                            where=where, extra={"raw_options": raw.strip(),
                                                "pair": (int(index) - 1) // 2})
    return len(rows), items()


def prompt(item: BenchItem) -> str:
    return f"{item.question} {item.extra['raw_options']}"


BENCHMARK = Benchmark("mmvp", "MMVP", "MMVP/MMVP", "letter", read, prompt, layout=LAYOUT)
