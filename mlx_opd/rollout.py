"""On-policy rollouts: n samples per prompt, all the prompts of a step decoded together.

Each prompt (image + text) is prefilled once, batch 1, which also runs the vision tower
once per image (exact for every family, no cached-feature path involved); the head is
applied to the last prompt position only (never [prompt_len, vocab] logits). The
prompts' caches are then stacked, n rows per prompt, into one batch: a prompt shorter
than the longest is left-padded in the KV cache and masked there, and every row carries
its own prompt's M-RoPE delta and cache offset, so each row decodes exactly as it would
alone (qwen3_5's recurrent state has no sequence axis: its rows simply stack). One
prompt needs no padding: its cache is repeated n times.

Token ids and the sampler's log-probs are kept as sampled: nothing is ever re-tokenised.
Image/video pad ids get a -1e9 bias (built once per model), EOS ends a row (the EOS
token is kept: the decision to stop is part of the policy and is scored too) and rows
stop independently; `max_tokens` bounds every row. Each row samples with its own key,
a function of (seed, step, prompt, sample) (`row_keys`), by the Gumbel-max trick: the
draw of a row does not depend on which other rows share its batch, so a resumed run
samples exactly what the uninterrupted run sampled, batched or not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import mlx.core as mx

from . import models, prefix

CHECK_EVERY = 8  # decode steps between host-side checks for "every row has stopped"


@dataclass
class Rollouts:
    """The n responses of one prompt."""

    token_ids: list[list[int]]   # per sample, EOS included when it stopped
    logprobs: list[list[float]]  # sampler log-prob of each kept token (temperature, bias)
    finished: list[bool]         # True when the sample ended with EOS
    seconds: float               # this prompt's share of the rollout time
    prefill_seconds: float = 0.0  # of which prefilling the prompt (vision tower included)

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)


def _log_softmax(x: mx.array) -> mx.array:
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def row_keys(key: mx.array, n: int, max_tokens: int) -> mx.array:
    """Keys [n, max_tokens, 2]: row i's key at decode step t, from the prompt's key."""
    return mx.stack([mx.random.split(k, max_tokens) for k in mx.random.split(key, n)])


_gumbel_rows = mx.vmap(lambda k, like: mx.random.gumbel(like.shape, key=k), in_axes=(0, 0))


def prefill(loaded: models.Loaded, enc: models.Encoded, features=None):
    """The prompt's cache (batch 1), its next-token logits [1, V] (float32, head applied
    to the last position only) and its M-RoPE delta. `features`: the prompt's input
    embeddings already computed (models.input_features), so the vision tower does not
    run again."""
    from mlx_vlm.models import cache as vlm_cache

    model = loaded.model
    last, cache, rope = prefix.prefill(model, enc, features,
                                       vlm_cache.make_prompt_cache(model.language_model))
    logits = models.apply_head(model, last).astype(mx.float32)
    rope = mx.zeros((1, 1), mx.int32) if rope is None else mx.array(rope).reshape(1, 1)
    mx.eval(logits, rope, [c.state for c in cache])
    return cache, logits, rope


def _repeat_cache(cache, n: int) -> None:
    """Repeat every cache entry's state n times along the batch axis, in place."""
    for c in cache:
        state = c.state
        if isinstance(state, (list, tuple)):
            c.state = type(state)(None if x is None else mx.repeat(x, n, axis=0) for x in state)


def _stack_caches(caches: list, n: int) -> list:
    """One batched cache per layer: n rows of each prompt's cache (left-padded, masked)."""
    if len(caches) == 1:
        _repeat_cache(caches[0], n)
        return caches[0]
    return [type(layer[0]).merge([c for c in layer for _ in range(n)])
            for layer in zip(*caches)]


