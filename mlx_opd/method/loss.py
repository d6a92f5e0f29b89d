"""Token-level divergences between the teacher's and the student's next-token distributions.

    token_divergence(student_logits, teacher_logits, mask)  # JSD b=0.5, top-100 + tail

Direction convention (the authors' recipe calls beta `alpha`):
    beta = 0       forward KL(T || S)
    beta = 1       reverse KL(S || T)
    0 < beta < 1   generalized JSD: beta * KL(T || M) + (1 - beta) * KL(S || M),
                   M = beta * T + (1 - beta) * S
`kind="forward_kl" | "reverse_kl"` name the endpoints directly; with `kind="jsd"` a beta of
exactly 0 or 1 means the corresponding KL (the mixture form itself tends to 0 there).

Estimators (what distribution the divergence is taken over, per token):
    full     the whole vocabulary.
    topk     the K ids with the largest STUDENT logits; both sides use true full-softmax
             log-probs gathered at those ids; with tail=True one more bucket holds the rest,
             log(1 - sum of the K probabilities), giving (K+1)-way distributions; with
             tail=False the K entries are renormalised instead.
    sampled  the policy-gradient estimate of reverse KL at the sampled token:
             (logp_S - logp_T).detach() * logp_S; needs `sampled_ids`, kind="reverse_kl".
Temperature divides both sides' logits. The teacher is stop-gradient: only
`student_logits` receives a gradient.

Departures from a textbook implementation, deliberately:
1. Gradients are analytic (`mx.custom_function` VJPs), not autograd through log_softmax,
   and the dense [rows, vocab] gradient is the only full-size buffer the top-K backward
   makes (see `_topk_vjp`).
2. The tail log-prob is computed directly as logsumexp over the ids outside the top-K
   minus the row's logsumexp, not as log(1 - sum_K p): no cancellation when the K ids hold
   almost all the mass. It is floored: by default at the authors' floor,
   log(-expm1(-1e-7)) ~ log(1e-7), which is exactly their log(-expm1(min(logsumexp(top-K
   log-probs), -1e-7))) (parity for scale-up; it matters with forward KL on very peaked
   students); `tail_floor=EXACT_TAIL_FLOOR` (1e-38) keeps the exact tail down to float32's
   range. A floored tail is a constant, and the gradient is that of the value computed.
3. Rows are processed in chunks in the forward pass so temporaries scale with the chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from mlx_opd.metal import kernels
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


# --- per-bucket math: pure functions of log-probs ------------------------------------

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


# --- the MLX-ops fast path: per-row losses with analytic VJPs ------------------------

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


def row_divergence(student_logits: mx.array, teacher_logits: mx.array, spec: DivergenceSpec,
                   sampled_ids: mx.array | None = None, backend: str = "auto") -> mx.array:
    """Per-row divergence [R] of flat rows [R, V] with the MLX-ops path or a kernel."""
    teacher_logits = mx.stop_gradient(teacher_logits)
    if spec.estimator == "sampled":
        if sampled_ids is None:
            raise ValueError("estimator='sampled' needs sampled_ids (the sampled token ids)")
        y = sampled_ids.reshape(-1).astype(mx.int32)
        fn = _row_fn("sampled", spec, _make_sampled_rows)
        return fn(student_logits, teacher_sampled_logprob(teacher_logits, y, spec), y)
    if spec.estimator == "topk":
        ids = topk_ids(mx.stop_gradient(student_logits), spec.k)
        kernel_rows = topk_rows_for(spec, backend, student_logits.dtype)
        if kernel_rows is not None:
            return kernel_rows(student_logits, teacher_logits, ids)
        fn = _row_fn("topk", spec, _make_topk_rows)
        return fn(student_logits, teacher_buckets(teacher_logits, ids, spec), ids)[0]
    fn = _row_fn("full", spec, _make_full_rows)
    return fn(student_logits, teacher_logits)


# --- the dispatcher: a Metal / CUDA kernel (mlx_opd.metal.kernels) or the ops path -------

_SELF_CHECK: dict[str, dict] = {}


def kernel_self_check(backend: str, atol: float = 1e-4) -> dict:
    """Compare the `backend` kernel with the MLX-ops path (value and gradient) on a small
    random batch whose vocabulary straddles the threadgroup width. Cached per backend."""
    if backend in _SELF_CHECK:
        return _SELF_CHECK[backend]
    k1, k2 = mx.random.split(mx.random.key(1234))
    zs = mx.random.normal((6, 1000), key=k1) * 3
    zt = mx.random.normal((6, 1000), key=k2) * 3
    ids = topk_ids(zs, 100)
    result = {"backend": backend, "ok": False}
    try:
        for direction, beta in ((2, 0.5), (0, 0.0), (1, 1.0)):
            spec = DivergenceSpec(kind="jsd", beta=beta)
            ref_fn, ker_fn = _make_topk_rows(spec), kernels.make_kernel_rows(spec, backend)
            lt = teacher_buckets(zt, ids, spec)
            ref_v, ref_g = mx.value_and_grad(lambda z, f=ref_fn, t=lt: f(z, t, ids)[0].sum())(zs)
            ker_v, ker_g = mx.value_and_grad(lambda z, f=ker_fn: f(z, zt, ids).sum())(zs)
            err_v = float(mx.abs(ref_v - ker_v).item())
            err_g = float(mx.abs(ref_g - ker_g).max().item())
            result[f"direction{direction}"] = {"value_err": err_v, "grad_err": err_g}
            if not (err_v <= atol * max(1.0, abs(float(ref_v.item()))) and err_g <= atol):
                raise AssertionError(f"mismatch: value err {err_v:.2e}, grad err {err_g:.2e}")
        result["ok"] = True
    except Exception as e:  # a kernel that fails to build or run must not stop training
        result["error"] = f"{type(e).__name__}: {e}"
    _SELF_CHECK[backend] = result
    return result


def topk_rows_for(spec: DivergenceSpec, backend: str = "auto", dtype=mx.float32):
    """The kernel-backed row function (student [R,V], teacher [R,V], ids) -> loss [R] for
    `spec`, or None for the MLX-ops path. "auto" takes Metal, else CUDA, else the ops
    path; "metal" / "cuda" demand that backend; "mlx" forces the ops path. A kernel is
    used only after it passed `kernel_self_check` (else a warning and the ops path)."""
    import warnings

    if backend not in kernels.BACKENDS:
        raise ValueError(f"loss_backend must be one of {kernels.BACKENDS}, got {backend!r}")
    if backend == "mlx":
        return None
    have = kernels.available()
    if backend in ("metal", "cuda") and backend not in have:
        raise ValueError(f"loss_backend={backend!r} but this machine has no {backend} "
                         f"backend (available: {have or ['cpu only']}); use 'auto' or 'mlx'")
    choice = backend if backend != "auto" else (have[0] if have else None)
    if choice is None or dtype not in (mx.float32, mx.float16, mx.bfloat16):
        return None
    check = kernel_self_check(choice)
    if not check["ok"]:
        warnings.warn(f"the {choice} divergence kernel failed its self-check "
                      f"({check.get('error')}); using the MLX-ops path instead", stacklevel=3)
        return None
    return kernels.kernel_rows_cached(spec, choice)


def reduce_tokens(per_token: mx.array, mask: mx.array | None, reduction: str) -> mx.array:
    """per_token [B, T] -> scalar ("token_mean": over all scored tokens of the batch,
    "sequence_mean": per sequence then over sequences with >= 1 scored token) or
    [B, T] masked ("none")."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    m = mx.ones(per_token.shape, mx.float32) if mask is None else mask.astype(mx.float32)
    masked = mx.where(m > 0, per_token, 0.0)  # where, not *, so a NaN in padding cannot leak
    if reduction == "none":
        return masked
    if reduction == "token_mean":
        return masked.sum() / mx.maximum(m.sum(), 1.0)
    n = m.sum(-1)
    seq = masked.sum(-1) / mx.maximum(n, 1.0)
    return seq.sum() / mx.maximum((n > 0).sum(), 1)


