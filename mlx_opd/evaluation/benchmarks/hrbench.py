"""HR-Bench 4K and 8K (800 questions each; Wang et al., "Divide, Conquer and Combine: A
Training-Free Framework for High-Resolution Image Perception in MLLMs"). Hub:
DreamMr/HR-Bench. Published layout: hr_bench_4k.parquet and hr_bench_8k.parquet (also .tsv)
with columns index (int), question, answer (letter), category ("single" = fine-grained
single-instance, "cross" = cross-instance perception), A, B, C, D (option texts),
cycle_category, image (the JPEG as base64 text). Dataset card: features index int64,
question/answer/category/A/B/C/D/cycle_category/image string.

Prompt as the authors' harness sends it (VisionOPD/Vision-OPD eval/prepare_data.py
@c2e345f lines 148-157): the question stripped, " Select from the following choices.\\n",
then "(A) text" lines, each option stripped and empty ones left out. Headline: the pooled
accuracy over the 800 rows (theirs, cal_acc.py); the benchmark's own score, the mean of
the per-`cycle_category` accuracies, is reported beside it (`hrbench_cycle_mean`).
"""

from __future__ import annotations

from pathlib import Path

from mlx_opd.data import need
from mlx_opd.evaluation.benchmarks.item import LETTERS, BenchItem, Benchmark, guarded, sent
from mlx_opd.evaluation.benchmarks.source import (
    base64_image,
    parquet_count,
    parquet_files,
    parquet_rows,
)

LAYOUT = "hr_bench_4k.parquet / hr_bench_8k.parquet as on DreamMr/HR-Bench"
FIX = f"use the published layout: {LAYOUT}"


def _reader(split: str):
    def read(root: Path):
        files = parquet_files(root, f"{split}*.parquet") if root.is_dir() else [root]

        def make(where, row):
            options = tuple(str(row.get(c) or "").strip() for c in LETTERS[:4])
            return BenchItem(id=str(need(row, "index", where, FIX)),
                             image=base64_image(need(row, "image", where, FIX), where),
                             question=str(need(row, "question", where, FIX)).strip(),
                             options=options,  # empty ones kept: letters stay in place
                             answer=str(need(row, "answer", where, FIX)).strip().upper(),
                             category=str(row.get("category") or "all"), where=where,
                             extra={"cycle_category": row.get("cycle_category")})
        return parquet_count(files), guarded(parquet_rows(files), make)
    return read


def prompt(item: BenchItem) -> str:
    lines = [f"({LETTERS[i]}) {o}" for i, o in enumerate(item.options or ()) if o]
    if not lines:
        return sent(item.question)
    return sent(f"{item.question} Select from the following choices.\n" + "\n".join(lines))


HRBENCH_4K = Benchmark("hrbench4k", "HR-Bench 4K", "DreamMr/HR-Bench", "letter",
                       _reader("hr_bench_4k"), prompt, ("hr_bench_4k*.parquet",), LAYOUT)
HRBENCH_8K = Benchmark("hrbench8k", "HR-Bench 8K", "DreamMr/HR-Bench", "letter",
                       _reader("hr_bench_8k"), prompt, ("hr_bench_8k*.parquet",), LAYOUT)
