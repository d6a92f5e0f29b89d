"""Shared-prefix scoring: the prompt runs once, its n responses continue from it.

A step scores n responses of one prompt. Repeating the prompt in every row costs about
n x (P + R) tokens of compute and activation memory (P ~ 1,000-2,000 image tokens, R a
few dozen); running the prompt once, batch 1, and the n responses as a continuation of
its cache costs P + n x R. The two are the same computation:
    - each response token attends to the prompt's keys/values (attention layers) or
      starts from the prompt's final recurrent and convolution state (qwen3_5's
      gated-delta layers), exactly as in its own duplicated row;
    - the prompt's positions, M-RoPE layout and deepstack features are computed once,
      in the prefix call; the continuation carries the prompt's rope delta;
    - under a gradient, the prompt's keys/values/states are broadcast to the n rows, so
      the prefix receives the SUM of the n branches' gradients, which is what the n
      duplicated prompts receive together.
The duplicated path (models.response_hidden) stays as the reference beside this one
(`score.shared_prefix: false`); tests compare the two, loss and LoRA gradients, for
every family.

Caches here are functional: a prefix cache only records (recording twice stores equal
values) and a continuation cache never changes. Gradient checkpointing recomputes a
layer during the backward pass, after both calls, so a cache whose state changed with
the calls would give the recomputed layer the wrong context.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_opd import models
from mlx_opd.models import parts


class _RecordKV:
    """Attention layer, prefix call: stores the prompt's keys/values, attends causally."""

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0  # the prefix call starts at position 0

    def update_and_fetch(self, keys, values):
        self.keys, self.values = keys, values
        return keys, values

    def make_mask(self, N: int, return_array: bool = False, window_size=None):
        return parts.attention_mask(N, window_size, return_array)

    # the checkpointing protocol (models/grad_checkpoint.py): what the layer reads and writes
    def checkpoint_inputs(self) -> list:
        return []

    def rebuilt(self, inputs: list):
        return type(self)()

    def checkpoint_outputs(self) -> list:
        return [self.keys, self.values]

    def take(self, outputs: list) -> None:
        self.keys, self.values = outputs


class _Continuation:
    """What every continuation cache shares: it reads the prompt's arrays (handed to a
    checkpointed layer explicitly) and writes nothing."""

    def __init__(self, prefix: list, rows: int):
        self.prefix, self.rows = list(prefix), rows

    def checkpoint_inputs(self) -> list:
        return self.prefix

    def rebuilt(self, inputs: list):
        return type(self)(inputs, self.rows)

    def checkpoint_outputs(self) -> list:
        return []

    def take(self, outputs: list) -> None:
        pass


class _ContinueKV(_Continuation):
    """Attention layer, continuation call: the n rows' keys/values follow the prompt's
    (broadcast, never copied into the cache); nothing is stored."""

    def __init__(self, prefix: list, rows: int):
        super().__init__(prefix, rows)
        self.offset = prefix[0].shape[2]

    def _full(self, prefix, new):
        return mx.concatenate([mx.broadcast_to(prefix, (self.rows,) + prefix.shape[1:]), new],
                              axis=2)

    def update_and_fetch(self, keys, values):
        return self._full(self.prefix[0], keys), self._full(self.prefix[1], values)

    def make_mask(self, N: int, return_array: bool = False, window_size=None):
        # the N queries are the last N of offset + N keys: causal, aligned at the end
        if N == 1:
            return None
        if return_array or window_size:
            from mlx_lm.models.base import create_causal_mask

            return create_causal_mask(N, offset=self.offset, window_size=window_size)
        return "causal"


