"""POPE (9,000 yes/no questions; Li et al., "Evaluating Object Hallucination in Large
Vision-Language Models"). Hub: lmms-lab/POPE. Published layout: data/test-*.parquet with
columns id, question_id, question, answer ("yes"/"no"), image_source, image (Image feature:
{bytes, path}), category (adversarial, popular, random). Besides accuracy we report the
benchmark's usual precision, recall, F1 and yes-ratio ("yes" is the positive class).

Prompt (paper, Appendix B): `{question}\\nAnswer the question using a single word or phrase.`
"""

from __future__ import annotations

from pathlib import Path

from ..data import need
from .item import BenchItem, Benchmark
from .source import feature_image, parquet_count, parquet_files, parquet_rows

LAYOUT = "data/test-*.parquet as on lmms-lab/POPE"
INSTRUCTION = "Answer the question using a single word or phrase."
FIX = f"use the published layout: {LAYOUT}"


def read(root: Path):
    files = parquet_files(root)
    base = root if root.is_dir() else root.parent

    def items():
        for where, row in parquet_rows(files):
            yield BenchItem(id=str(need(row, "question_id", where, FIX)),
                            image=feature_image(need(row, "image", where, FIX), where, base),
                            question=str(need(row, "question", where, FIX)).strip(),
                            answer=str(need(row, "answer", where, FIX)).strip().lower(),
                            category=str(row.get("category") or "all"), where=where,
                            extra={"image_source": row.get("image_source")})
    return parquet_count(files), items()


def prompt(item: BenchItem) -> str:
    return f"{item.question}\n{INSTRUCTION}"


BENCHMARK = Benchmark("pope", "POPE", "lmms-lab/POPE", "yesno", read, prompt, layout=LAYOUT)
