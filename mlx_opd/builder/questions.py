"""Questions about one region, written from its crop alone, and the check of each.

Writing: the model sees only the zoomed crop and writes one multiple-choice question in
the region's style (colour, text, count, material, shape or state) as JSON: question,
answer, distractors. ZwZ writes questions only and takes the answer from the crop
consensus and distractors from a second call (inclusionAI/Zooming-without-Zooming
data_synthesis/create_questions.py:123-150, create_answers.py:185-280 @fdc0ba1); one call
here keeps a laptop build to one pass, and the consensus stage still has to agree with the
written answer. Validation: the model sees the full image with the box drawn and the crop,
and answers the ZwZ criteria (answerable from the crop, one correct answer in the full
image, a clear target) as `VALID: Yes/No` and `REASON: ...` (create_questions.py:241-326).
Every parser returns (value, reason): a broken answer is a drop with its reason.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from mlx_opd.builder.grounding import json_candidates
from mlx_opd.method.views import LETTERS

STYLE_ASKS = {
    "colour": "the colour of the {label}",
    "text": "text, a number or a symbol written on the {label}",
    "count": "how many parts, items or marks of one kind the {label} has",
    "material": "what the {label} is made of",
    "shape": "the shape of the {label} or of a part of it",
    "state": "the state of the {label} (open or closed, on or off, full or empty, ...)",
}


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    distractors: tuple[str, ...]
    style: str


def style_for(index: int, styles) -> str:
    """The style of a region's question: the styles in turn, region by region."""
    return styles[index % len(styles)]


def writing_prompt(label: str, style: str, distractors: int = 3) -> str:
    ask = STYLE_ASKS[style].format(label=label or "object")
    return (f"This image is a close-up of a {label or 'object'}. Write one multiple-choice "
            f"question about {ask} that can be answered from this image alone, with its "
            f"short correct answer and {distractors} plausible but wrong answers. If the "
            "image does not show it, reply []. Reply in JSON: "
            '{"question": "...", "answer": "...", "distractors": ["...", "...", "..."]}')


def parse_question(text: str, style: str, distractors: int = 3) -> tuple[Question | None, str]:
    """(Question, "") or (None, why it is unusable)."""
    values, problems = json_candidates(text)
    objs = [v for v in values if isinstance(v, dict)]
    if not objs:
        if values == [] and not problems:
            return None, "declined: the model replied []"
        return None, "unparsable question: " + (problems[0] if problems else "no JSON object")
    o = objs[0]
    q, a, d = o.get("question"), o.get("answer"), o.get("distractors")
    if not isinstance(q, str) or len(q.strip()) < 8:
        return None, "unparsable question: no question text"
    if not isinstance(a, (str, int, float)) or isinstance(a, bool) or not str(a).strip():
        return None, "unparsable question: no answer"
    if not isinstance(d, list) or not all(isinstance(x, (str, int, float)) for x in d):
        return None, "unparsable question: distractors are not a list"
    a = str(a).strip()
    seen, clean = {a.lower()}, []
    for x in (str(x).strip() for x in d):
        if x and x.lower() not in seen:
            seen.add(x.lower())
            clean.append(x)
    if len(clean) < distractors:
        return None, (f"too few distinct distractors: {len(clean)} < {distractors} "
                      "(a distractor equal to the answer does not count)")
    return Question(q.strip(), a, tuple(clean[:distractors]), style), ""


def template_question(template: str, label: str, options) -> Question:
    """A fixed question (ours: `--question`); the answer comes from the crop consensus."""
    return Question(template.format(label=label), "", tuple(options), "template")


def options_of(q: Question, seed: str) -> tuple[tuple[str, ...], str | None]:
    """(options, the answer's letter): the answer and distractors in an order seeded by
    the item (ZwZ shuffles them, create_answers.py:635-660). A template's options keep
    their order and have no letter yet (the consensus gives it)."""
    if not q.answer:
        return q.distractors, None
    opts = [q.answer, *q.distractors]
    random.Random(seed).shuffle(opts)
    return tuple(opts), LETTERS[opts.index(q.answer)]


def validation_prompt(question: str, options) -> str:
    lettered = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return ("The first image is a photo with a red box; the second is the zoomed content of "
            "the box. Check the multiple-choice question below. It is VALID only if: (1) it "
            "can be answered from the zoomed image alone; (2) it has exactly one correct "
            "option for the object in the red box; (3) it names its target clearly (no vague "
            f"'it' or 'this').\n\nQuestion: {question}\n{lettered}\n\n"
            "Reply with two lines: VALID: Yes or No, then REASON: a few words.")


_VALID = re.compile(r"VALID\**\s*[:：]\s*\**\s*(yes|no)\b", re.I)
_REASON = re.compile(r"REASON\s*[:：]\s*(.+?)(?:\n\n|\Z)", re.I | re.S)


def parse_validation(text: str) -> tuple[bool, str]:
    """(valid, reason). No readable verdict counts as invalid (ZwZ's default)."""
    m = _VALID.search(text)
    r = _REASON.search(text)
    reason = r.group(1).strip()[:160] if r else ""
    if not m:
        return False, "no VALID: Yes/No verdict in the check's answer"
    if m.group(1).lower() == "no":
        return False, "rejected by the check" + (f": {reason}" if reason else "")
    return True, reason
