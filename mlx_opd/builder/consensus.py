"""Consensus: the crop answered k times; is the item's answer what the crop says?

ZwZ answers each crop 8 times (temperature 0.7) and keeps items whose most common answer
reaches 0.75 agreement; that answer is the label (inclusionAI/Zooming-without-Zooming
data_synthesis/create_answers.py:287-320, 573-616 @fdc0ba1). Here the k answers are option
letters of the multiple-choice item (no judge model is needed to group free-form answers)
and the majority must also be the written answer's letter; for a template question
(no written answer) the majority becomes the answer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Consensus:
    majority: str | None     # the most common letter (None: no answer parsed)
    agreement: float         # its share of all k answers (unparsed answers count against)
    keep: bool
    reason: str              # why dropped ("" when kept)


def consensus(letters: list[str | None], expected: str | None,
              min_agreement: float = 0.75) -> Consensus:
    """Agreement of the crop's k answers. Ties go to the first letter in A, B, ... order
    (deterministic). Keep when agreement >= min_agreement and, if the item has a written
    answer, the majority is its letter."""
    k = len(letters)
    counts = Counter(x for x in letters if x is not None)
    if not k or not counts:
        return Consensus(None, 0.0, False, f"crop answers unreadable: {k} of {k}")
    top = max(counts.values())
    majority = min(x for x, c in counts.items() if c == top)
    agreement = top / k
    if agreement < min_agreement - 1e-12:
        return Consensus(majority, agreement, False,
                         f"low crop agreement: {top}/{k} < {min_agreement}")
    if expected is not None and majority != expected:
        return Consensus(majority, agreement, False,
                         f"crop disagrees with the written answer: {majority} vs {expected}")
    return Consensus(majority, agreement, True, "")
