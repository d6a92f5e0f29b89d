"""MMStar (1,500 questions; Chen et al., "Are We on the Right Way for Evaluating Large
Vision-Language Models?"). Hub: Lin-Chen/MMStar. Published layout: mmstar.parquet with
columns index, question, image (Image feature: {bytes, path}), answer (letter), category
(6 core capabilities), l2_category, meta_info. The question field carries the options
inline: "text\\nOptions: A: x, B: y, C: z, D: w".

Prompt (paper, Appendix B): `{question}\\nOptions: {options}` with options "A: x, B: y, ..."
as the benchmark writes them, i.e. the published question field itself; we split it into
question and options (so answers can also be matched by option text) and rebuild it.
"""

from __future__ import annotations

from pathlib import Path

from ..data import need
from ..errors import DataError
from .item import LETTERS, BenchItem, Benchmark
from .source import feature_image, parquet_count, parquet_files, parquet_rows

LAYOUT = "mmstar.parquet as on Lin-Chen/MMStar"
_MARK = "\nOptions: "
FIX = f"use the published layout: {LAYOUT}"


def split_options(text: str, where: str) -> tuple[str, tuple[str, ...]]:
    """'q\\nOptions: A: x, B: y' -> ('q', ('x', 'y'))."""
    if _MARK not in text:
        raise DataError("question has no '\\nOptions: ' part", where,
                        "use the published mmstar.parquet")
    question, opts = text.rsplit(_MARK, 1)
    if not opts.startswith("A: "):
        raise DataError("options do not start with 'A: '", where, "use the published mmstar.parquet")
    # letters in order, so a ", X: " inside an option's text cannot split it
    marks, pos = [0], 0
    for letter in LETTERS[1:]:
        i = opts.find(f", {letter}: ", pos)
        if i < 0:
            break
        marks.append(i)
        pos = i + 1
    starts = [0] + [m + 2 for m in marks[1:]]
    ends = marks[1:] + [len(opts)]
    options = tuple(opts[s + 3:e] for s, e in zip(starts, ends))
    return question, options


def read(root: Path):
    files = parquet_files(root)
    base = root if root.is_dir() else root.parent

    def items():
        for where, row in parquet_rows(files):
            question, options = split_options(str(need(row, "question", where, FIX)), where)
            yield BenchItem(id=str(need(row, "index", where, FIX)),
                            image=feature_image(need(row, "image", where, FIX), where, base),
                            question=question, options=options,
                            answer=str(need(row, "answer", where, FIX)).strip().upper(),
                            category=str(row.get("category") or "all"), where=where,
                            extra={"l2_category": row.get("l2_category")})
    return parquet_count(files), items()


def prompt(item: BenchItem) -> str:
    options = ", ".join(f"{LETTERS[i]}: {o}" for i, o in enumerate(item.options))
    return f"{item.question}{_MARK}{options}"


BENCHMARK = Benchmark("mmstar", "MMStar", "Lin-Chen/MMStar", "letter", read, prompt,
                      layout=LAYOUT)
