"""Rule-based answer extraction: an option letter or yes/no from free text, or None.

The authors judge answers with an LLM (gpt-oss-120b); on a Mac we extract with rules and
count what they cannot read (`unparsed`) instead of guessing. `judge.py` optionally maps
the unparsed ones with a local model, reported separately.
"""

from __future__ import annotations

import re

from ..evaluate import parse_answer

_LOWER_PAREN = re.compile(r"^\s*\(([a-z])\)", re.IGNORECASE)
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_letter(text: str, options) -> str | None:
    """"B", "(B)", "B.", "Answer: B", the option's text, and MMVP's "(b)"."""
    got = parse_answer(text, options)
    if got is not None:
        return got
    m = _LOWER_PAREN.match(text)
    n = len(options or ()) or 4
    if m and ord(m.group(1).upper()) - 65 < n:
        return m.group(1).upper()
    return None


def parse_yes_no(text: str) -> str | None:
    """"yes"/"no" when the answer names exactly one of them ("Yes, there is ..." too);
    None when it names both or neither."""
    kinds = {w.lower() for w in _YES_NO.findall(text)}
    return kinds.pop() if len(kinds) == 1 else None


def parse(kind: str, text: str, options) -> str | None:
    return parse_yes_no(text) if kind == "yesno" else parse_letter(text, options)
