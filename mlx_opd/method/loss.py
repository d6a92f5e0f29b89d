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

import mlx.core as mx

from mlx_opd.metal import kernels
from mlx_opd.method.divergence import (  # noqa: F401  (moved to divergence.py)
    AUTHORS_TAIL_FLOOR,
    EXACT_TAIL_FLOOR,
    REDUCTIONS,
    ROW_CHUNK,
    DivergenceSpec,
    _make_full_rows,
    _make_sampled_rows,
    _make_topk_rows,
    _row_fn,
    bucket_terms,
    chunked,
    generalized_jsd,
    teacher_buckets,
    teacher_sampled_logprob,
    topk_ids,
)

# --- the rows, by the MLX-ops path (divergence.py) or a kernel ------------------------

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
