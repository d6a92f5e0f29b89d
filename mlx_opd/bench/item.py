"""What every benchmark adapter yields, and the option formats the paper's prompts use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..images import ImageRef

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ANSWER_KINDS = ("letter", "yesno")


@dataclass(frozen=True)
class BenchItem:
    """One benchmark question. `answer` is an option letter or "yes"/"no"; `box` (xyxy
    pixels of `image`) is the evidence region where the benchmark gives one (V*)."""

    id: str
    image: ImageRef
    question: str
    answer: str
    category: str
    where: str
    options: tuple[str, ...] | None = None
    box: tuple[float, float, float, float] | None = None
    extra: dict = field(default_factory=dict)


def lettered_lines(options) -> str:
    """`A. text` one per line: the paper's {options} (method.md, Appendix B)."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


@dataclass(frozen=True)
class Benchmark:
    """A benchmark adapter: where its data lives, how rows become items, how an item
    becomes the paper's prompt. `read(root)` returns (number of rows, iterator)."""

    name: str
    title: str
    hub_id: str
    answer_kind: str
    read: Callable[[Path], tuple[int, Iterator[BenchItem]]]
    prompt: Callable[[BenchItem], str]
    allow_patterns: tuple[str, ...] | None = None  # files to fetch from the hub
    layout: str = ""                                # one line: what a local folder holds
    max_tokens: int = 16                            # the answer is a letter or a word
