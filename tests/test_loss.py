"""The loss core against the float64 oracle, plus properties every divergence must have."""

import itertools

import mlx.core as mx
import numpy as np
import pytest

from mlx_opd.metal import kernels
from mlx_opd.method import loss
from mlx_opd.method.loss import token_divergence, token_divergence_reference

from .oracle import finite_difference, oracle

COMBOS = [(k, e, t) for e in ("full", "topk") for k in ("forward_kl", "reverse_kl", "jsd")
          for t in ((True, False) if e == "topk" else (True,))] + [("reverse_kl", "sampled", True)]
REDUCTIONS = ("token_mean", "sequence_mean", "none")
BACKENDS = ["mlx"] + kernels.available()


def _data(seed=0, B=2, T=4, V=40, scale=3.0):
    rng = np.random.default_rng(seed)
    zs = rng.normal(size=(B, T, V)) * scale
    zt = rng.normal(size=(B, T, V)) * scale
    mask = np.ones((B, T))
    mask[0, -1] = 0  # a padded position
    ids = rng.integers(0, V, size=(B, T))
    return zs, zt, mask, ids


def _ours(fn, zs, zt, mask, ids, **kw):
    f32 = lambda a: mx.array(np.asarray(a, np.float32))  # noqa: E731
    args = (f32(zs), f32(zt), f32(mask))
    kw = dict(kw, sampled_ids=mx.array(ids))
    if kw.get("reduction") == "none":
        val = fn(*args, **kw)
        grad = mx.grad(lambda z: fn(z, args[1], args[2], **kw).sum())(args[0])
        return np.array(val), np.array(grad)
    val, grad = mx.value_and_grad(lambda z: fn(z, args[1], args[2], **kw))(args[0])
    return float(val.item()), np.array(grad)


def _check(got, want, scale_v=1.0):
    (v, g), (ov, og) = got, want
    np.testing.assert_allclose(v, ov, rtol=2e-5, atol=2e-6 * scale_v)
    np.testing.assert_allclose(g, og, rtol=0, atol=2e-5 * max(1e-3, np.abs(og).max()))


@pytest.mark.parametrize("kind,estimator,tail", COMBOS)
def test_oracle_gradient_matches_finite_differences(kind, estimator, tail):
    zs, zt, mask, ids = _data(1, B=1, T=2, V=12)
    kw = dict(kind=kind, beta=0.3, estimator=estimator, k=4, tail=tail, temperature=1.7,
              reduction="token_mean", sampled_ids=ids, mask=mask)
    _, g = oracle(zs, zt, **kw)
    coords = [(0, 0, 0), (0, 1, 5), (0, 1, int(np.argmax(zs[0, 1]))), (0, 0, 11)]
    if estimator == "sampled":
        # the estimator's gradient is that of c * logp_S(y) with c = (logp_S - logp_T)(y)
        # held fixed (detached), so difference that surrogate, not the value
        def lp(z, b, t):
            u = z[b, t] / 1.7
            return u[ids[b, t]] - np.log(np.exp(u).sum())

        fd = []
        for c in coords:
            b, t, _ = c
            const = lp(zs, b, t) - lp(zt, b, t)
            hi, lo = zs.copy(), zs.copy()
            hi[c] += 1e-6
            lo[c] -= 1e-6
            fd.append(mask[b, t] * const * (lp(hi, b, t) - lp(lo, b, t)) / 2e-6 / mask.sum())
    else:
        fd = finite_difference(zs, zt, coords, **kw)
    np.testing.assert_allclose([g[c] for c in coords], fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind,estimator,tail", COMBOS)
def test_matches_oracle(kind, estimator, tail, reduction, backend):
    zs, zt, mask, ids = _data(2)
    kw = dict(kind=kind, beta=0.5, estimator=estimator, k=7, tail=tail, temperature=1.0,
              reduction=reduction)
    want = oracle(zs, zt, mask, sampled_ids=ids, **kw)
    _check(_ours(token_divergence, zs, zt, mask, ids, backend=backend, **kw), want)
    _check(_ours(token_divergence_reference, zs, zt, mask, ids, **kw), want)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [0.7, 2.0])
