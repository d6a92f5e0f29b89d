"""CV-Bench (2,638 questions; Tong et al., "Cambrian-1"). Hub: nyu-visionx/CV-Bench.
Published layout: test_2d.parquet and test_3d.parquet (and a combined test.parquet in some
revisions; we read the 2d/3d files when present so rows are not counted twice) with columns
idx, type ("2D"/"3D"), task (Count, Relation, Depth, Distance), image (Image feature:
{bytes, path}), question, choices (list of option texts), answer ("(A)"), prompt, filename,
source (ADE20K, COCO, Omni3D), ...

Prompt: the row's own `prompt` field, stripped, as the authors' harness sends it
(VisionOPD/Vision-OPD eval/prepare_data.py @c2e345f line 349). Headline (`cvbench_score`):
the authors' (accuracy on 2D, ADE20K and COCO pooled, + accuracy on 3D) / 2 (cal_acc.py);
the Cambrian paper's formula, 2D as the mean of the ADE20K and COCO accuracies, is reported
beside it (`cvbench_cambrian`).
"""

from __future__ import annotations

from pathlib import Path

from mlx_opd.data import need
from mlx_opd.evaluation.benchmarks.item import BenchItem, Benchmark, guarded, sent
from mlx_opd.evaluation.benchmarks.source import (
    feature_image,
    parquet_count,
    parquet_files,
    parquet_rows,
)

LAYOUT = "test_2d.parquet and test_3d.parquet as on nyu-visionx/CV-Bench"
FIX = f"use the published layout: {LAYOUT}"


def read(root: Path):
    files = parquet_files(root, "test_[23]d.parquet") if root.is_dir() and \
        list(root.glob("**/test_[23]d.parquet")) else parquet_files(root)
    base = root if root.is_dir() else root.parent

    def make(where, row):
        return BenchItem(id=f"{row.get('type', '')}-{need(row, 'idx', where, FIX)}",
                         image=feature_image(need(row, "image", where, FIX), where, base),
                         question=str(row.get("question") or "").strip(),
                         options=tuple(str(c) for c in row.get("choices") or ()),
                         answer=str(need(row, "answer", where, FIX)).strip().strip("()").upper(),
                         category=str(row.get("task") or "all"), where=where,
                         extra={"type": row.get("type"), "source": row.get("source"),
                                "prompt": str(need(row, "prompt", where, FIX))})
    return parquet_count(files), guarded(parquet_rows(files), make)


def prompt(item: BenchItem) -> str:
    return sent(item.extra["prompt"])


BENCHMARK = Benchmark("cvbench", "CV-Bench", "nyu-visionx/CV-Bench", "letter", read, prompt,
                      ("test_2d.parquet", "test_3d.parquet"), LAYOUT)
