"""Token-level divergences between teacher and student next-token distributions.

Convention (matches the authors' recipe `alpha`, here called beta):
    beta = 0       forward KL(T || S)
    beta = 1       reverse KL(S || T)
    0 < beta < 1   generalized JSD: beta * KL(T || M) + (1 - beta) * KL(S || M),
                   M = beta * T + (1 - beta) * S
The endpoints are defined as the KLs (the mixture form itself tends to 0 there), as in
the recipe and TRL. All inputs are log-probabilities over the last axis.
"""

from __future__ import annotations

import math

import mlx.core as mx


def _kl(logp: mx.array, logq: mx.array) -> mx.array:
    """KL(p || q) over the last axis, from log-probs; 0 * log 0 treated as 0."""
    p = mx.exp(logp)
    return mx.sum(mx.where(p > 0, p * (logp - logq), 0.0), axis=-1)


def generalized_jsd(teacher_logprobs: mx.array, student_logprobs: mx.array,
                    beta: float = 0.5) -> mx.array:
    """Per-row divergence [...] between teacher and student log-prob rows [..., V]."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return _kl(teacher_logprobs, student_logprobs)
    if beta == 1.0:
        return _kl(student_logprobs, teacher_logprobs)
    log_m = mx.logaddexp(teacher_logprobs + math.log(beta),
                         student_logprobs + math.log(1.0 - beta))
    return (beta * _kl(teacher_logprobs, log_m)
            + (1.0 - beta) * _kl(student_logprobs, log_m))
