"""Reading a model's answer as the authors' harness reads it, without its slips.

The authors (VisionOPD/Vision-OPD eval/judge_qwenlm.py @ c2e345f) take the text inside
<answer>...</answer> (lines 108-116), then try, in order: POPE's yes/no rule (71-86),
MMVP's (a)/(b) rule (89-99), `mathruler.grade_answer` (their grader, on PyPI), a
first-letter rule for the multiple-choice benchmarks (45-68), and an LLM judge for the
rest. We follow that order with these departures, each one an answer their rules misread:
1. The letter rule reads a letter only where it stands as the answer: at the start
   ("B", "(B)", "B.", "B) text"), after a preamble ("The answer is B", "Answer: B",
   "答案是B", "最佳答案为：B") or in brackets. Theirs takes the first capital anywhere, so
   "Answer: B" reads as A (from "Answer").
2. Full-width brackets and punctuation ("（B）", "B。", "Ｂ") are folded to ASCII (NFKC),
   markdown emphasis ("**B**") is dropped, and a <think> block is skipped.
3. A lower-case letter counts only where the options are lettered that way (MMVP's "(a)")
   and only when it is the whole answer ("a", "a.", "(a)"): "The answer is a red ball."
   names no letter (the article), while its text may still name an option.
4. The option's own text counts when it is the whole answer or the only option named.
5. POPE: a leading yes/no decides ("Yes, there is a car but no truck" is yes); otherwise
   exactly one of the two words must appear.
Free-form answers (ZoomBench open questions, VisualProbe) are equivalent to the gold when
mathruler says so, after the same clean-up. What the rules cannot read stays `None`
(counted as unparsed); `--judge` may look at those, reported separately.
"""

from __future__ import annotations

import re
import unicodedata

from mlx_opd.evaluation.benchmarks.item import LETTERS

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
_YES_NO = re.compile(r"\b(yes|no)\b", re.I)


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


def _norm_text(s: str) -> str:
    return re.sub(r"[\s.,;:!?\"'()]+", " ", s.lower()).strip()


def _by_option_text(t: str, options) -> int | None:
    if not options:
        return None
    said = _norm_text(t)
    texts = [_norm_text(str(o)) for o in options]
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
    return bool(t) and (grade_answer(t, gold) or _norm_text(t) == _norm_text(gold))


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
