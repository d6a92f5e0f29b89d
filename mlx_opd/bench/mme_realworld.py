"""MME-RealWorld (Zhang et al., "MME-RealWorld: Could Your Multimodal LLM Challenge
High-Resolution Real-World Scenarios that are Difficult for Humans?"), Lite and CN.
Hubs: yifanzhang114/MME-RealWorld-lite-lmms-eval (EN Lite, 1,919) and
yifanzhang114/MME-RealWorld-CN-Lmms-eval (CN, 5,462). Published layout: data/*.parquet with
columns index, question, "multi-choice options" (a list of strings that already carry their
letter, "(A) text"; CN uses full-width brackets "（A）"), answer (letter), category (e.g.
"Perception/Autonomous_Driving"), l2-category (task), bytes (the image as base64 text).

Prompt (paper, Appendix B; the lmms-eval task it follows): EN
`{question} The choices are listed below:\\n{options}\\nSelect the best answer to the above
multiple-choice question based on the image. Respond with only the letter (A, B, C, D, or E)
of the correct option.\\nThe best answer is:`; CN the Chinese equivalent. {options} are the
dataset's own option strings, one per line, as published (already lettered).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..data import need
from .item import BenchItem, Benchmark
from .source import base64_image, parquet_count, parquet_files, parquet_rows

LAYOUT = ("data/*.parquet as on yifanzhang114/MME-RealWorld-lite-lmms-eval (columns index, "
          "question, multi-choice options, answer, category, l2-category, bytes)")
FIX = f"use the published layout: {LAYOUT}"
OPTIONS = "multi-choice options"
EN_TAIL = ("Select the best answer to the above multiple-choice question based on the image. "
           "Respond with only the letter (A, B, C, D, or E) of the correct option.\n"
           "The best answer is:")
CN_TAIL = "根据图像选择上述多项选择题的最佳答案。只需回答正确选项的字母（A, B, C, D 或 E）。\n最佳答案为："
_LETTER_PREFIX = re.compile(r"^\s*[（(]\s*[A-Z]\s*[)）]\s*")


def read(root: Path):
    files = parquet_files(root)

    def items():
        for where, row in parquet_rows(files):
            raw = tuple(str(o) for o in need(row, OPTIONS, where, FIX))
            yield BenchItem(id=str(need(row, "index", where, FIX)),
                            image=base64_image(need(row, "bytes", where, FIX), where),
                            question=str(need(row, "question", where, FIX)),
                            options=tuple(_LETTER_PREFIX.sub("", o) for o in raw),
                            answer=str(need(row, "answer", where, FIX)).strip().strip("()").upper(),
                            category=str(row.get("category") or "all"), where=where,
                            extra={"raw_options": raw, "task": row.get("l2-category")})
    return parquet_count(files), items()


def prompt_en(item: BenchItem) -> str:
    options = "\n".join(item.extra["raw_options"])
    return f"{item.question} The choices are listed below:\n{options}\n{EN_TAIL}"


def prompt_cn(item: BenchItem) -> str:
    options = "\n".join(item.extra["raw_options"])
    return f"{item.question} 选项如下所示:\n{options}\n{CN_TAIL}"


MME_REALWORLD = Benchmark("mme-realworld", "MME-RealWorld Lite (EN)",
                          "yifanzhang114/MME-RealWorld-lite-lmms-eval", "letter", read,
                          prompt_en, layout=LAYOUT)
MME_REALWORLD_CN = Benchmark("mme-realworld", "MME-RealWorld (CN)",
                             "yifanzhang114/MME-RealWorld-CN-Lmms-eval", "letter", read,
                             prompt_cn, layout=LAYOUT)
