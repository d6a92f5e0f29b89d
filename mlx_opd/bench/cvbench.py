"""CV-Bench (2,638 questions; Tong et al., "Cambrian-1"). Hub: nyu-visionx/CV-Bench.
Published layout: test_2d.parquet and test_3d.parquet (and a combined test.parquet in some
revisions; we read the 2d/3d files when present so rows are not counted twice) with columns
idx, type ("2D"/"3D"), task (Count, Relation, Depth, Distance), image (Image feature:
{bytes, path}), question, choices (list of option texts), answer ("(A)"), prompt, filename,
source (ADE20K, COCO, Omni3D), ... The benchmark's own score averages 2D (mean of its ADE20K
and COCO accuracies) and 3D; we report it beside per-question accuracy.

Prompt (paper, Appendix B): `{question} Select from the following choices.\\n{options}`,
options as "A. text" lines.
"""

from __future__ import annotations

from pathlib import Path

from ..data import need
from .item import BenchItem, Benchmark, lettered_lines
from .source import feature_image, parquet_count, parquet_files, parquet_rows

LAYOUT = "test_2d.parquet and test_3d.parquet as on nyu-visionx/CV-Bench"
FIX = f"use the published layout: {LAYOUT}"


def read(root: Path):
    files = parquet_files(root, "test_[23]d.parquet") if root.is_dir() and \
        list(root.glob("**/test_[23]d.parquet")) else parquet_files(root)
    base = root if root.is_dir() else root.parent

    def items():
        for where, row in parquet_rows(files):
            yield BenchItem(id=f"{row.get('type', '')}-{need(row, 'idx', where, FIX)}",
                            image=feature_image(need(row, "image", where, FIX), where, base),
                            question=str(need(row, "question", where, FIX)).strip(),
                            options=tuple(str(c) for c in need(row, "choices", where, FIX)),
                            answer=str(need(row, "answer", where, FIX)).strip().strip("()").upper(),
                            category=str(row.get("task") or "all"), where=where,
                            extra={"type": row.get("type"), "source": row.get("source")})
    return parquet_count(files), items()


def prompt(item: BenchItem) -> str:
    return f"{item.question} Select from the following choices.\n{lettered_lines(item.options)}"


BENCHMARK = Benchmark("cvbench", "CV-Bench", "nyu-visionx/CV-Bench", "letter", read, prompt,
                      ("test_2d.parquet", "test_3d.parquet"), LAYOUT)
