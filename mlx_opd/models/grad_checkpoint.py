"""Gradient checkpointing of the decoder layers that also works with shared-prefix caches.

mlx-lm's `grad_checkpoint` wraps a layer in `mx.checkpoint`, which differentiates only
through the wrapped function's explicit inputs and outputs. A layer that writes the
prompt's keys/values into a cache (prefix call) or reads them from one (continuation
call, prefix.py) moves arrays through side channels that `mx.checkpoint` does not see:
the values are right but the gradients through the cache are lost (measured: LoRA
gradients off by ~60% with mlx-lm's wrapper on the shared-prefix path). Here a cache
that follows prefix.py's protocol hands its arrays in and out explicitly:
    checkpoint_inputs()   arrays the layer reads from the cache
    rebuilt(inputs)       an equivalent cache built from those arrays (inside the trace)
    checkpoint_outputs()  arrays the layer wrote
    take(outputs)         store them in the caller's cache
Any other cache (None, mlx-vlm's own) goes through the plain checkpoint, as mlx-lm's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

_PATCHED = "_mlx_opd_checkpointed"


def _find_cache(args: tuple, kwargs: dict):
    """('arg', index) or ('kw', name) of a protocol cache among the call's arguments."""
    for i, a in enumerate(args):
        if hasattr(a, "checkpoint_inputs"):
            return ("arg", i)
    for k, a in kwargs.items():
        if hasattr(a, "checkpoint_inputs"):
            return ("kw", k)
    return None


def _with_cache(args: tuple, kwargs: dict, where, cache):
    args, kwargs = list(args), dict(kwargs)
    if where[0] == "arg":
        args[where[1]] = cache
    else:
        kwargs[where[1]] = cache
    return args, kwargs


def checkpoint_layers(model: nn.Module) -> None:
    """Recompute every decoder layer of `model`'s language model in the backward pass
    (the layer class is patched once; every model of that class is affected, as with
    mlx-lm's grad_checkpoint)."""
    for cls in {type(layer) for layer in model.language_model.model.layers}:
        if cls.__dict__.get(_PATCHED):
            continue
        call = cls.__call__

        def checkpointed(self, *args, _call=call, **kwargs):
            where = _find_cache(args, kwargs)
            params = self.trainable_parameters()
            if where is None:
                def inner(p, *a, **k):
                    self.update(p)
                    return _call(self, *a, **k)

                return mx.checkpoint(inner)(params, *args, **kwargs)
            cache = args[where[1]] if where[0] == "arg" else kwargs[where[1]]

            def inner_cached(p, ins, *a, **k):
                self.update(p)
                fresh = cache.rebuilt(ins)
                a, k = _with_cache(a, k, where, fresh)
                return _call(self, *a, **k), fresh.checkpoint_outputs()

            out, written = mx.checkpoint(inner_cached)(params, cache.checkpoint_inputs(),
                                                       *args, **kwargs)
            cache.take(written)
            return out

        cls.__call__ = checkpointed
        setattr(cls, _PATCHED, call)


def restore_layers(model: nn.Module) -> None:
    """Undo `checkpoint_layers` (the layer classes call their own __call__ again)."""
    for cls in {type(layer) for layer in model.language_model.model.layers}:
        original = cls.__dict__.get(_PATCHED)
        if original:
            cls.__call__ = original
            delattr(cls, _PATCHED)
