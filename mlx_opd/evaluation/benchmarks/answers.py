"""Reading a model's answer as the authors' harness reads it, without its slips.

The authors (VisionOPD/Vision-OPD eval/judge_qwenlm.py @ c2e345f) take the text inside
<answer>...</answer> (lines 108-116), then try, in order: POPE's yes/no rule (71-86),
MMVP's (a)/(b) rule (89-99), `mathruler.grade_answer` (their grader, on PyPI), a
first-letter rule for the multiple-choice benchmarks (45-68), and an LLM judge for the
rest. We follow that order with these departures, each one an answer their rules misread:
1-4. Letters: the one letter reader, method/answers.py (its docstring lists them).
5. POPE: a leading yes/no decides ("Yes, there is a car but no truck" is yes); otherwise
   exactly one of the two words must appear.
Free-form answers (ZoomBench open questions, VisualProbe) are equivalent to the gold when
mathruler says so, after the same clean-up. What the rules cannot read stays `None`
(counted as unparsed); `--judge` may look at those, reported separately.
"""

from __future__ import annotations

import re

# rules 1-4 (the letter reader every answer goes through) live in method/answers.py
from mlx_opd.method.answers import clean, norm_text, parse_letter, strip_preamble

_YES_NO = re.compile(r"\b(yes|no)\b", re.I)


def parse_yes_no(text: str) -> str | None:
    """"yes"/"no": a leading one decides, else exactly one of them must be named."""
    t = strip_preamble(clean(text)).lower()
    m = re.match(r"^(yes|no)\b", t)
    if m:
        return m.group(1)
    kinds = {w.lower() for w in _YES_NO.findall(t)}
    return kinds.pop() if len(kinds) == 1 else None


def equivalent(said: str, gold: str) -> bool:
    """Free-form equivalence: mathruler's grade_answer on the cleaned answer (the authors'
    grader: normalised strings, numbers, fractions, sympy equality)."""
    from mathruler.grader import grade_answer

    t = strip_preamble(clean(said)).rstrip(".")
    return bool(t) and (grade_answer(t, gold) or norm_text(t) == norm_text(gold))


def parse(kind: str, text: str, options, lower_letters: bool = False) -> str | None:
    """What the rules read: a letter, "yes"/"no", or (open) the cleaned answer text."""
    if kind == "yesno":
        return parse_yes_no(text)
    if kind == "open":
        return strip_preamble(clean(text)).rstrip(".") or None
    return parse_letter(text, options, lower_letters)


def grade(kind: str, text: str, gold: str, options=None, lower_letters: bool = False
          ) -> tuple[str | None, bool]:
    """(what the rules read, whether it is right). A letter question whose reply names no
    letter is still right when mathruler finds the reply equal to the gold (as theirs)."""
    parsed = parse(kind, text, options, lower_letters)
    if kind == "open":
        return parsed, parsed is not None and equivalent(parsed, gold)
    if parsed is None and kind == "letter" and equivalent(text, gold):
        parsed = gold
    return parsed, parsed is not None and parsed == gold