def token_divergence(student_logits: mx.array, teacher_logits: mx.array,
                     mask: mx.array | None = None, *, kind: str = "jsd", beta: float = 0.5,
                     estimator: str = "topk", k: int = 100, tail: bool = True,
                     temperature: float = 1.0, reduction: str = "token_mean",
                     sampled_ids: mx.array | None = None, backend: str = "auto",
                     tail_floor: float = AUTHORS_TAIL_FLOOR) -> mx.array:
    """Divergence between teacher and student next-token distributions.

    student_logits, teacher_logits: [B, T, V] (same response tokens, aligned positions);
    mask: [B, T], 1 where a token is scored; sampled_ids: [B, T] (estimator="sampled").
    Returns a scalar (token_mean / sequence_mean) or [B, T] (none). Only `student_logits`
    gets a gradient. `backend`: auto | metal | cuda | mlx (see mlx_opd.metal.kernels).
    """
    spec = DivergenceSpec(kind, beta, estimator, k, tail, temperature, tail_floor)
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 3:
        raise ValueError(f"student and teacher logits must both be [B, T, V], got "
                         f"{student_logits.shape} and {teacher_logits.shape}")
    B, T, V = student_logits.shape
    flat_ids = None if sampled_ids is None else sampled_ids.reshape(-1)
    rows = row_divergence(student_logits.reshape(B * T, V), teacher_logits.reshape(B * T, V),
                          spec, flat_ids, backend)
    return reduce_tokens(rows.reshape(B, T), mask, reduction)


