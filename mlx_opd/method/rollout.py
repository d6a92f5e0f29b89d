"""On-policy rollouts: n samples per prompt, the step's prompts decoded as one batch.

The engine is continuous batching, ours (`sample_prompts`). Each prompt (image + text) is
prefilled once, batch 1, which also runs the vision tower once per image (exact for every
family); the head is applied to the last prompt position only (never [prompt_len, vocab]
logits). Its cache then serves its n rows: a prompt shorter than the longest is
left-padded in the KV cache and masked there, and every row carries its own prompt's
M-RoPE delta and cache offset, so each row decodes exactly as it would alone (qwen3_5's
recurrent state has no sequence axis: its rows simply stack). Every CHECK_EVERY decode
steps the host reads the new tokens; rows that ended leave the batch (their cache rows
are dropped), and prompts waiting for room (`rollout.prompt_batch`) are prefilled and
their rows join the batch at their own offset. A step is not held by its longest answer:
a decode step costs what the rows still answering cost. On length-varying answers at
Qwen2.5-VL-3B widths on a 2-core CPU this gave 1.76x the old loop's rollout tokens/s at
4 prompts x 8 rows and 2.61x at 16 x 8 (docs/benchmarks.md).

Token ids and the sampler's log-probs are kept as sampled: nothing is ever re-tokenised.
Image/video pad ids get a -1e9 bias (built once per model), EOS ends a row (the EOS
token is kept: the decision to stop is part of the policy and is scored too);
`max_tokens` bounds every row. Each row samples with its own key, a function of (seed,
step, prompt, sample) and its position (`row_keys`), by the Gumbel-max trick: the draw of
a row does not depend on which other rows share its batch or when it entered, so a
resumed run samples exactly what the uninterrupted run sampled.

Why ours and not mlx-vlm's BatchGenerator (0.7.10), decided by benchmarks/rollout.py
(docs/benchmarks.md, "Rollout engines") and by what training needs:
- n samples of one prompt: the engine prefills, and runs the vision tower for, every row
  (batch_generate takes each prompt n times); ours prefills a prompt once for its n rows.
  At Qwen2.5-VL-3B widths (4 prompts x 8 rows, 1280x960 photos) batch_generate ran out
  of memory on a 24 GB machine; ours decoded the same rows in 2.9 GB.
- per-row sampling keys: its seeded sampler keys draws by (seed, row, position), but
  GenerationBatch._step and PromptProcessingBatch.generate pass row_ids=[0] * rows
  (mlx_vlm/generate/ar.py), so the n rows of a prompt draw identical samples; unseeded,
  a row's draw depends on its batch-mates (benchmarks/rollout.py `engine_checks` shows
  both), and a resumed run would not sample what it sampled.
- a per-row logits processor runs as a Python loop over the rows at every step.
What we took from it: finished rows leave, waiting prompts enter, and the cache classes'
filter/extend/merge (mlx_vlm.models.cache) to do both."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import mlx.core as mx

from mlx_opd import models
from mlx_opd.method import prefix
from mlx_opd.method.answer_one import (  # noqa: F401  (moved to answer_one.py)
    sample,
)
from mlx_opd.models import parts

CHECK_EVERY = 8  # decode steps between host-side checks for "every row has stopped"


@dataclass
class Rollouts:
    """The n responses of one prompt."""

    token_ids: list[list[int]]   # per sample, EOS included when it stopped
    logprobs: list[list[float]]  # sampler log-prob of each kept token (temperature, bias)
    finished: list[bool]         # True when the sample ended with EOS
    seconds: float               # this prompt's share of the rollout time
    prefill_seconds: float = 0.0  # of which prefilling the prompt (vision tower included)
    computed_tokens: int = 0      # positions the decode computed for these rows (>= kept)

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
    model = loaded.model
    last, cache, rope = prefix.prefill(model, enc, features, parts.make_prompt_cache(model))
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


def _keep_rows(cache, keep: mx.array) -> None:
    """Keep only the batch rows `keep` of every layer's cache, in place: the batched
    caches have `filter` (which also trims left padding no row needs any more); a
    repeated single-prompt KVCache has its state indexed."""
    for c in cache:
        if hasattr(c, "filter"):
            c.filter(keep)
        else:
            state = c.state
            c.state = type(state)(None if x is None else x[keep] for x in state)


@dataclass
class _Rows:
    """The rows decoding now: slot i of the batch is global row rows[i] (p * n + j), at
    its own decode position pos[i] (rows that entered later are behind)."""

    cache: list
    logits: mx.array   # [B, V] next-token logits
    rope: mx.array     # [B, 1] M-RoPE deltas
    keys: mx.array     # [B, T, 2] per-row, per-position sampling keys
    rows: mx.array     # [B] global row index of each slot
    pos: mx.array      # [B] tokens sampled so far
    stopped: mx.array  # [B] EOS seen
    at: list[int]      # pos on the host (every slot advances one token per step)

    def keep(self, keep: list[int]) -> None:
        idx = mx.array(keep, dtype=mx.int32)
        _keep_rows(self.cache, idx)
        self.logits, self.rope, self.keys = self.logits[idx], self.rope[idx], self.keys[idx]
        self.rows, self.pos, self.stopped = self.rows[idx], self.pos[idx], self.stopped[idx]
        self.at = [self.at[i] for i in keep]

    def extend(self, other: "_Rows") -> None:
        """Other's rows join the batch (both caches batched ones: see _prefill_rows)."""
        for c, o in zip(self.cache, other.cache):
            c.extend(o)
        for name in ("logits", "rope", "keys", "rows", "pos", "stopped"):
            setattr(self, name, mx.concatenate([getattr(self, name), getattr(other, name)]))
        self.at += other.at


