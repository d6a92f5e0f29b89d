"""HR-Bench 4K and 8K (800 questions each; Wang et al., "Divide, Conquer and Combine: A
Training-Free Framework for High-Resolution Image Perception in MLLMs"). Hub:
DreamMr/HR-Bench. Published layout: hr_bench_4k.parquet and hr_bench_8k.parquet (also .tsv)
with columns index (int), question, answer (letter), category ("single" = fine-grained
single-instance, "cross" = cross-instance perception), A, B, C, D (option texts),
cycle_category, image (the JPEG as base64 text). Dataset card: features index int64,
question/answer/category/A/B/C/D/cycle_category/image string.

Prompt (paper, Appendix B): `{question} Select from the following choices.\\n{options}`,
options as "A. text" lines.
"""

from __future__ import annotations

from pathlib import Path

from ..data import need
from .item import LETTERS, BenchItem, Benchmark, lettered_lines
from .source import base64_image, parquet_count, parquet_files, parquet_rows

LAYOUT = "hr_bench_4k.parquet / hr_bench_8k.parquet as on DreamMr/HR-Bench"
FIX = f"use the published layout: {LAYOUT}"


def _reader(split: str):
    def read(root: Path):
        files = parquet_files(root, f"{split}*.parquet") if root.is_dir() else [root]

        def items():
            for where, row in parquet_rows(files):
                options = tuple(str(row[c]) for c in LETTERS[:4] if row.get(c) not in (None, ""))
                yield BenchItem(id=str(need(row, "index", where, FIX)),
                                image=base64_image(need(row, "image", where, FIX), where),
                                question=str(need(row, "question", where, FIX)).strip(),
                                options=options,
                                answer=str(need(row, "answer", where, FIX)).strip().upper(),
                                category=str(row.get("category") or "all"), where=where,
                                extra={"cycle_category": row.get("cycle_category")})
        return parquet_count(files), items()
    return read


def prompt(item: BenchItem) -> str:
    return f"{item.question} Select from the following choices.\n{lettered_lines(item.options)}"


HRBENCH_4K = Benchmark("hrbench4k", "HR-Bench 4K", "DreamMr/HR-Bench", "letter",
                       _reader("hr_bench_4k"), prompt, ("hr_bench_4k*.parquet",), LAYOUT)
HRBENCH_8K = Benchmark("hrbench8k", "HR-Bench 8K", "DreamMr/HR-Bench", "letter",
                       _reader("hr_bench_8k"), prompt, ("hr_bench_8k*.parquet",), LAYOUT)
