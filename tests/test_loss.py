"""Divergences against a float64 numpy oracle."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_opd.loss import generalized_jsd


def _oracle(t, s, beta):
    t = t - np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True)) - t.max(-1, keepdims=True)
    s = s - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) - s.max(-1, keepdims=True)
    pt, ps = np.exp(t), np.exp(s)
    if beta == 0:
        return (pt * (t - s)).sum(-1)
    if beta == 1:
        return (ps * (s - t)).sum(-1)
    m = beta * pt + (1 - beta) * ps
    return beta * (pt * (t - np.log(m))).sum(-1) + (1 - beta) * (ps * (s - np.log(m))).sum(-1)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_matches_oracle(beta):
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(6, 33)) * 3, rng.normal(size=(6, 33)) * 3
    lt = mx.array(t, dtype=mx.float32)
    ls = mx.array(s, dtype=mx.float32)
    got = generalized_jsd(lt - mx.logsumexp(lt, -1, keepdims=True),
                          ls - mx.logsumexp(ls, -1, keepdims=True), beta)
    np.testing.assert_allclose(np.array(got), _oracle(t, s, beta), rtol=1e-4, atol=1e-6)


def test_identical_is_zero_and_symmetric_at_half():
    rng = np.random.default_rng(1)
    a = mx.array(rng.normal(size=(4, 17)), dtype=mx.float32)
    b = mx.array(rng.normal(size=(4, 17)), dtype=mx.float32)
    a, b = a - mx.logsumexp(a, -1, keepdims=True), b - mx.logsumexp(b, -1, keepdims=True)
    np.testing.assert_allclose(np.array(generalized_jsd(a, a, 0.5)), 0, atol=1e-6)
    np.testing.assert_allclose(np.array(generalized_jsd(a, b, 0.5)),
                               np.array(generalized_jsd(b, a, 0.5)), rtol=1e-5)
    with pytest.raises(ValueError):
        generalized_jsd(a, b, 1.5)
