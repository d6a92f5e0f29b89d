"""One answer at a time with mlx-vlm's own decoder (generate_step): the greedy answers of
eval, compare and validation, with each step's log-probs, and the stop token the model
emitted. The step's rollouts are batched (rollout.py)."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from mlx_opd import models
from mlx_opd.models import parts


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
    bias = {i: models.BLOCK_BIAS for i in models.blocked_token_ids(loaded)} \
        if block_pad_tokens else None
    eos = set(models.eos_token_ids(loaded))
    if seed is not None:
        mx.random.seed(seed)
    models.reset_rope_state(loaded.model)
    ids, lps, full, first = [], [], [], None
    finish, stop = "length", None
    loaded.model.eval()  # inference on every module (no LoRA dropout)
    for token, logprobs in parts.generate_step(
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