class _RecordArrays:
    """Gated-delta layer, prefix call: starts from zero state, records the final
    convolution window and recurrent state."""

    lengths = None
    left_padding = None

    def __init__(self, size: int = 2):
        self.saved = [None] * size

    def __getitem__(self, i):
        return None  # the prompt starts from nothing

    def __setitem__(self, i, value):
        self.saved[i] = value

    def update_window(self, index, source, width, *, lengths=None):
        self.saved[index] = source[:, source.shape[1] - width:]
        return self.saved[index]

    def update_recurrent(self, index, length, update):
        output, state = update(None, None)[:2]
        self.saved[index] = state
        return output, state

    def make_mask(self, N: int):
        return None

    def checkpoint_inputs(self) -> list:
        return []

    def rebuilt(self, inputs: list):
        return type(self)(len(self.saved))

    def checkpoint_outputs(self) -> list:
        return list(self.saved)

    def take(self, outputs: list) -> None:
        self.saved = list(outputs)


class _ContinueArrays(_Continuation, _RecordArrays):
    """Gated-delta layer, continuation call: the n rows start from the prompt's final
    state (broadcast); nothing is stored."""

    def __getitem__(self, i):
        s = self.prefix[i]
        return mx.broadcast_to(s, (self.rows,) + s.shape[1:])

    def __setitem__(self, i, value):
        pass

    def update_window(self, index, source, width, *, lengths=None):
        return source[:, source.shape[1] - width:]

    def update_recurrent(self, index, length, update):
        return update(self[index], None)[:2]


def _record_caches(model: nn.Module) -> list:
    """One recording cache per decoder layer, of the kind the layer keeps."""
    out = []
    for c in parts.make_prompt_cache(model):
        if hasattr(c, "update_and_fetch"):
            out.append(_RecordKV())
        elif hasattr(c, "update_recurrent"):
            out.append(_RecordArrays(len(c.cache)))
        else:
            raise NotImplementedError(f"shared-prefix scoring: no functional twin for "
                                      f"{type(c).__name__}; use score.shared_prefix=false")
    return out


def _continue_caches(recorded: list, rows: int) -> list:
    return [_ContinueKV([c.keys, c.values], rows) if isinstance(c, _RecordKV)
            else _ContinueArrays(c.saved, rows) for c in recorded]


def prefill(model: nn.Module, enc: models.Encoded, features=None, caches=None):
    """Run the prompt once (batch 1) into `caches` (default: recording caches, for
    scoring; the rollout passes mlx-vlm's own). Returns (hidden [1, H] at the last prompt
    position, the caches, the prompt's rope delta). The head is never applied;
    `features`: the prompt's precomputed input embeddings (models.input_features)."""
    models.reset_rope_state(model)
    caches = _record_caches(model) if caches is None else caches
    with models.head_as_identity(model), models.precomputed_inputs(model, features):
        out = model(enc.input_ids, pixel_values=enc.pixel_values, cache=caches,
                    image_grid_thw=enc.image_grid_thw)
    hidden = getattr(out, "logits", out)[:, -1, :]
    rope = models.rope_deltas(model)
    models.reset_rope_state(model)
    return hidden, caches, rope


def continue_hidden(model: nn.Module, caches: list, rope_deltas, ids: mx.array) -> mx.array:
    """Final hidden states [n, L, H] of `ids` [n, L] continuing the prefilled prompt."""
    lm = model.language_model
    models.reset_rope_state(model)
    with models.head_as_identity(model):
        out = lm(ids, cache=_continue_caches(caches, ids.shape[0]),
                 rope_deltas=rope_deltas)
    models.reset_rope_state(model)
    return getattr(out, "logits", out)


def response_hidden(model: nn.Module, enc: models.Encoded, response_ids: mx.array,
                    features=None) -> mx.array:
    """Final hidden states [n, T, H] at the positions predicting each response token,
    the prompt run once: position 0 is the prompt's last position (shared by the n rows),
    position t > 0 the continuation's position t - 1. Equal, within float tolerance, to
    models.response_hidden on the duplicated batch."""
    n, T = response_ids.shape
    last, caches, rope = prefill(model, enc, features)
    first = mx.broadcast_to(last[:, None, :], (n, 1, last.shape[-1]))
    if T == 1:
        return first
    return mx.concatenate([first, continue_hidden(model, caches, rope, response_ids[:, :-1])],
                          axis=1)