def test_jsd_beta_and_temperature(beta, temperature):
    zs, zt, mask, ids = _data(3, V=130)
    kw = dict(kind="jsd", beta=beta, estimator="topk", k=100, tail=True,
              temperature=temperature, reduction="token_mean")
    _check(_ours(token_divergence, zs, zt, mask, ids, **kw),
           oracle(zs, zt, mask, sampled_ids=ids, **kw))


def _value(zs, zt, mask=None, **kw):
    return np.array(token_divergence(mx.array(zs, dtype=mx.float32),
                                     mx.array(zt, dtype=mx.float32),
                                     None if mask is None else mx.array(mask), **kw))


@pytest.mark.parametrize("estimator,tail", [("full", True), ("topk", True), ("topk", False)])
def test_properties(estimator, tail):
    zs, zt, mask, _ = _data(4, V=60)
    kw = dict(estimator=estimator, k=10, tail=tail, reduction="none")
    for kind, beta in [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2)]:
        same = _value(zs, zs, kind=kind, beta=beta, **kw)
        np.testing.assert_allclose(same, 0.0, atol=1e-6)  # identical inputs give 0
        assert (_value(zs, zt, kind=kind, beta=beta, **kw) >= -1e-6).all()  # non-negative
    # beta endpoints equal the two KLs
    np.testing.assert_allclose(_value(zs, zt, kind="jsd", beta=0.0, **kw),
                               _value(zs, zt, kind="forward_kl", **kw), rtol=1e-6)
    np.testing.assert_allclose(_value(zs, zt, kind="jsd", beta=1.0, **kw),
                               _value(zs, zt, kind="reverse_kl", **kw), rtol=1e-6)
    if estimator == "full":  # symmetric at 0.5 (top-K is not: its ids are the student's)
        np.testing.assert_allclose(_value(zs, zt, kind="jsd", **kw),
                                   _value(zt, zs, kind="jsd", **kw), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_value(zs, zt, kind="forward_kl", **kw),
                                   _value(zt, zs, kind="reverse_kl", **kw), rtol=1e-5)


def test_masked_positions_contribute_nothing():
    zs, zt, mask, ids = _data(5)
    zs2 = zs.copy()
    zs2[0, -1] = 100.0 * np.random.default_rng(0).normal(size=zs.shape[-1])  # masked slot
    zs2[0, -1, 0] = np.nan
    for reduction in ("token_mean", "sequence_mean"):
        a = _ours(token_divergence, zs, zt, mask, ids, reduction=reduction)
        b = _ours(token_divergence, zs2, zt, mask, ids, reduction=reduction)
        assert a[0] == pytest.approx(b[0], rel=1e-6)
        assert np.all(b[1][0, -1] == 0)


def test_chunked_equals_unchunked(monkeypatch):
    zs, zt, mask, ids = _data(6, B=3, T=5, V=50)
    kw = dict(estimator="topk", k=9, reduction="token_mean")
    whole = _ours(token_divergence, zs, zt, mask, ids, **kw)
    from mlx_opd.method import divergence  # the MLX-ops rows chunk there

    monkeypatch.setattr(divergence, "ROW_CHUNK", 4)
    divergence._ROW_FNS.clear()
    chunked = _ours(token_divergence, zs, zt, mask, ids, **kw)
    divergence._ROW_FNS.clear()
    assert chunked[0] == pytest.approx(whole[0], rel=1e-6)
    np.testing.assert_allclose(chunked[1], whole[1], atol=1e-8)


def test_tail_is_safe_when_topk_holds_all_mass():
    rng = np.random.default_rng(7)
    zs = np.full((1, 3, 50), -60.0)
    zs[..., :5] = rng.normal(size=(1, 3, 5)) * 2 + 20
    zt = rng.normal(size=(1, 3, 50))
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        kw = dict(kind=kind, estimator="topk", k=5, tail=True, reduction="token_mean")
        v, g = _ours(token_divergence, zs, zt, np.ones((1, 3)), np.zeros((1, 3), int), **kw)
        assert np.isfinite(v) and np.isfinite(g).all()
        ov, og = oracle(zs, zt, **kw)
        assert v == pytest.approx(ov, rel=1e-4)
        if kind != "forward_kl":  # forward KL's tail gradient ~ pT / qS is legitimately huge
            np.testing.assert_allclose(g, og, atol=1e-5 * max(1.0, np.abs(og).max()))


