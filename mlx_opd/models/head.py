"""The LM head: which module it is (a Linear, a tied embedding, quantized or not), its
weight's key, applying it to hidden states, and the model with its head swapped for an
identity so that a call returns hidden states."""

from __future__ import annotations

from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn


class _Identity(nn.Module):
    def __call__(self, x):
        return x


@contextmanager
def head_as_identity(model: nn.Module):
    """Make the language model return final hidden states instead of logits.

    Every supported family ends with `embed_tokens.as_linear(h)` (tied) or `lm_head(h)`;
    we switch both to identity for the duration of the call."""
    lm = model.language_model
    tied = lm.args.tie_word_embeddings
    head = lm.get("lm_head")  # nn.Module is a dict of its children
    lm.args.tie_word_embeddings = False
    lm.lm_head = _Identity()
    lm.lm_head.train(lm.training)  # the stand-in shares the model's mode
    try:
        yield
    finally:
        lm.args.tie_word_embeddings = tied
        if head is None:
            del lm["lm_head"]
        else:
            lm.lm_head = head


def apply_head(model: nn.Module, hidden: mx.array) -> mx.array:
    """The LM head (tied or not, quantized or not) applied to hidden states."""
    lm = model.language_model
    if lm.args.tie_word_embeddings:
        return lm.model.embed_tokens.as_linear(hidden)
    return lm.lm_head(hidden)


def lm_head(model: nn.Module) -> nn.Module:
    """The LM head module: lm_head, or the input embedding when the weights are tied."""
    lm = model.language_model
    return lm.model.embed_tokens if lm.args.tie_word_embeddings else lm.lm_head


def lm_head_key(model: nn.Module) -> str:
    """The flattened parameter name of the LM head's weight (tied: the input embedding)."""
    lm = model.language_model
    return ("language_model.model.embed_tokens.weight" if lm.args.tie_word_embeddings
            else "language_model.lm_head.weight")
