"""What every benchmark adapter yields, and the option formats the paper's prompts use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from mlx_opd.data.images import ImageRef
from mlx_opd.evaluation.benchmarks.names import MAX_TOKENS

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ANSWER_KINDS = ("letter", "yesno", "open", "mixed")  # mixed: each item says (ZoomBench)


@dataclass(frozen=True)
class BenchItem:
    """One benchmark question. `answer` is an option letter, "yes"/"no" or free text;
    `box` (xyxy pixels of `image`) is the evidence region where the benchmark gives one
    (V*); `crop` is the benchmark's own evidence crop (ZoomBench); `kind` overrides the
    benchmark's answer kind for this item."""

    id: str
    image: ImageRef
    question: str
    answer: str
    category: str
    where: str
    options: tuple[str, ...] | None = None
    box: tuple[float, float, float, float] | None = None
    extra: dict = field(default_factory=dict)
    crop: ImageRef | None = None
    kind: str | None = None

    @property
    def has_crop_view(self) -> bool:
        return self.crop is not None or self.box is not None


@dataclass(frozen=True)
class Unreadable:
    """A row an adapter could not read: reported by id and counted; the run goes on."""

    id: str
    where: str
    reason: str


def guarded(rows, make):
    """make(where, row) for each (where, row), an Unreadable instead of a DataError."""
    from mlx_opd.run.errors import DataError

    for where, row in rows:
        try:
            yield make(where, row)
        except DataError as e:
            rid = row.get("index", row.get("id", row.get("question_id", where))) \
                if isinstance(row, dict) else where
            yield Unreadable(id=str(rid), where=where, reason=e.what)


def bracket_lines(options) -> str:
    """`(A) text` one per line, as the authors' harness writes options (eval/prepare_data.py
    @c2e345f lines 150-155 for HR-Bench; V* and CV-Bench carry them so in their text)."""
    return "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))


def sent(query: str) -> str:
    """What the authors' harness sends of a prompt: the <image> marker removed and the
    text stripped (eval/infer.py @c2e345f line 200); so MME-RealWorld's "The best answer
    is: " reaches the model without its trailing space."""
    return query.replace("<image>", "").strip()


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
    max_tokens: int = MAX_TOKENS  # names.py says why
    lower_letters: bool = False                     # options lettered (a), (b) (MMVP)
    default_views: tuple[str, ...] = ("plain",)
    # benchmarks published as several hub repos: (folder name, hub id) for each
    hub_parts: tuple[tuple[str, str], ...] = ()
