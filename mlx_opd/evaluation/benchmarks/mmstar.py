"""MMStar (1,500 questions; Chen et al., "Are We on the Right Way for Evaluating Large
Vision-Language Models?"). Hub: Lin-Chen/MMStar. Published layout: mmstar.parquet with
columns index, question, image (the JPEG's raw bytes; older copies an Image feature
{bytes, path}), answer (letter), category (6 core capabilities), l2_category, meta_info
(VisionOPD/Vision-OPD eval/prepare_data.py @c2e345f lines 239-247 read the image as raw
bytes). The question field carries the options inline, in one of the layouts the rows
come in:
    "stem\\nOptions: A: x, B: y, C: z, D: w"
    "stem\\nOptions: A: Yes\\nB: No"                          (newline-separated)
    "Hint: ...\\nQuestion: ...\\nChoices:\\n(A) x\\n(B) y"      (rows from MathVista)
and 2-3 option items padded with the literal text `nan`.

Prompt: the question field stripped, verbatim (prepare_data.py line 254); the options are
only parsed out to match an answer that names an option by its text. A row whose options
cannot be parsed is still evaluated (letters are read all the same).
"""

from __future__ import annotations

import re
from pathlib import Path

from mlx_opd.data import need
from mlx_opd.evaluation.benchmarks.item import LETTERS, BenchItem, Benchmark, guarded, sent
from mlx_opd.evaluation.benchmarks.source import (
    feature_image,
    parquet_count,
    parquet_files,
    parquet_rows,
)

LAYOUT = "mmstar.parquet as on Lin-Chen/MMStar"
FIX = f"use the published layout: {LAYOUT}"
_BLOCK = re.compile(r"\n(?:Options|Choices)\s*:\s*", re.I)


def split_options(text: str) -> tuple[str, tuple[str, ...] | None]:
    """(the question part, the option texts in letter order) or (text, None)."""
    blocks = list(_BLOCK.finditer(text))
    if not blocks:
        return text, None
    head, body = text[:blocks[-1].start()], text[blocks[-1].end():]
    marks = []
    pos = 0
    for letter in LETTERS:
        pat = re.compile(rf"(?:^|,\s*|\n\s*)\(?{letter}\)?\s*[:.)]\s*" if letter != "A"
                         else rf"^\s*\(?{letter}\)?\s*[:.)]\s*")
        m = pat.search(body, pos)
        if not m:
            break
        marks.append(m)
        pos = m.end()
    if len(marks) < 2:
        return text, None
    opts = [body[m.end():(marks[i + 1].start() if i + 1 < len(marks) else len(body))]
            .strip().rstrip(",").strip() for i, m in enumerate(marks)]
    while opts and opts[-1].lower() == "nan":
        opts.pop()
    return head.strip(), tuple(opts) if len(opts) >= 2 else None


def read(root: Path):
    files = parquet_files(root)
    base = root if root.is_dir() else root.parent

    def make(where, row):
        text = str(need(row, "question", where, FIX)).strip()
        _, options = split_options(text)
        return BenchItem(id=str(need(row, "index", where, FIX)),
                         image=feature_image(need(row, "image", where, FIX), where, base),
                         question=text, options=options,
                         answer=str(need(row, "answer", where, FIX)).strip().upper(),
                         category=str(row.get("category") or "all"), where=where,
                         extra={"l2_category": row.get("l2_category")})
    return parquet_count(files), guarded(parquet_rows(files), make)


def prompt(item: BenchItem) -> str:
    return sent(item.question)


BENCHMARK = Benchmark("mmstar", "MMStar", "Lin-Chen/MMStar", "letter", read, prompt,
                      layout=LAYOUT)
