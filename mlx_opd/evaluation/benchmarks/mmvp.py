"""MMVP (300 questions in 150 image pairs; Tong et al., "Eyes Wide Shut? Exploring the
Visual Shortcomings of Multimodal LLMs"). Hub: MMVP/MMVP. Published layout: Questions.csv
with columns Index, Question, Options ("(a) Open (b) Closed"), Correct Answer ("(a)"), and
"MMVP Images/{Index}.jpg". Questions 1-2, 3-4, ... form pairs; the benchmark's headline
number is pair accuracy (both questions of a pair right), reported beside per-question
accuracy.

Prompt as the authors' harness sends it (VisionOPD/Vision-OPD eval/prepare_data.py
@c2e345f line 384): `{question} {options}`, both stripped, the options string as published
("(a) ... (b) ..."); answers are the lower-case letters (read in either case). Their
headline is per-question accuracy; pair accuracy is reported beside it. Two published
answers are known to be swapped (Index 99/100 and 279/280, noted by lmms-eval's MMVP
README), so a perfect model scores at most 296/300 = 98.7% per question (`ceiling`).
"""

from __future__ import annotations

import re
from pathlib import Path

from mlx_opd.data import need
from mlx_opd.evaluation.benchmarks.item import BenchItem, Benchmark, guarded, sent
from mlx_opd.evaluation.benchmarks.source import csv_rows
from mlx_opd.run.errors import DataError

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

    def make(where, row):
        index = str(need(row, "Index", where, FIX)).strip()
        raw = str(need(row, "Options", where, FIX))
        answer = str(need(row, "Correct Answer", where, FIX)).strip().strip("()").upper()
        return BenchItem(id=index, image=images / f"{index}.jpg",
                         question=str(need(row, "Question", where, FIX)).strip(),
                         options=parse_options(raw), answer=answer, category="all",
                         where=where, extra={"raw_options": raw.strip(),
                                             "pair": (int(index) - 1) // 2})
    return len(rows), guarded(rows, make)


def prompt(item: BenchItem) -> str:
    return sent(f"{item.question} {item.extra['raw_options']}")


SWAPPED = 4  # questions whose published answer is wrong (Index 99, 100, 279, 280)


BENCHMARK = Benchmark("mmvp", "MMVP", "MMVP/MMVP", "letter", read, prompt, layout=LAYOUT,
                      lower_letters=True)