def _prefill_rows(loaded, encs, first: int, n: int, max_tokens: int, keys, features,
                  batched: bool) -> _Rows:
    """Prefill `encs` (global prompts first, first + 1, ...) into n rows each. `batched`:
    always a batched cache (rows may enter later), else one prompt's cache is repeated."""
    prefilled = [prefill(loaded, e, f) for e, f in zip(encs, features)]
    V = prefilled[0][1].shape[-1]
    caches = [c for c, _, _ in prefilled]
    B = len(encs) * n
    return _Rows(
        cache=([type(layer[0]).merge([c for c in layer for _ in range(n)])
                for layer in zip(*caches)] if batched else _stack_caches(caches, n)),
        logits=mx.concatenate([mx.broadcast_to(lg, (n, V)) for _, lg, _ in prefilled]),
        rope=mx.concatenate([mx.broadcast_to(r, (n, 1)) for _, _, r in prefilled]),
        keys=mx.concatenate([row_keys(k, n, max_tokens) for k in keys]),  # [B, T, 2]
        rows=mx.arange(first * n, first * n + B, dtype=mx.int32),
        pos=mx.zeros((B,), dtype=mx.int32), stopped=mx.zeros((B,), dtype=mx.bool_),
        at=[0] * B)


@dataclass
class _Sampler:
    """What every decode step applies: temperature, the pad-id bias, the processor."""

    temperature: float
    bias: mx.array | None
    processor: object
    eos_ids: mx.array
    max_tokens: int

    def step(self, d: _Rows) -> tuple[mx.array, mx.array]:
        """Each slot's next token and its log-prob; advances the slots."""
        scaled = d.logits / self.temperature if self.temperature > 0 else d.logits
        if self.bias is not None:
            scaled = scaled + self.bias
        if self.processor is not None:
            scaled = self.processor(scaled, d.pos, d.rows)
        logp = _log_softmax(scaled)
        if self.temperature > 0:
            at = mx.minimum(d.pos, self.max_tokens - 1)  # past max_tokens: cut off later
            keys = d.keys[mx.arange(d.keys.shape[0]), at]
            tokens = mx.argmax(logp + _gumbel_rows(keys, logp), axis=-1)
        else:  # greedy (validation): the same ids as `sample(..., temperature=0)`
            tokens = mx.argmax(logp, axis=-1)
        d.stopped = d.stopped | (tokens[:, None] == self.eos_ids[None, :]).any(-1)
        d.pos = d.pos + 1
        d.at = [x + 1 for x in d.at]
        return tokens, mx.take_along_axis(logp, tokens[:, None], -1)[:, 0]


