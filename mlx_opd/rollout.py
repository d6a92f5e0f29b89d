"""On-policy rollouts: n samples per prompt, decoded as one batch from a shared prefix.

The prompt (image + text) is prefilled once, batch 1, which also runs the vision tower
once per prompt (exact for every family, no cached-feature path involved); the KV cache
is then replicated n times along the batch axis and the n responses are decoded
together. Token ids and the sampler's log-probs are kept as sampled: nothing is ever
re-tokenised. Image/video pad ids get a -1e9 bias, EOS ends a row (the EOS token is
kept: the decision to stop is part of the policy and is scored too), and
`max_tokens` bounds every row. Sampling keys come from (seed, step, prompt) so a
resumed run samples exactly what the uninterrupted run sampled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlx.core as mx

from . import models

CHECK_EVERY = 8  # decode steps between host-side checks for "every row has stopped"


@dataclass
class Rollouts:
    """The n responses of one prompt."""

    token_ids: list[list[int]]   # per sample, EOS included when it stopped
    logprobs: list[list[float]]  # sampler log-prob of each kept token (temperature, bias)
    finished: list[bool]         # True when the sample ended with EOS
    seconds: float

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)


def _replicate_cache(cache, n: int) -> None:
    """Repeat every cache entry's state n times along the batch axis, in place."""
    for c in cache:
        state = c.state
        if isinstance(state, (list, tuple)):
            c.state = type(state)(None if x is None else mx.repeat(x, n, axis=0) for x in state)


def _log_softmax(x: mx.array) -> mx.array:
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def sample_batch(loaded: models.Loaded, enc: models.Encoded, n: int, max_tokens: int,
                 temperature: float = 1.0, key: mx.array | None = None,
                 block_pad_tokens: bool = True) -> Rollouts:
    """n samples from one prompt, prefilled once and decoded as a batch."""
    from mlx_vlm.models import cache as vlm_cache

    t0 = time.perf_counter()
    model = loaded.model
    key = mx.random.key(0) if key is None else key
    eos = set(models.eos_token_ids(loaded))
    bias = None
    models.reset_rope_state(model)
    cache = vlm_cache.make_prompt_cache(model.language_model)
    out = model(enc.input_ids, pixel_values=enc.pixel_values, cache=cache,
                image_grid_thw=enc.image_grid_thw)
    logits = getattr(out, "logits", out)[:, -1, :].astype(mx.float32)  # [1, V]
    V = logits.shape[-1]
    if block_pad_tokens:
        b = [0.0] * V
        for i in models.blocked_token_ids(loaded):
            if i < V:
                b[i] = models.BLOCK_BIAS
        bias = mx.array(b)
    _replicate_cache(cache, n)
    logits = mx.broadcast_to(logits, (n, V))
    keys = mx.random.split(key, max_tokens)
    eos_ids = mx.array(sorted(eos), dtype=mx.int32)
    stopped = mx.zeros((n,), dtype=mx.bool_)
    steps_ids, steps_lp = [], []
    for t in range(max_tokens):
        scaled = logits / temperature
        if bias is not None:
            scaled = scaled + bias
        logp = _log_softmax(scaled)
        tokens = mx.random.categorical(logp, key=keys[t])
        steps_ids.append(tokens)
        steps_lp.append(mx.take_along_axis(logp, tokens[:, None], -1)[:, 0])
        stopped = stopped | (tokens[:, None] == eos_ids[None, :]).any(-1)
        # the host looks at the tokens only every CHECK_EVERY steps; meanwhile the next
        # step is queued behind this one (async), so decoding never waits on Python
        if (t + 1) % CHECK_EVERY == 0 and bool(stopped.all().item()):
            break
        if t == max_tokens - 1:
            break
        out = model.language_model(tokens[:, None], cache=cache)
        logits = getattr(out, "logits", out)[:, -1, :].astype(mx.float32)
        mx.async_eval(logits, stopped, steps_lp[-1])
    all_ids = mx.stack(steps_ids, axis=1).tolist()
    all_lp = mx.stack(steps_lp, axis=1).tolist()
    ids, lps, done = [], [], []
    for row_ids, row_lp in zip(all_ids, all_lp):  # cut each row after its first EOS
        cut = next((i + 1 for i, tok in enumerate(row_ids) if tok in eos), len(row_ids))
        ids.append(row_ids[:cut])
        lps.append(row_lp[:cut])
        done.append(row_ids[cut - 1] in eos)
    models.reset_rope_state(model)
    return Rollouts(ids, lps, list(done), time.perf_counter() - t0)


def sample_sequential(loaded: models.Loaded, enc: models.Encoded, n: int, max_tokens: int,
                      temperature: float = 1.0, seed: int = 0) -> Rollouts:
    """n samples one at a time with mlx-vlm's own decoder (the baseline the batched
    sampler is measured against)."""
    t0 = time.perf_counter()
    ids, lps, done = [], [], []
    for i in range(n):
        s = models.sample(loaded, enc, max_tokens=max_tokens, temperature=temperature,
                          seed=seed + i)
        ids.append(s.token_ids)
        lps.append(s.logprobs)
        done.append(s.finish_reason == "stop")
    return Rollouts(ids, lps, done, time.perf_counter() - t0)
