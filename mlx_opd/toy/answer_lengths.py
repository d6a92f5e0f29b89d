"""A length-varying rollout workload: rows that stop at known, varied lengths.

Random-weight replicas almost never sample EOS, so every row runs to max_tokens and a
benchmark never sees what a real model does: answers from one letter to hundreds of
tokens. `ForcedLengths` draws each row's answer length from a stated distribution and
forces it with a logits processor: EOS is blocked before the row's length and forced at
it. The same lengths serve both engines: `__call__` is the batched form our sampler
takes (rollout.sample_prompts(processor=...)), `for_row` the per-row form mlx-vlm's
BatchGenerator and batch_generate take (a callable (tokens, logits) -> logits).

The distribution (`draw_lengths`), as a VLM answering multiple-choice and short-answer
questions with and without reasoning, the Vision-OPD training data's kind:
- with probability `short_frac` (0.75) a direct answer: 2..6 tokens (a letter or a word,
  perhaps a full stop, then EOS), uniform;
- otherwise a reasoned answer: uniform between max_tokens // 8 and max_tokens, so the
  longest rows of a step reach the cap, as the authors' 512- and 1024-token caps are
  reached by some answers (docs/design/method.md).
A length above max_tokens (`fixed`) never forces EOS: every row runs to max_tokens, the
fixed-length workload.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

BLOCK = -1e9  # added to a logit the row may not take (far below any real logit)


def draw_lengths(rows: int, max_tokens: int, seed: int = 0, short_frac: float = 0.75
                 ) -> list[int]:
    """Each row's answer length in tokens, EOS included (see the module docstring)."""
    rng = np.random.default_rng(seed)
    short = rng.integers(2, 7, size=rows)
    long = rng.integers(max(max_tokens // 8, 7), max_tokens + 1, size=rows)
    pick = rng.random(rows) < short_frac
    return [int(min(max_tokens, x)) for x in np.where(pick, short, long)]


def fixed_lengths(rows: int, max_tokens: int) -> list[int]:
    """Every row runs to max_tokens (no EOS forced or allowed)."""
    return [max_tokens + 1] * rows


@dataclass
class ForcedLengths:
    """Row r stops after exactly lengths[r] tokens, its last one eos[0]; no other EOS id
    (a model may have several) is allowed before."""

    lengths: list[int]
    eos: tuple[int, ...]

    def bias(self, step: mx.array, length: mx.array, vocab: int) -> mx.array:
        """[B, V] additive bias at decode step `step` (0-based) for rows of `length`."""
        force = (step + 1 == length)[:, None]
        ids = mx.arange(vocab)[None, :]
        is_eos = (ids[..., None] == mx.array(self.eos)).any(-1)
        blocked = mx.where(force, ids != self.eos[0], is_eos)  # forced: all but EOS
        return mx.where(blocked, BLOCK, 0.0)

    def __call__(self, logits: mx.array, pos: mx.array, rows: mx.array) -> mx.array:
        """The batched form: slot i is global row rows[i] at decode position pos[i]."""
        length = mx.array(self.lengths, dtype=mx.int32)[rows]
        return logits + self.bias(pos, length, logits.shape[-1]).astype(logits.dtype)

    def for_row(self, row: int) -> "_RowProcessor":
        return _RowProcessor(self, row)


@dataclass
class _RowProcessor:
    """One row's processor in mlx-vlm's form: called once per generated token, in order
    (the first call is the prompt's last position), so it counts its own steps."""

    owner: ForcedLengths
    row: int
    step: int = 0

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        length = mx.array([self.owner.lengths[self.row]], dtype=mx.int32)
        bias = self.owner.bias(mx.array([self.step], dtype=mx.int32), length, logits.shape[-1])
        self.step += 1
        return logits + bias.astype(logits.dtype)

    def clone(self) -> "_RowProcessor":
        return _RowProcessor(self.owner, self.row, self.step)
