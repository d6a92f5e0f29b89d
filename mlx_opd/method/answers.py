"""Reading answers: the option letter a free-form answer names (the toy's and our eval's
rule; the paper's benchmarks use the authors' reader, evaluation/benchmarks/answers.py),
and what a result row keeps of its sample (pages.py shows it)."""

from __future__ import annotations

import re

from mlx_opd.data import Sample
from mlx_opd.method.views import LETTERS


def parse_answer(text: str, options) -> str | None:
    """The option letter a free-form answer names, or None. Accepts "B", "(B)", "B.",
    "B) blue", "The answer is B", "Answer: B", and the option's own text ("blue")."""
    letters = LETTERS[: len(options or [])] or "ABCD"
    t = text.strip()
    patterns = [rf"^\(?([{letters}])\)?(?:[.:,)\s]|$)",
                rf"answer\s*(?:is|:)?\s*\(?([{letters}])\)?(?:[.:,)\s]|$)",
                rf"(?:option|choice)\s*\(?([{letters}])\)?(?:[.:,)\s]|$)"]
    for p in patterns:
        m = re.search(p, t, flags=re.IGNORECASE if p != patterns[0] else 0)
        if m:
            return m.group(1).upper()
    if options:
        hits = [i for i, o in enumerate(options)
                if re.search(rf"\b{re.escape(o.strip())}\b", t, flags=re.IGNORECASE)]
        if len(hits) == 1:
            return letters[hits[0]]
    return None


def card_fields(s: Sample) -> dict:
    """What a result page shows of a sample (pages.py): its image file, box, question."""
    from pathlib import Path as _P

    return {"image": str(s.image) if isinstance(s.image, _P) else None,
            "box": list(s.box) if s.box is not None else None,
            "question": s.question, "options": list(s.options or [])}


def grade(text: str, sample: Sample) -> tuple[str | None, bool]:
    """(the letter `text` names or None, whether it is the sample's answer)."""
    got = parse_answer(text, sample.options)
    return got, bool(sample.answer) and got is not None and got == sample.answer.strip().upper()


def accuracy_by_view(right: dict[str, int], counted: dict[str, int]) -> dict:
    """`{view}_acc` for each view with counted answers, and `gap` (teacher - plain, the
    regional-to-global gap) when both are there: eval's summary and validation's record."""
    out = {f"{v}_acc": right[v] / counted[v] for v in right if counted.get(v)}
    if "plain_acc" in out and "teacher_acc" in out:
        out["gap"] = out["teacher_acc"] - out["plain_acc"]
    return out
