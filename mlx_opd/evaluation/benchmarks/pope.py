"""POPE (9,000 yes/no questions; Li et al., "Evaluating Object Hallucination in Large
Vision-Language Models"). Hub: lmms-lab/POPE. The repo holds two configs with the same
questions: `default` (data/test-*.parquet, 9,000 rows: the one the authors score,
VisionOPD/Vision-OPD eval/prepare_data.py @c2e345f lines 277-283) and `Full`
(Full/{adversarial,popular,random}-*.parquet). Only the default config is read. Columns:
id, question_id, question, answer ("yes"/"no"), image_source, image (Image feature:
{bytes, path}), category (adversarial, popular, random). question_id repeats across the
three categories, so an item's id is "category/question_id".

Prompt (lines 285-300): the question stripped + "\\nAnswer the question using a single word
or phrase." (not added twice). Besides accuracy: precision, recall, F1 ("yes" positive;
an unreadable answer to a "no" question counts as a false positive, as theirs) and the
share of answers that say yes.
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

LAYOUT = "data/test-*.parquet (the default config) as on lmms-lab/POPE"
INSTRUCTION = "Answer the question using a single word or phrase."
FIX = f"use the published layout: {LAYOUT}"


def files_of(root: Path) -> list[Path]:
    if root.is_dir() and list(root.glob("data/test-*.parquet")):
        return parquet_files(root / "data", "test-*.parquet")
    return parquet_files(root)


def read(root: Path):
    files = files_of(root)
    base = root if root.is_dir() else root.parent

    def make(where, row):
        category = str(row.get("category") or "all")
        return BenchItem(id=f"{category}/{need(row, 'question_id', where, FIX)}",
                         image=feature_image(need(row, "image", where, FIX), where, base),
                         question=str(need(row, "question", where, FIX)).strip(),
                         answer=str(need(row, "answer", where, FIX)).strip().lower(),
                         category=category, where=where,
                         extra={"image_source": row.get("image_source")})
    return parquet_count(files), guarded(parquet_rows(files), make)


def prompt(item: BenchItem) -> str:
    if item.question.endswith(INSTRUCTION):
        return sent(item.question)
    return sent(f"{item.question}\n{INSTRUCTION}")


BENCHMARK = Benchmark("pope", "POPE", "lmms-lab/POPE", "yesno", read, prompt,
                      allow_patterns=("data/test-*.parquet",), layout=LAYOUT)