def test_half_precision_inputs():
    zs, zt, mask, ids = _data(8, V=300)
    v32 = _ours(token_divergence, zs, zt, mask, ids)[0]
    for dtype in (mx.bfloat16, mx.float16):
        s, t = mx.array(zs).astype(dtype), mx.array(zt).astype(dtype)
        v, g = mx.value_and_grad(lambda z, t_: token_divergence(z, t_, mx.array(mask)))(s, t)
        assert g.dtype == dtype and float(v.item()) == pytest.approx(v32, rel=2e-2)


def test_bad_arguments_are_explained():
    z = mx.zeros((1, 2, 8))
    with pytest.raises(ValueError, match="kind must be one of"):
        token_divergence(z, z, kind="kl")
    with pytest.raises(ValueError, match="needs sampled_ids"):
        token_divergence(z, z, kind="reverse_kl", estimator="sampled")
    with pytest.raises(ValueError, match="reverse KL only"):
        token_divergence(z, z, estimator="sampled")
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        token_divergence(z, mx.zeros((1, 3, 8)))
    with pytest.raises(ValueError, match="loss_backend must be one of"):
        token_divergence(z, z, backend="tpu")
    if "metal" not in kernels.available():
        with pytest.raises(ValueError, match="no metal backend"):
            token_divergence(z, z, backend="metal")


def test_generalized_jsd_full_rows():
    zs, zt, _, _ = _data(9, B=1, T=3)
    ls = zs - np.log(np.exp(zs).sum(-1, keepdims=True))
    lt = zt - np.log(np.exp(zt).sum(-1, keepdims=True))
    got = loss.generalized_jsd(mx.array(lt, dtype=mx.float32), mx.array(ls, dtype=mx.float32))
    want, _ = oracle(zs, zt, kind="jsd", estimator="full", reduction="none")
    np.testing.assert_allclose(np.array(got), want, rtol=1e-5)


def test_every_combo_is_covered():
    assert len(list(itertools.product(COMBOS, REDUCTIONS))) == 30


# --- the fused hidden-state path ---------------------------------------------------------

def _hidden_case(seed=10, B=2, T=3, H=8, V=40):
    rng = np.random.default_rng(seed)
    hs, ht = rng.normal(size=(B, T, H)), rng.normal(size=(B, T, H))
    W = rng.normal(size=(V, H)) * 0.8
    mask = np.ones((B, T))
    mask[1, -1] = 0
    return hs, ht, W, mask, rng.integers(0, V, size=(B, T))


@pytest.mark.parametrize("chunk", [1, 4, 100])
@pytest.mark.parametrize("kind,estimator,tail", [("jsd", "topk", True), ("forward_kl", "topk", False),
                                                 ("reverse_kl", "full", True),
                                                 ("reverse_kl", "sampled", True)])
def test_fused_matches_oracle(kind, estimator, tail, chunk):
    hs, ht, W, mask, ids = _hidden_case()
    kw = dict(kind=kind, estimator=estimator, k=6, tail=tail, reduction="sequence_mean")
    want_v, want_gl = oracle(hs @ W.T, ht @ W.T, mask, sampled_ids=ids, **kw)
    f32 = lambda a: mx.array(np.asarray(a, np.float32))  # noqa: E731
    v, g = mx.value_and_grad(lambda h: loss.fused_token_divergence(
        h, f32(ht), f32(W), f32(mask), sampled_ids=mx.array(ids), chunk_size=chunk, **kw))(f32(hs))
    assert float(v.item()) == pytest.approx(want_v, rel=2e-5, abs=1e-6)
    want_g = want_gl @ W  # d/dh of logits = h W^T
    np.testing.assert_allclose(np.array(g), want_g, atol=2e-5 * np.abs(want_g).max())