# --- the low-memory path: hidden states -> LM head -> divergence, chunk by chunk ---------

FUSED_CHUNK = 128  # rows of [chunk, V] logits alive at a time


def head_function(head):
    """A callable [..., H] -> [..., V] for an LM head given as a module (Linear,
    QuantizedLinear, or a tied Embedding / QuantizedEmbedding), a callable or a weight [V, H]."""
    import mlx.nn as nn

    if isinstance(head, mx.array):
        return lambda h: h @ head.T
    if isinstance(head, (nn.Embedding, nn.QuantizedEmbedding)):
        return head.as_linear
    if callable(head):
        return head
    raise TypeError(f"head must be an nn.Module, a callable or a weight array, got {type(head)}")


def fused_token_divergence(student_hidden: mx.array, teacher_hidden: mx.array, head,
                           mask: mx.array | None = None, *, kind: str = "jsd",
                           beta: float = 0.5, estimator: str = "topk", k: int = 100,
                           tail: bool = True, temperature: float = 1.0,
                           reduction: str = "token_mean", sampled_ids: mx.array | None = None,
                           backend: str = "auto", chunk_size: int = FUSED_CHUNK,
                           head_weight_trainable: bool = False, teacher_head=None,
                           tail_floor: float = AUTHORS_TAIL_FLOOR,
                           with_agreement: bool = False):
    """`token_divergence` of head(student_hidden) and head(teacher_hidden) without ever
    holding [rows, V] logits for all rows: rows go through the head and the divergence
    `chunk_size` at a time, forward and backward, so the extra memory scales with the
    chunk, not with B * T.

    Head passes per row: the forward applies the student's and the teacher's head once
    each and keeps what the backward needs from the teacher (top-K: the student's ids and
    the teacher's bucket log-probs, tail included; sampled: the teacher's log-prob of the
    sampled id); the backward recomputes only the student's logits. Three passes in all
    (estimator "full" would need the teacher's whole [rows, V] distribution, so it
    recomputes the teacher's logits in the backward instead: four).

    student_hidden, teacher_hidden: [B, T, H] final hidden states at the response
    positions; head: see `head_function`. Gradients reach `student_hidden` and, with
    `head_weight_trainable` (head an nn.Linear without bias, a tied nn.Embedding, or a
    weight array), the head weight. Quantized heads are frozen. `teacher_head` (same
    forms; default: `head`) is the teacher's own head, e.g. in a full fine-tune where the
    teacher's weights differ from the student's; it never receives a gradient.
    `with_agreement`: also return the number of scored positions where the teacher's and
    the student's argmax tokens agree (from the same forward logits, no extra pass).
    """
    spec = DivergenceSpec(kind, beta, estimator, k, tail, temperature, tail_floor)
    if student_hidden.shape != teacher_hidden.shape or student_hidden.ndim != 3:
        raise ValueError(f"student and teacher hidden states must both be [B, T, H], got "
                         f"{student_hidden.shape} and {teacher_hidden.shape}")
    if spec.estimator == "sampled" and sampled_ids is None:
        raise ValueError("estimator='sampled' needs sampled_ids (the sampled token ids)")
    B, T, H = student_hidden.shape
    R = B * T
    y = mx.zeros((R,), mx.int32) if sampled_ids is None else sampled_ids.reshape(-1).astype(mx.int32)
    weight = None
    if head_weight_trainable:
        weight = head if isinstance(head, mx.array) else head.weight
        if not isinstance(head, mx.array) and "bias" in head:
            raise ValueError("head_weight_trainable supports heads without bias")
    est = spec.estimator
    row_fn = _row_fn(est, spec, {"topk": _make_topk_rows, "sampled": _make_sampled_rows,
                                 "full": _make_full_rows}[est])

    def student_head(w):
        return head_function(head) if w is None else (lambda h: h @ w.T)

    def teacher_logits(ht, w):
        apply = head_function(teacher_head) if teacher_head is not None else student_head(w)
        return mx.stop_gradient(apply(ht))

    def student_rows(zs, saved, ht, yc, w):
        """Per-row loss from the student's logits and what the forward kept."""
        if est == "topk":
            return row_fn(zs, saved[1], saved[0].astype(mx.int32))[0]
        if est == "sampled":
            return row_fn(zs, saved[0], yc)
        return row_fn(zs, teacher_logits(ht, w))  # "full": the teacher's pass again

    def forward_chunk(hs, ht, yc, w):
        zs, zt = student_head(w)(hs), teacher_logits(ht, w)
        agree = (mx.argmax(zs, -1) == mx.argmax(zt, -1)).astype(mx.float32)
        if est == "topk":
            ids = topk_ids(mx.stop_gradient(zs), spec.k)
            saved = [ids.astype(mx.float32), teacher_buckets(zt, ids, spec)]  # ids < 2^24
            kernel_rows = topk_rows_for(spec, backend, zs.dtype)
            value = (kernel_rows(zs, zt, ids) if kernel_rows is not None
                     else row_fn(zs, saved[1], ids)[0])
        elif est == "sampled":
            saved = [teacher_sampled_logprob(zt, yc, spec)]
            value = row_fn(zs, saved[0], yc)
        else:
            saved, value = [], row_fn(zs, zt)
        return [value, agree, *saved]

    @mx.custom_function
    def rows(hs, ht, w):
        fn = lambda h, t, yc: forward_chunk(h, t, yc, weight if w.size else None)  # noqa: E731
        outs = chunked(fn, [hs, ht, y], chunk_size)
        return tuple(mx.concatenate(list(x)) for x in zip(*outs))

    @rows.vjp
    def rows_vjp(primals, cotangents, outputs):
        hs, ht, w = primals
        cot, saved = cotangents[0], list(outputs[2:])
        trainable = bool(w.size)

        def chunk_grad(h, t, yc, c, *sv):
            if trainable:  # differentiate w.r.t. the weight too, summed over chunks
                return mx.vjp(lambda h_, w_: student_rows(student_head(w_)(h_), sv, t, yc, w_),
                              [h, w], [c])[1]
            return mx.vjp(lambda h_: student_rows(student_head(None)(h_), sv, t, yc, None),
                          [h], [c])[1]

        parts = chunked(chunk_grad, [hs, ht, y, cot, *saved], chunk_size)
        grad_h = mx.concatenate([p[0] for p in parts])
        if not trainable:
            return grad_h, mx.zeros_like(ht), mx.zeros_like(w)
        grad_w = parts[0][1]
        for p in parts[1:]:
            grad_w = grad_w + p[1]
        return grad_h, mx.zeros_like(ht), grad_w

    w_in = weight if weight is not None else mx.zeros((0,))
    per_row, agree, *_ = rows(student_hidden.reshape(R, H),
                              mx.stop_gradient(teacher_hidden).reshape(R, H), w_in)
    out = reduce_tokens(per_row.reshape(B, T), mask, reduction)
    if not with_agreement:
        return out
    m = mx.ones((B, T)) if mask is None else mask.astype(mx.float32)
    return out, mx.stop_gradient((agree.reshape(B, T) * m).sum())