def sample_prompts(loaded: models.Loaded, encs: Sequence[models.Encoded], n: int,
                   max_tokens: int, temperature: float = 1.0,
                   keys: Sequence[mx.array] | None = None,
                   block_pad_tokens: bool = True, features: Sequence | None = None
                   ) -> list[Rollouts]:
    """n samples from each prompt of `encs`, all rows decoded as one batch; `keys[p]` is
    prompt p's key (row_keys derives the rows'); `features[p]`, when given, prompt p's
    precomputed input embeddings (see prefill). temperature 0: greedy."""
    t0 = time.perf_counter()
    model = loaded.model
    P = len(encs)
    keys = [mx.random.key(p) for p in range(P)] if keys is None else list(keys)
    eos = set(models.eos_token_ids(loaded))
    features = [None] * P if features is None else list(features)
    prefilled = [prefill(loaded, e, f) for e, f in zip(encs, features)]
    t_prefill = time.perf_counter() - t0
    V = prefilled[0][1].shape[-1]
    bias = models.sampling_bias(loaded, V) if block_pad_tokens else None
    cache = _stack_caches([c for c, _, _ in prefilled], n)
    logits = mx.concatenate([mx.broadcast_to(lg, (n, V)) for _, lg, _ in prefilled])
    rope = mx.concatenate([mx.broadcast_to(r, (n, 1)) for _, _, r in prefilled])
    step_keys = mx.concatenate([row_keys(k, n, max_tokens) for k in keys])  # [P*n, T, 2]
    eos_ids = mx.array(sorted(eos), dtype=mx.int32)
    stopped = mx.zeros((P * n,), dtype=mx.bool_)
    steps_ids, steps_lp = [], []
    for t in range(max_tokens):
        scaled = logits / temperature if temperature > 0 else logits
        if bias is not None:
            scaled = scaled + bias
        logp = _log_softmax(scaled)
        if temperature > 0:
            tokens = mx.argmax(logp + _gumbel_rows(step_keys[:, t], logp), axis=-1)
        else:  # greedy (validation): the same ids as `sample(..., temperature=0)`
            tokens = mx.argmax(logp, axis=-1)
        steps_ids.append(tokens)
        steps_lp.append(mx.take_along_axis(logp, tokens[:, None], -1)[:, 0])
        stopped = stopped | (tokens[:, None] == eos_ids[None, :]).any(-1)
        # the host looks at the tokens only every CHECK_EVERY steps; meanwhile the next
        # step is queued behind this one (async), so decoding never waits on Python
        if (t + 1) % CHECK_EVERY == 0 and bool(stopped.all().item()):
            break
        if t == max_tokens - 1:
            break
        out = model.language_model(tokens[:, None], cache=cache, rope_deltas=rope)
        logits = getattr(out, "logits", out)[:, -1, :].astype(mx.float32)
        mx.async_eval(logits, stopped, steps_lp[-1])
    all_ids = mx.stack(steps_ids, axis=1).tolist()
    all_lp = mx.stack(steps_lp, axis=1).tolist()
    models.reset_rope_state(model)
    seconds = (time.perf_counter() - t0) / P
    out = []
    for p in range(P):
        ids, lps, done = [], [], []
        for row_ids, row_lp in zip(all_ids[p * n:(p + 1) * n], all_lp[p * n:(p + 1) * n]):
            cut = next((i + 1 for i, tok in enumerate(row_ids) if tok in eos), len(row_ids))
            ids.append(row_ids[:cut])  # each row cut after its own first EOS
            lps.append(row_lp[:cut])
            done.append(row_ids[cut - 1] in eos)
        out.append(Rollouts(ids, lps, done, seconds, t_prefill / P))
    return out


def sample_batch(loaded: models.Loaded, enc: models.Encoded, n: int, max_tokens: int,
                 temperature: float = 1.0, key: mx.array | None = None,
                 block_pad_tokens: bool = True) -> Rollouts:
    """n samples from one prompt (sample_prompts with one prompt)."""
    return sample_prompts(loaded, [enc], n, max_tokens, temperature,
                          None if key is None else [key], block_pad_tokens)[0]


# --- one answer at a time with mlx-vlm's own decoder (greedy answers for eval/compare,
# and the baseline the batched sampler is measured against) ---------------------------

@dataclass
class Sampled:
    token_ids: list[int]
    logprobs: list[float]          # log-prob of each chosen token under the sampler
    full_logprobs: list[mx.array]  # [V] per step (only when keep_full=True)
    finish_reason: str             # "stop" (EOS) or "length"
    stop_token: int | None = None  # the EOS id the model actually emitted (finish "stop")
    first_logprobs: mx.array | None = None  # [V] at the first step (the answer's first token)

    @property
    def ids_with_stop(self) -> list[int]:
        """The response as the model produced it, stop token included: what to score or
        to use as a label (never some other EOS id the model did not emit)."""
        return self.token_ids + ([self.stop_token] if self.stop_token is not None else [])


def sample(loaded: models.Loaded, enc: models.Encoded, max_tokens: int = 64,
           temperature: float = 0.0, seed: int | None = None, block_pad_tokens: bool = True,
           keep_full: bool = False) -> Sampled:
    """Sample one response with mlx-vlm's own decoder. The EOS token is not included in
    the returned ids. With `block_pad_tokens` the image/video pad ids get BLOCK_BIAS."""
    from mlx_vlm.generate import generate_step

    bias = {i: models.BLOCK_BIAS for i in models.blocked_token_ids(loaded)} \
        if block_pad_tokens else None
    eos = set(models.eos_token_ids(loaded))
    if seed is not None:
        mx.random.seed(seed)
    models.reset_rope_state(loaded.model)
    ids, lps, full, first = [], [], [], None
    finish, stop = "length", None
    loaded.model.eval()  # inference on every module (no LoRA dropout)
    for token, logprobs in generate_step(
        enc.input_ids, loaded.model, enc.pixel_values, None, max_tokens=max_tokens,
        temperature=temperature, top_p=1.0, top_k=0, logit_bias=bias,
        image_grid_thw=enc.image_grid_thw,
    ):
        token = int(token)
        first = logprobs if first is None else first
        if token in eos:
            finish, stop = "stop", token
            break
        ids.append(token)
        lps.append(float(logprobs[token].item()))
        if keep_full:
            full.append(logprobs)
        if len(ids) >= max_tokens:
            break
    models.reset_rope_state(loaded.model)
    return Sampled(ids, lps, full, finish, stop, first)


def sample_sequential(loaded: models.Loaded, enc: models.Encoded, n: int, max_tokens: int,
                      temperature: float = 1.0, seed: int = 0) -> Rollouts:
    """n samples one at a time with mlx-vlm's own decoder (the baseline the batched
    sampler is measured against)."""
    t0 = time.perf_counter()
    ids, lps, done = [], [], []
    for i in range(n):
        s = sample(loaded, enc, max_tokens=max_tokens, temperature=temperature, seed=seed + i)
        ids.append(s.token_ids)
        lps.append(s.logprobs)
        done.append(s.finish_reason == "stop")
    return Rollouts(ids, lps, done, time.perf_counter() - t0)