def test_fused_trainable_head_weight_matches_oracle():
    hs, ht, W, mask, _ = _hidden_case(11)
    want_v, want_gl = oracle(hs @ W.T, ht @ W.T, mask, k=6)
    f32 = lambda a: mx.array(np.asarray(a, np.float32))  # noqa: E731
    v, gw = mx.value_and_grad(lambda w: loss.fused_token_divergence(
        f32(hs), f32(ht), w, f32(mask), k=6, chunk_size=4, head_weight_trainable=True))(f32(W))
    # the teacher is stop-gradient: only the student's logits h_s W^T carry gradient to W
    want_gw = want_gl.reshape(-1, W.shape[0]).T @ hs.reshape(-1, hs.shape[-1])
    assert float(v.item()) == pytest.approx(want_v, rel=2e-5)
    np.testing.assert_allclose(np.array(gw), want_gw, atol=2e-5 * np.abs(want_gw).max())


@pytest.mark.parametrize("head_kind", ["quantized", "tied", "tied_quantized"])
def test_fused_quantized_and_tied_heads(head_kind):
    import mlx.nn as nn

    mx.random.seed(3)
    H, V = 64, 200
    if head_kind == "quantized":
        head = nn.QuantizedLinear.from_linear(nn.Linear(H, V, bias=False), group_size=32, bits=4)
        apply = head
    else:
        head = nn.Embedding(V, H)
        if head_kind == "tied_quantized":
            head = nn.QuantizedEmbedding.from_embedding(head, group_size=32, bits=4)
        apply = head.as_linear
    hs, ht = mx.random.normal((2, 5, H)), mx.random.normal((2, 5, H))
    mask = mx.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    fused = mx.value_and_grad(lambda h: loss.fused_token_divergence(h, ht, head, mask,
                                                                    k=20, chunk_size=3))(hs)
    plain = mx.value_and_grad(lambda h: token_divergence(apply(h), apply(ht), mask, k=20))(hs)
    assert float(fused[0].item()) == pytest.approx(float(plain[0].item()), rel=1e-5)
    np.testing.assert_allclose(np.array(fused[1]), np.array(plain[1]), atol=1e-6)
    assert float(mx.abs(fused[1]).max().item()) > 0


@pytest.mark.parametrize("kind", ["forward_kl", "jsd", "reverse_kl"])
@pytest.mark.parametrize("floor_name", ["authors", "exact"])
def test_floored_tail_matches_the_oracle_and_its_gradient_sums_to_zero(kind, floor_name):
    """The authors' tail floor (default) and the exact tail, on students so peaked that
    the exact tail is far below 1e-7: value and gradient equal the float64 oracle's, the
    floors give different values (the case where they matter), and each row's gradient
    sums to 0 (the gradient of the value actually computed)."""
    from mlx_opd.method.loss import AUTHORS_TAIL_FLOOR, EXACT_TAIL_FLOOR, token_divergence

    from .oracle import oracle

    floor = AUTHORS_TAIL_FLOOR if floor_name == "authors" else EXACT_TAIL_FLOOR
    rng = np.random.default_rng(5)
    V, K = 300, 8
    zs = rng.normal(size=(2, 3, V)).astype(np.float32)
    zs[..., :K] += 30.0  # the top-K hold all but ~e^-30 of the mass
    zt = rng.normal(size=(2, 3, V)).astype(np.float32) * 2
    kw = dict(kind=kind, beta=0.5, estimator="topk", k=K, tail=True, reduction="token_mean")
    v, g = mx.value_and_grad(lambda z: token_divergence(z, mx.array(zt), tail_floor=floor,
                                                        backend="mlx", **kw))(mx.array(zs))
    ov, og = oracle(zs, zt, tail_floor=floor, **kw)
    assert float(v.item()) == pytest.approx(ov, rel=2e-5, abs=1e-6)
    # fp32 log-probs of logits ~30 carry ~30 * 1.2e-7 absolute error: 1e-4 of the largest
    np.testing.assert_allclose(np.array(g), og, rtol=0, atol=1e-4 * np.abs(og).max())
    gn = np.array(g)
    assert (np.abs(gn.sum(-1)) <= 1e-3 * np.abs(gn).sum(-1)).all()  # no dropped part
    other = EXACT_TAIL_FLOOR if floor_name == "authors" else AUTHORS_TAIL_FLOOR
    if kind == "forward_kl":
        assert abs(oracle(zs, zt, tail_floor=other, **kw)[0] - ov) > 1e-3 * abs(ov)
