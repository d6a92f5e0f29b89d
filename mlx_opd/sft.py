"""Supervised cross-entropy on response tokens: the tiny base's perception training, the
off-policy SFT baseline and the benchmark's reference step all use it."""

from __future__ import annotations

import random

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from . import models


def response_ce(model: nn.Module, batch: models.Batch) -> mx.array:
    """Mean cross-entropy of the response tokens (teacher forcing, padding masked)."""
    logits = models.apply_head(model, models.response_hidden(model, batch))
    ce = nn.losses.cross_entropy(logits, batch.response_ids, reduction="none")
    return (ce * batch.response_mask).sum() / batch.response_mask.sum()


def train_supervised(loaded: models.Loaded, examples: list, steps: int, batch_size: int,
                     lr: float, weight_decay: float = 0.0, seed: int = 0, log=None,
                     bias_correction: bool = False) -> None:
    """AdamW on `response_ce` over random batches of (Encoded prompt, response ids) pairs;
    updates the model's trainable parameters in place. The demo's base keeps MLX's default
    (no bias correction: part of its cached recipe); baselines compared with Vision-OPD
    pass bias_correction=True, the trainer's PyTorch semantics."""
    opt = optim.AdamW(learning_rate=lr, weight_decay=weight_decay, bias_correction=bias_correction)
    step_fn = nn.value_and_grad(loaded.model, response_ce)
    rng = random.Random(seed)
    for step in range(steps):
        pick = rng.sample(range(len(examples)), min(batch_size, len(examples)))
        batch = models.make_batch([examples[i][0] for i in pick], [examples[i][1] for i in pick])
        loss, grads = step_fn(loaded.model, batch)
        opt.update(loaded.model, grads)
        mx.eval(loaded.model.trainable_parameters(), opt.state)
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(step, steps, float(loss.item()))