# --- the textbook reference: plain ops + autograd (tests and benchmarks compare to it) ---

def token_divergence_reference(student_logits, teacher_logits, mask=None, *, kind="jsd",
                               beta=0.5, estimator="topk", k=100, tail=True, temperature=1.0,
                               reduction="token_mean", sampled_ids=None,
                               tail_floor=AUTHORS_TAIL_FLOOR):
    """Same contract as `token_divergence`, written the naive way: log_softmax of the whole
    [B, T, V] for both sides and autograd through everything."""
    spec = DivergenceSpec(kind, beta, estimator, k, tail, temperature, tail_floor)
    us = student_logits.astype(mx.float32) / temperature
    ut = mx.stop_gradient(teacher_logits).astype(mx.float32) / temperature
    ls = us - mx.logsumexp(us, -1, keepdims=True)
    lt = ut - mx.logsumexp(ut, -1, keepdims=True)
    if estimator == "sampled":
        y = sampled_ids[..., None].astype(mx.int32)
        ls_y = mx.take_along_axis(ls, y, -1)[..., 0]
        lt_y = mx.take_along_axis(lt, y, -1)[..., 0]
        return reduce_tokens(mx.stop_gradient(ls_y - lt_y) * ls_y, mask, reduction)
    if estimator == "topk":
        B, T, V = us.shape
        ids = topk_ids(mx.stop_gradient(us.reshape(B * T, V)), k).reshape(B, T, -1)
        tails = ()
        if tail:  # log of the probability mass outside the top-K, each side
            out = mx.put_along_axis(mx.zeros(us.shape), ids, mx.array(-mx.inf), axis=-1)
            tails = (mx.maximum(mx.logsumexp(ls + out, -1, keepdims=True), spec.log_tail_floor),
                     mx.maximum(mx.logsumexp(lt + out, -1, keepdims=True), spec.log_tail_floor))
        ls, lt = mx.take_along_axis(ls, ids, -1), mx.take_along_axis(lt, ids, -1)
        if tail:
            ls, lt = mx.concatenate([ls, tails[0]], -1), mx.concatenate([lt, tails[1]], -1)
        else:  # renormalise over the K
            ls = ls - mx.logsumexp(ls, -1, keepdims=True)
            lt = lt - mx.logsumexp(lt, -1, keepdims=True)
    d, _ = bucket_terms(ls, lt, spec.direction, beta)
    return reduce_tokens(d.sum(-1), mask, reduction)
