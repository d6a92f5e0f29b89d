"""MME-RealWorld (Zhang et al., "MME-RealWorld: Could Your Multimodal LLM Challenge
High-Resolution Real-World Scenarios that are Difficult for Humans?"): the full English
set (23,609; the default, as the authors' `mme-realworld`), `--variant lite` (1,919) and
`--variant cn` (5,462). Hubs as the authors' harness reads them (VisionOPD/Vision-OPD
eval/prepare_data.py @c2e345f lines 429-447): yifanzhang114/MME-RealWorld-Lmms-eval,
-lite-lmms-eval and -CN-Lmms-eval. Published layout: data/*.parquet with columns index
(int), question, "multi-choice options" (a list of strings that already carry their
letter, "(A) text"; CN uses full-width brackets "（A）"), answer (letter), category (e.g.
"Perception/Autonomous_Driving"), l2-category, bytes (the image as base64 text).

Prompt as their `_build_mme_realworld_query` (lines 184-200): the question stripped, then
" The choices are listed below:\\n", the non-empty options stripped one per line, then
"\\nSelect the best answer ... of the correct option.\\nThe best answer is: " (CN: " 选项如下所示:
\\n" ... "最佳答案为： "); infer.py line 200 strips the text before sending, so the trailing
space never reaches the model (`item.sent`). Headline: pooled accuracy (theirs).
"""

from __future__ import annotations

import re
from pathlib import Path

from mlx_opd.data import need
from mlx_opd.evaluation.benchmarks.item import BenchItem, Benchmark, guarded, sent
from mlx_opd.evaluation.benchmarks.source import (
    base64_image,
    parquet_count,
    parquet_files,
    parquet_rows,
)

LAYOUT = ("data/*.parquet as on yifanzhang114/MME-RealWorld-Lmms-eval (columns index, "
          "question, multi-choice options, answer, category, l2-category, bytes)")
FIX = f"use the published layout: {LAYOUT}"
OPTIONS = "multi-choice options"
EN_HEAD = " The choices are listed below:\n"
EN_TAIL = ("\nSelect the best answer to the above multiple-choice question based on the image. "
           "Respond with only the letter (A, B, C, D, or E) of the correct option.\n"
           "The best answer is: ")
CN_HEAD = " 选项如下所示:\n"
CN_TAIL = "\n根据图像选择上述多项选择题的最佳答案。只需回答正确选项的字母（A, B, C, D 或 E）。\n最佳答案为： "
_LETTER_PREFIX = re.compile(r"^\s*[（(]\s*[A-Z]\s*[)）]\s*")


def _index(value, where: str) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return str(value)


def read(root: Path):
    files = parquet_files(root)

    def make(where, row):
        raw = tuple(s for s in (str(o).strip() for o in need(row, OPTIONS, where, FIX)) if s)
        return BenchItem(id=_index(need(row, "index", where, FIX), where),
                         image=base64_image(need(row, "bytes", where, FIX), where),
                         question=str(need(row, "question", where, FIX)).strip(),
                         options=tuple(_LETTER_PREFIX.sub("", o) for o in raw),
                         answer=str(need(row, "answer", where, FIX)).strip().strip("()").upper(),
                         category=str(row.get("category") or "all"), where=where,
                         extra={"raw_options": raw, "task": row.get("l2-category")})
    return parquet_count(files), guarded(parquet_rows(files), make)


def _prompt(head: str, tail: str):
    def prompt(item: BenchItem) -> str:
        raw = item.extra["raw_options"]
        if not raw:
            return sent(item.question)
        return sent(item.question + head + "\n".join(raw) + tail)
    return prompt


prompt_en, prompt_cn = _prompt(EN_HEAD, EN_TAIL), _prompt(CN_HEAD, CN_TAIL)
MME_REALWORLD = Benchmark("mme-realworld", "MME-RealWorld (EN)",
                          "yifanzhang114/MME-RealWorld-Lmms-eval", "letter", read, prompt_en,
                          layout=LAYOUT)
MME_REALWORLD_LITE = Benchmark("mme-realworld", "MME-RealWorld Lite (EN)",
                               "yifanzhang114/MME-RealWorld-lite-lmms-eval", "letter", read,
                               prompt_en, layout=LAYOUT)
MME_REALWORLD_CN = Benchmark("mme-realworld", "MME-RealWorld (CN)",
                             "yifanzhang114/MME-RealWorld-CN-Lmms-eval", "letter", read,
                             prompt_cn, layout=LAYOUT)
