"""Supervised cross-entropy on response tokens: the tiny base's perception training, the
off-policy SFT baseline and the benchmark's reference step all use it."""

from __future__ import annotations

import random

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from mlx_opd import models


def soft_token_ce(logits: mx.array, choices: mx.array, weights: mx.array) -> mx.array:
    """Cross-entropy of logits [B, V] against the target distribution that puts
    weights[b, k] on token choices[b, k] (weights sum to 1 per row): [B]."""
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return -(mx.take_along_axis(logp, choices, axis=-1) * weights).sum(axis=-1)


def _ce(model: nn.Module, hidden: mx.array, batch: models.Batch, first) -> mx.array:
    logits = models.apply_head(model, hidden)
    ce = nn.losses.cross_entropy(logits, batch.response_ids, reduction="none")
    if first is not None:
        ce = mx.concatenate([soft_token_ce(logits[:, 0], *first)[:, None], ce[:, 1:]], axis=1)
    return (ce * batch.response_mask).sum() / batch.response_mask.sum()


def response_ce(model: nn.Module, batch: models.Batch, first: tuple | None = None) -> mx.array:
    """Mean cross-entropy of the response tokens (teacher forcing, padding masked).
    `first` = (choices [B, K], weights [B, K]): the first response token's target is that
    distribution instead of its id (the demo's base: every option equally on full views)."""
    return _ce(model, models.response_hidden(model, batch), batch, first)


class Probed(nn.Module):
    """A model and a linear probe on its hidden state at the first response position,
    trained together (the demo's base keeps its full views' evidence readable there)."""

    def __init__(self, model: nn.Module, classes: int):
        super().__init__()
        self.model = model
        self.probe = nn.Linear(models.lm_head(model).weight.shape[1], classes)


def probed_ce(m: Probed, batch: models.Batch, first, rows: mx.array, labels: mx.array,
              weight: float) -> mx.array:
    """`response_ce` plus `weight` x the probe's cross-entropy on the labelled rows."""
    hidden = models.response_hidden(m.model, batch)
    aux = nn.losses.cross_entropy(m.probe(hidden[rows, 0]), labels, reduction="mean")
    return _ce(m.model, hidden, batch, first) + weight * aux


def _first_targets(picked: list) -> tuple | None:
    """(choices, weights) for a batch whose examples may name first-token choices (a third
    element: token ids, equally weighted); None when none does."""
    if all(len(e) == 2 for e in picked):
        return None
    alts = [list(e[2]) if len(e) > 2 else [e[1][0]] for e in picked]
    k = max(len(a) for a in alts)
    choices = [a + [a[0]] * (k - len(a)) for a in alts]
    weights = [[1.0 / len(a)] * len(a) + [0.0] * (k - len(a)) for a in alts]
    return mx.array(choices, dtype=mx.int32), mx.array(weights, dtype=mx.float32)


def train_supervised(loaded: models.Loaded, examples: list, steps: int, batch_size: int,
                     lr: float, weight_decay: float = 0.0, seed: int = 0, log=None,
                     bias_correction: bool = False, probe_classes: int = 0,
                     probe_weight: float = 0.0) -> None:
    """AdamW on `response_ce` over random batches of (Encoded prompt, response ids) pairs,
    or (prompt, ids, first-token choices) triples (the first token's target: those ids,
    equally weighted), or (prompt, ids, choices, probe label)
    quadruples: with probe_weight > 0 a linear probe (`Probed`, thrown away afterwards)
    learns the label from the first response position's hidden state, together with the
    model. Updates the model's trainable parameters in place. The demo's base keeps MLX's
    default (no bias correction: part of its cached recipe); baselines compared with
    Vision-OPD pass bias_correction=True, the trainer's PyTorch semantics."""
    opt = optim.AdamW(learning_rate=lr, weight_decay=weight_decay, bias_correction=bias_correction)
    probed = Probed(loaded.model, probe_classes) if probe_weight > 0 else None
    target = probed if probed is not None else loaded.model
    step_fn = nn.value_and_grad(target, probed_ce if probed is not None else response_ce)
    rng = random.Random(seed)
    for step in range(steps):
        pick = [examples[i] for i in rng.sample(range(len(examples)),
                                                min(batch_size, len(examples)))]
        batch = models.make_batch([e[0] for e in pick], [e[1] for e in pick])
        first = _first_targets(pick)
        if probed is not None:
            rows = [i for i, e in enumerate(pick) if len(e) > 3]
            labels = [pick[i][3] for i in rows]  # none in this batch: a probe term of 0
            loss, grads = step_fn(probed, batch, first, mx.array(rows or [0], dtype=mx.int32),
                                  mx.array(labels or [0], dtype=mx.int32),
                                  probe_weight if rows else 0.0)
        else:
            loss, grads = step_fn(loaded.model, batch, first)
        opt.update(target, grads)
        mx.eval(target.trainable_parameters(), opt.state)
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(step, steps, float(loss.item()))