@dataclass
class _Waiting:
    """The prompts not yet in the batch, prefilled as they enter (all at the start, or n
    rows at a time as rows leave)."""

    loaded: models.Loaded
    encs: Sequence
    n: int
    max_tokens: int
    keys: list
    features: list
    batched: bool            # batched caches, so that rows can enter later
    beat: object = None      # called as each waiting prompt enters
    next: int = 0
    seconds: float = 0.0     # spent prefilling

    @property
    def empty(self) -> bool:
        return self.next >= len(self.encs)

    def take(self, count: int) -> _Rows:
        t, a = time.perf_counter(), self.next
        rows = _prefill_rows(self.loaded, self.encs[a:a + count], a, self.n, self.max_tokens,
                             self.keys[a:a + count], self.features[a:a + count], self.batched)
        self.next, self.seconds = a + count, self.seconds + time.perf_counter() - t
        return rows


def sample_prompts(loaded: models.Loaded, encs: Sequence[models.Encoded], n: int,
                   max_tokens: int, temperature: float = 1.0,
                   keys: Sequence[mx.array] | None = None,
                   block_pad_tokens: bool = True, features: Sequence | None = None,
                   processor=None, leave: bool = True, capacity: int = 0,
                   beat=lambda: None) -> list[Rollouts]:
    """n samples from each prompt of `encs`, their rows decoded as one batch; `keys[p]` is
    prompt p's key (row_keys derives the rows'); `features[p]`, when given, prompt p's
    precomputed input embeddings (see prefill). temperature 0: greedy.

    `leave`: rows that have stopped leave the batch at the next host check, so the decode
    runs on the rows still answering (False: every row decodes until the last one stops,
    the loop before issue 32, kept as the benchmark's reference). `capacity`: at most this
    many rows decode at once (0: every prompt's); the prompts that do not fit wait and
    enter, n rows at a time, as rows leave (without `leave`: groups one after another).
    `processor(logits, pos, rows)`: an extra logits processor on the batch, `pos` each
    slot's decode position and `rows` its global row p * n + j (answer_lengths has one).
    `beat()` is called as each waiting prompt enters (a watchdog's heartbeat)."""
    t0 = time.perf_counter()
    P = len(encs)
    keys = [mx.random.key(p) for p in range(P)] if keys is None else list(keys)
    features = [None] * P if features is None else list(features)
    fit = P if capacity <= 0 else max(1, min(P, capacity // n))
    if not leave and fit < P:
        return [r for a in range(0, P, fit) for r in sample_prompts(
            loaded, encs[a:a + fit], n, max_tokens, temperature, keys[a:a + fit],
            block_pad_tokens, features[a:a + fit], processor, False, beat=beat)]
    eos = set(models.eos_token_ids(loaded))
    waiting = _Waiting(loaded, encs, n, max_tokens, keys, features, fit < P, beat)
    d = waiting.take(fit)
    V = d.logits.shape[-1]
    sampler = _Sampler(temperature, models.sampling_bias(loaded, V) if block_pad_tokens
                       else None, processor, mx.array(sorted(eos), dtype=mx.int32), max_tokens)
    ids, lps = [[] for _ in range(P * n)], [[] for _ in range(P * n)]
    _decode(loaded, d, sampler, waiting, leave, max(capacity, n), ids, lps)
    models.reset_rope_state(loaded.model)
    seconds = (time.perf_counter() - t0) / P
    return [_prompt_rollouts([r[:max_tokens] for r in ids[p * n:(p + 1) * n]],
                             lps[p * n:(p + 1) * n], eos, seconds, waiting.seconds / P,
                             sum(len(r) for r in ids[p * n:(p + 1) * n]))
            for p in range(P)]


def _decode(loaded, d: _Rows, sampler: _Sampler, waiting: _Waiting, leave: bool, room: int,
            ids: list, lps: list) -> None:
    """Decode until every row has stopped and no prompt waits; each row's tokens and
    log-probs land in ids[row], lps[row]."""
    window = []
    while True:
        tokens, lp = sampler.step(d)
        window.append((tokens, lp))
        # the host looks at the tokens only every CHECK_EVERY steps (or when a row reaches
        # max_tokens); meanwhile the next step is queued behind this one (async)
        if len(window) == CHECK_EVERY or max(d.at) >= sampler.max_tokens:
            done = [s or a >= sampler.max_tokens
                    for s, a in zip(_collect(d, window, ids, lps), d.at)]
            window = []
            if all(done) and waiting.empty:
                break
            if leave:
                tokens = _leave(d, tokens, done)
        if d.at:
            out = loaded.model.language_model(tokens[:, None], cache=d.cache,
                                              rope_deltas=d.rope)
            d.logits = getattr(out, "logits", out)[:, -1, :].astype(mx.float32)
        while not waiting.empty and len(d.at) + waiting.n <= room:  # waiting prompts enter
            new = waiting.take(1)
            if d.at:
                d.extend(new)
            else:
                d = new
            waiting.beat()
        mx.async_eval(d.logits, d.stopped, *[x for pair in window[-1:] for x in pair])


def _leave(d: _Rows, tokens: mx.array, done: list[bool]) -> mx.array:
    """Rows that are done leave the batch; the tokens the rest feed next."""
    keep = [i for i, x in enumerate(done) if not x]
    if not keep:
        d.at = []  # every row left: the waiting prompts start a fresh batch
    elif len(keep) < len(done):
        tokens = tokens[mx.array(keep, dtype=mx.int32)]
        d.keep(keep)
    return tokens


def _collect(d: _Rows, window, ids, lps) -> list[bool]:
    """Move the window's tokens and log-probs to each slot's global row; the slots'
    stopped flags."""
    w_ids = mx.stack([t for t, _ in window], axis=1).tolist()
    w_lp = mx.stack([lp for _, lp in window], axis=1).tolist()
    for slot, row in enumerate(d.rows.tolist()):
        ids[row] += w_ids[slot]
        lps[row] += w_lp[slot]
    return d.stopped.tolist()


def _prompt_rollouts(rows_ids, rows_lp, eos, seconds, prefill_seconds, computed
                     ) -> Rollouts:
    """One prompt's rows, each cut after its own first EOS; `computed`: every position
    the decode ran for these rows (past the EOS too, until the row left)."""
    ids, lps, done = [], [], []
    for row_ids, row_lp in zip(rows_ids, rows_lp):
        cut = next((i + 1 for i, tok in enumerate(row_ids) if tok in eos), len(row_ids))
        ids.append(row_ids[:cut])
        lps.append(row_lp[:cut])
        done.append(row_ids[cut - 1] in eos)
    return Rollouts(ids, lps, done, seconds, prefill_seconds, computed_tokens=computed)


def sample_batch(loaded: models.Loaded, enc: models.Encoded, n: int, max_tokens: int,
                 temperature: float = 1.0, key: mx.array | None = None,
                 block_pad_tokens: bool = True) -> Rollouts:
    """n samples from one prompt (sample_prompts with one prompt)."""
    return sample_prompts(loaded, [enc], n, max_tokens, temperature,
                          None if key is None else [key], block_pad_tokens)[0]


# --- the baseline the batched sampler is measured against: one sample at a time with
# mlx-vlm's own decoder (answer_one.sample) ------------------------------------------


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
