"""Reading answers: the option letter a reply names, the one reader every answer goes
through (training's validation, `eval`, build-data, and the paper's benchmarks through
evaluation/benchmarks/answers.py), and what a result row keeps of its sample (pages.py).

It is the authors' first-letter rule (VisionOPD/Vision-OPD eval/judge_qwenlm.py @ c2e345f,
lines 45-68) without its slips, each departure an answer their rule misreads:
1. A letter counts only where it stands as the answer: at the start ("B", "(B)", "B.",
   "B) text"), after a preamble ("The answer is B", "Answer: B", "option B", "答案是B",
   "最佳答案为：B") or in brackets. Theirs takes the first capital anywhere, so "Answer: B"
   reads as A (from "Answer"); "C D" names no one letter and reads as None.
2. Full-width brackets and punctuation ("（B）", "B。", "Ｂ") are folded to ASCII (NFKC),
   markdown emphasis ("**B**") is dropped, a <think> block is skipped, and the text inside
   <answer>...</answer> or \\boxed{} is read when there is one.
3. A lower-case letter counts only where the options are lettered that way (MMVP's "(a)")
   and only when it is the whole answer ("a", "a.", "(a)"): "The answer is a red ball."
   names no letter (the article), while its text may still name an option.
4. The option's own text counts when it is the whole answer or the only option named.
"""

from __future__ import annotations

import re
import unicodedata

from mlx_opd.data import Sample
from mlx_opd.method.views import LETTERS

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_MARKDOWN = re.compile(r"\*\*|__|`|^#+\s*", re.M)
_PREAMBLE = re.compile(
    r"^(?:(?:so|thus|therefore|hence),?\s+)?(?:the\s+)?(?:final\s+|correct\s+|best\s+|right\s+)?"
    r"(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*"
    r"|^(?:i\s+(?:choose|select|pick)|my\s+answer\s+is)\s*[:：]?\s*"
    r"|^(?:最佳答案为|正确答案是|正确答案为|答案是|答案为|答案|选项|选择|选)\s*[:：]?\s*", re.I)
_UPPER_START = re.compile(r"^[(\[]?([A-Z])[)\]]?(?=$|[.,:;!?)\]]|\s)")
_BRACKETED = re.compile(r"[(\[]([A-Z])[)\]]")
_LOWER_WHOLE = re.compile(r"^[(\[]?([a-z])[)\]]?[.:]?$")
_LOWER_BRACKET_START = re.compile(r"^\(([a-z])\)")


def parse_answer(text: str, options) -> str | None:
    """The option letter a free-form answer names, or None: the letter reader (rules 1-4
    above) with capital letters only. The toy's plain letters ("B") are its first case."""
    return parse_letter(text, options)


def clean(text: str) -> str:
    """The answer part of a reply, with full-width forms folded and markdown dropped."""
    t = _THINK.sub("", text or "")
    if "</think>" in t:  # a reply that starts inside the think block
        t = t.rsplit("</think>", 1)[1]
    tags = _ANSWER_TAG.findall(t)
    if tags:
        t = tags[-1]
    boxed = _BOXED.findall(t)
    if boxed:
        t = boxed[-1]
    t = unicodedata.normalize("NFKC", t).replace("。", ".").replace("、", ",")
    return " ".join(_MARKDOWN.sub("", t).split())


def strip_preamble(t: str) -> str:
    """'The answer is B' -> 'B'; repeated preambles too ('Answer: the answer is B')."""
    for _ in range(3):
        new = _PREAMBLE.sub("", t, count=1).strip()
        if new == t:
            break
        t = new
    return t


def norm_text(s: str) -> str:
    return re.sub(r"[\s.,;:!?\"'()]+", " ", s.lower()).strip()


def _by_option_text(t: str, options) -> int | None:
    if not options:
        return None
    said = norm_text(t)
    texts = [norm_text(str(o)) for o in options]
    exact = [i for i, o in enumerate(texts) if o and o == said]
    if len(exact) == 1:
        return exact[0]
    named = [i for i, o in enumerate(texts) if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", said)]
    # an option contained in another one ("red" in "red ball") counts once, as the longer
    named = [i for i in named if not any(j != i and texts[i] in texts[j] for j in named)]
    return named[0] if len(named) == 1 else None


def parse_letter(text: str, options, lower_letters: bool = False) -> str | None:
    """The option letter a reply names, or None (see the module's rules 1-4)."""
    n = len(options) if options else 5
    allowed = LETTERS[:n]
    t = strip_preamble(clean(text))
    m = _UPPER_START.match(t)
    if m and m.group(1) in allowed:
        rest = t[m.end():]
        # "B", "B.", "B) blue", "(B) blue": a letter as the answer; "A red ball": words
        if not rest or not rest[0].isspace() or t[0] in "([" or \
                (options and _by_option_text(rest, options) == allowed.index(m.group(1))):
            return m.group(1)
    if lower_letters:
        m = _LOWER_WHOLE.match(t) or _LOWER_BRACKET_START.match(t)
        if m and m.group(1).upper() in allowed:
            return m.group(1).upper()
    found = {x for x in _BRACKETED.findall(t) if x in allowed}
    if len(found) == 1:
        return found.pop()
    i = _by_option_text(t, options)
    return allowed[i] if i is not None else None


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
