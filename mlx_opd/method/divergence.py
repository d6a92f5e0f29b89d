"""The token-level divergences as pure functions, and the MLX-ops rows: the divergence's
spec, per-bucket terms of KL / JSD on log-probs (bucket_terms, generalized_jsd), the top-K
ids and the teacher's buckets, and per-row losses with analytic VJPs for the top-K,
full-vocabulary and sampled estimators. loss.py dispatches between these rows and the
kernels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from mlx_opd.run.config import ESTIMATORS, LOSS_KINDS, STEP_REDUCTIONS

KINDS = LOSS_KINDS


REDUCTIONS = STEP_REDUCTIONS + ("none",)


AUTHORS_TAIL_FLOOR = -math.expm1(-1e-7)  # the tail probability the authors' clamp binds at


EXACT_TAIL_FLOOR = 1e-38                 # ~ the smallest normal float32


def chunked(fn, arrays, size: int):
    """[fn(*[x[a:a + size] for x in arrays]) for each chunk], each chunk ordered after the
    previous chunk's outputs (mx.depends): MLX would otherwise schedule the independent
    chunks side by side and hold all their [chunk, V] temporaries at once."""
    outs, prev = [], None
    for a in range(0, arrays[0].shape[0], size):
        parts = [x[a:a + size] for x in arrays]
        if prev is not None:
            parts = mx.depends(parts, prev)
        out = fn(*parts)
        prev = list(out) if isinstance(out, (tuple, list)) else [out]
        outs.append(out)
    return outs


ROW_CHUNK = 64  # rows per chunk in the MLX-ops path: bounds its [chunk, V] temporaries


@dataclass(frozen=True)
class DivergenceSpec:
    """Everything that defines a per-token divergence; validated once."""

    kind: str = "jsd"
    beta: float = 0.5
    estimator: str = "topk"
    k: int = 100
    tail: bool = True
    temperature: float = 1.0
    tail_floor: float = AUTHORS_TAIL_FLOOR  # the tail bucket's probability floor

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if self.estimator == "topk" and self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.tail_floor < 1.0:
            raise ValueError(f"tail_floor must be in (0, 1), got {self.tail_floor}")
        if self.estimator == "sampled" and self.kind != "reverse_kl":
            raise ValueError("the sampled-token estimator estimates reverse KL only; "
                             "pass kind='reverse_kl'")

    @property
    def log_tail_floor(self) -> float:
        return math.log(self.tail_floor)

    @property
    def direction(self) -> int:
        """0 forward KL, 1 reverse KL, 2 mixture JSD (beta strictly inside (0, 1))."""
        if self.kind == "forward_kl" or (self.kind == "jsd" and self.beta == 0.0):
            return 0
        if self.kind == "reverse_kl" or (self.kind == "jsd" and self.beta == 1.0):
            return 1
        return 2


def bucket_terms(student_lp: mx.array, teacher_lp: mx.array, direction: int, beta: float):
    """Per-bucket divergence d and its partial derivative g = dD/d(student log-prob),
    treating the student's bucket log-probs as free variables.

    forward KL: d = pT (lT - lS)               g = -pT
    reverse KL: d = pS (lS - lT)               g = pS (lS - lT + 1)
    JSD:        d = b pT (lT - lM) + (1-b) pS (lS - lM),  lM = log(b pT + (1-b) pS)
                g = (1-b) pS (lS - lM)        (the lM terms cancel)
    """
    if direction == 0:
        pt = mx.exp(teacher_lp)
        return pt * (teacher_lp - student_lp), -pt
    ps = mx.exp(student_lp)
    if direction == 1:
        diff = student_lp - teacher_lp
        return ps * diff, ps * (diff + 1.0)
    pt = mx.exp(teacher_lp)
    lm = mx.logaddexp(teacher_lp + math.log(beta), student_lp + math.log1p(-beta))
    d = beta * pt * (teacher_lp - lm) + (1.0 - beta) * ps * (student_lp - lm)
    return d, (1.0 - beta) * ps * (student_lp - lm)


def generalized_jsd(teacher_logprobs: mx.array, student_logprobs: mx.array,
                    beta: float = 0.5) -> mx.array:
    """Per-row divergence [...] between full log-prob rows [..., V] (beta convention above)."""
    spec = DivergenceSpec(kind="jsd", beta=beta, estimator="full")
    d, _ = bucket_terms(student_logprobs, teacher_logprobs, spec.direction, beta)
    return d.sum(axis=-1)


def topk_ids(student_logits: mx.array, k: int) -> mx.array:
    """Ids [R, k] of the k largest student logits per row (order within the k arbitrary)."""
    R, V = student_logits.shape
    if k >= V:
        return mx.broadcast_to(mx.arange(V, dtype=mx.int32), (R, V))
    # Chunked, and partitioned at V - k so no negated copy is made. Each chunk's slice is
    # copied out (a slice is a view that would keep the whole [chunk, V] partition alive
    # until the concatenation), so temporaries scale with ROW_CHUNK rows, not with R.
    part = lambda z: mx.contiguous(mx.argpartition(z, kth=V - k, axis=-1)[:, V - k:])  # noqa: E731
    return mx.concatenate(chunked(part, [student_logits], ROW_CHUNK)).astype(mx.int32)


def _scaled(x: mx.array, inv_temp: float) -> mx.array:
    x = x.astype(mx.float32)
    return x if inv_temp == 1.0 else x * inv_temp


def _topk_side(spec: DivergenceSpec):
    """(z [R,V], ids [R,K]) -> (bucket log-probs [R, K(+1)], lse [R]) of one side.

    ONE exp-pass over the vocabulary (the CPU's bottleneck): lse_rest = logsumexp over
    the ids outside the top-K, then lse = logaddexp(lse_rest, lse_K) from the K gathered
    logits, and the exact tail log-prob lse_rest - lse (floored). Renormalised top-K
    (tail=False) needs no full pass: its buckets are u_K - lse_K."""
    inv_temp, tail, log_floor = 1.0 / spec.temperature, spec.tail, spec.log_tail_floor

    def side(z, ids):
        u_k = _scaled(mx.take_along_axis(z, ids, -1), inv_temp)  # gather, then scale
        lse_k = mx.logsumexp(u_k, -1)
        if not tail:
            return u_k - lse_k[:, None], lse_k
        rest = mx.put_along_axis(_scaled(z, inv_temp), ids, mx.array(-mx.inf), axis=-1)
        lse_rest = mx.logsumexp(rest, -1)
        lse = mx.logaddexp(lse_rest, lse_k)
        t = mx.maximum(lse_rest - lse, log_floor)
        return mx.concatenate([u_k - lse[:, None], t[:, None]], -1), lse

    return side


def teacher_buckets(teacher_logits: mx.array, ids: mx.array, spec: DivergenceSpec) -> mx.array:
    """The teacher's bucket log-probs [R, K(+1)] at the student's top-K `ids` (tail last):
    all the top-K divergence needs from the teacher, computed once in the forward pass
    and kept for the backward (no second teacher head pass)."""
    side = _topk_side(spec)
    return mx.concatenate(chunked(lambda z, i: side(z, i)[0],
                                  [mx.stop_gradient(teacher_logits), ids], ROW_CHUNK))


def _make_topk_rows(spec: DivergenceSpec):
    """custom_function (student [R,V], teacher buckets [R,K(+1)], ids [R,K]) ->
    (loss [R], student lse [R], student tail log-prob [R]). The teacher enters only
    through its bucket log-probs (`teacher_buckets`)."""
    inv_temp, direction, beta, tail = 1.0 / spec.temperature, spec.direction, spec.beta, spec.tail
    log_floor = spec.log_tail_floor
    side = _topk_side(spec)

    def chunk_rows(zs_c, lt_c, i):
        ls, lse_s = side(zs_c, i)
        tail_s = ls[:, -1] if tail else mx.zeros_like(lse_s)
        return bucket_terms(ls, lt_c, direction, beta)[0].sum(-1), lse_s, tail_s

    @mx.custom_function
    def rows(zs, lt, ids):
        outs = chunked(chunk_rows, [zs, lt, ids], ROW_CHUNK)
        return tuple(mx.concatenate(list(x)) for x in zip(*outs))

    @rows.vjp
    def rows_vjp(primals, cotangents, outputs):
        zs, lt, ids = primals
        cot = cotangents[0].astype(mx.float32) * inv_temp
        _, lse_s, tail_s = outputs
        ls = _scaled(mx.take_along_axis(zs, ids, -1), inv_temp) - lse_s[:, None]
        if tail:
            ls = mx.concatenate([ls, tail_s[:, None]], -1)
        _, g = bucket_terms(ls, lt, direction, beta)
        G = g.sum(-1)
        live = cot != 0  # padded rows get exactly 0, even if their logits are garbage
        if tail:
            q = mx.exp(ls[:, -1])  # the tail probability
            # a floored tail is a constant: no gradient through it (G without its term)
            floored = ls[:, -1] <= log_floor
            G_eff = mx.where(floored, G - g[:, -1], G)
            dense_coef = mx.where(live, cot * mx.where(floored, -G_eff, g[:, -1] / q - G), 0.0)
            fix = cot[:, None] * (g[:, :-1] - mx.exp(ls[:, :-1]) * G_eff[:, None])
            grad = _dense_softmax_scaled(zs, lse_s, dense_coef, live,
                                         mx.array(inv_temp, mx.float32))
        else:  # only the K ids carry gradient
            fix = cot[:, None] * (g - mx.exp(ls) * G[:, None])
            grad = mx.zeros(zs.shape, zs.dtype)
        fix = mx.where(live[:, None], fix, 0.0)
        grad = mx.put_along_axis(grad, ids, fix.astype(grad.dtype), axis=-1)
        return grad, mx.zeros_like(lt), mx.zeros_like(ids)

    return rows


@mx.compile
def _dense_softmax_scaled(zs, lse, coef, live, inv_temp):
    """p_j * coef per row, 0 on rows that are not live: d loss / d z_j for the ids outside
    the top-K, with coef = (g_tail / q - G) * cot / T. One fused elementwise pass, so the
    dense gradient is the only [R, V] buffer it makes."""
    p = mx.exp(zs.astype(mx.float32) * inv_temp - lse[:, None])
    return mx.where(live[:, None], p * coef[:, None], 0.0).astype(zs.dtype)


def _make_full_rows(spec: DivergenceSpec):
    """custom_function (student [R,V], teacher [R,V]) -> loss [R], full vocabulary."""
    inv_temp, direction, beta = 1.0 / spec.temperature, spec.direction, spec.beta

    def logprobs(zs, zt):
        us, ut = _scaled(zs, inv_temp), _scaled(zt, inv_temp)
        return (us - mx.logsumexp(us, -1, keepdims=True), ut - mx.logsumexp(ut, -1, keepdims=True))

    @mx.custom_function
    def rows(zs, zt):
        def chunk_rows(s, t):
            ls, lt = logprobs(s, t)
            return bucket_terms(ls, lt, direction, beta)[0].sum(-1)

        return mx.concatenate(chunked(chunk_rows, [zs, zt], ROW_CHUNK))

    @rows.vjp
    def rows_vjp(primals, cotangent, _output):
        zs, zt = primals

        def chunk_grad(s, t, c):
            ls, lt = logprobs(s, t)
            _, g = bucket_terms(ls, lt, direction, beta)
            c = c[:, None].astype(mx.float32) * inv_temp
            return mx.where(c != 0, c * (g - mx.exp(ls) * g.sum(-1, keepdims=True)),
                            0.0).astype(zs.dtype)

        return mx.concatenate(chunked(chunk_grad, [zs, zt, cotangent], ROW_CHUNK)), mx.zeros_like(zt)

    return rows


def teacher_sampled_logprob(teacher_logits: mx.array, y: mx.array,
                            spec: DivergenceSpec) -> mx.array:
    """The teacher's log-prob [R] of each sampled id: all the sampled estimator needs
    from the teacher."""
    ut = _scaled(mx.stop_gradient(teacher_logits), 1.0 / spec.temperature)
    return mx.take_along_axis(ut, y[:, None], -1)[:, 0] - mx.logsumexp(ut, -1)


def _make_sampled_rows(spec: DivergenceSpec):
    """custom_function (student [R,V], teacher log-prob of y [R], sampled ids y [R]) ->
    (lS(y) - lT(y)).detach() * lS(y) per row. Its gradient, diff * (onehot(y) - pS) / T,
    is the policy-gradient estimate of reverse KL at the sampled token (not the gradient
    of the value itself)."""
    inv_temp = 1.0 / spec.temperature

    def parts(zs, lt_y, y):
        us = _scaled(zs, inv_temp)
        lse_s = mx.logsumexp(us, -1)
        ls_y = mx.take_along_axis(us, y[:, None], -1)[:, 0] - lse_s
        return us, lse_s, ls_y, ls_y - lt_y

    @mx.custom_function
    def rows(zs, lt_y, y):
        _, _, ls_y, diff = parts(zs, lt_y, y)
        return diff * ls_y

    @rows.vjp
    def rows_vjp(primals, cotangent, _output):
        zs, lt_y, y = primals
        us, lse_s, _, diff = parts(zs, lt_y, y)
        c = cotangent.astype(mx.float32) * diff * inv_temp
        live = (cotangent != 0)[:, None]
        grad = -mx.exp(us - lse_s[:, None]) * c[:, None]
        grad = mx.put_along_axis(grad, y[:, None], mx.take_along_axis(grad, y[:, None], -1)
                                 + c[:, None], axis=-1)
        return mx.where(live, grad, 0.0).astype(zs.dtype), mx.zeros_like(lt_y), mx.zeros_like(y)

    return rows


_ROW_FNS: dict = {}  # (estimator, spec) -> custom_function, built once per spec


def _row_fn(estimator: str, spec: DivergenceSpec, make):
    key = (estimator, spec)
    if key not in _ROW_FNS:
        _ROW_FNS[key] = make(spec)
    return _ROW_FNS[key]
