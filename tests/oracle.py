"""A float64 numpy oracle for token_divergence: value and gradient w.r.t. student logits.

Written independently of mlx_opd.loss: the divergence is evaluated on explicit bucket
distributions, and the gradient is J^T g with J the Jacobian of the student's bucket
log-probs w.r.t. its logits (applied row by row, never materialised) and g the
un-simplified derivative of the divergence w.r.t. those log-probs. `finite_difference`
checks the oracle itself.
"""

import numpy as np


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def _direction(kind, beta):
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return 0
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return 1
    return 2


def _divergence_and_g(ls, lt, direction, beta):
    """D and dD/d(ls) over bucket log-probs (1-D), without algebraic simplification."""
    ps, pt = np.exp(ls), np.exp(lt)
    if direction == 0:
        return float((pt * (lt - ls)).sum()), -pt
    if direction == 1:
        return float((ps * (ls - lt)).sum()), ps * (ls - lt) + ps
    m = beta * pt + (1 - beta) * ps
    lm = np.log(m)
    dlm = (1 - beta) * ps / m  # d lm_b / d ls_b
    D = float((beta * pt * (lt - lm)).sum() + ((1 - beta) * ps * (ls - lm)).sum())
    g = beta * pt * (-dlm) + (1 - beta) * (ps * (ls - lm) + ps - ps * dlm)
    return D, g


AUTHORS_FLOOR = -np.expm1(-1e-7)  # the authors' log(-expm1(min(lse_K, -1e-7))) clamp


def _row(zs, zt, kind, beta, estimator, k, tail, temperature, y, ids=None,
         tail_floor=AUTHORS_FLOOR):
    """Value and gradient (w.r.t. zs) of one row. The gradient is sum_b g_b * dls_b/du with
    each bucket's log-prob derivative written out: a full-softmax log-prob ls_i has
    d ls_i / du = e_i - p; the tail log(sum_rest p) has (1_rest p / q) - p; a renormalised
    top-K log-prob has e_i - p' on the K ids and 0 elsewhere."""
    u, w = zs / temperature, zt / temperature
    ls_full, lt_full = _log_softmax(u), _log_softmax(w)
    V = u.shape[0]
    p = np.exp(ls_full)
    if estimator == "sampled":
        diff = ls_full[y] - lt_full[y]
        grad = -diff * p
        grad[y] += diff
        return diff * ls_full[y], grad / temperature
    direction = _direction(kind, beta)
    if estimator == "full":
        D, g = _divergence_and_g(ls_full, lt_full, direction, beta)
        return D, (g - p * g.sum()) / temperature
    if ids is None:
        ids = np.argsort(-zs, kind="stable")[:k]
    grad = np.zeros(V)
    if tail:
        rest = np.setdiff1d(np.arange(V), ids)
        q_s = p[rest].sum()
        floor = np.log(tail_floor)
        log_q_s = np.log(q_s) if q_s > 0 else -np.inf
        ls = np.append(ls_full[ids], max(log_q_s, floor))
        q_t = np.exp(lt_full[rest]).sum()
        lt = np.append(lt_full[ids], max(np.log(q_t) if q_t > 0 else -np.inf, floor))
        D, g = _divergence_and_g(ls, lt, direction, beta)
        grad[ids] += g[:k]
        if log_q_s > floor:  # the tail bucket moves with the logits
            grad[rest] += g[k] * p[rest] / q_s
            grad -= p * g.sum()
        else:  # floored: a constant bucket, no gradient through it
            grad -= p * g[:k].sum()
    else:
        ls = _log_softmax(ls_full[ids])
        lt = _log_softmax(lt_full[ids])
        D, g = _divergence_and_g(ls, lt, direction, beta)
        grad[ids] = g - np.exp(ls) * g.sum()
    return D, grad / temperature


def oracle(zs, zt, mask=None, *, kind="jsd", beta=0.5, estimator="topk", k=100, tail=True,
           temperature=1.0, reduction="token_mean", sampled_ids=None, topk_ids=None,
           tail_floor=AUTHORS_FLOOR):
    """(value, d value / d zs) in float64; zs, zt [B, T, V]; value scalar or [B, T].
    `topk_ids` [B, T, k] overrides the oracle's own choice of the top-K ids (for ties)."""
    zs, zt = np.asarray(zs, np.float64), np.asarray(zt, np.float64)
    B, T, V = zs.shape
    m = np.ones((B, T)) if mask is None else np.asarray(mask, np.float64)
    d, grads = np.zeros((B, T)), np.zeros((B, T, V))
    for b in range(B):
        for t in range(T):
            y = None if sampled_ids is None else int(np.asarray(sampled_ids)[b, t])
            ids = None if topk_ids is None else np.asarray(topk_ids)[b, t]
            d[b, t], grads[b, t] = _row(zs[b, t], zt[b, t], kind, beta, estimator, k, tail,
                                        temperature, y, ids, tail_floor)
    if reduction == "none":
        return d * m, grads * m[..., None]
    if reduction == "token_mean":
        w = m / max(m.sum(), 1.0)
    else:
        n = m.sum(-1, keepdims=True)
        w = m / np.maximum(n, 1.0) / max((n > 0).sum(), 1)
    return float((w * d).sum()), grads * w[..., None]


def finite_difference(zs, zt, coords, eps=1e-6, **kw):
    """Central differences of the oracle's scalar value at the given (b, t, v) coords."""
    zs = np.asarray(zs, np.float64)
    out = []
    for c in coords:
        hi, lo = zs.copy(), zs.copy()
        hi[c] += eps
        lo[c] -= eps
        out.append((oracle(hi, zt, **kw)[0] - oracle(lo, zt, **kw)[0]) / (2 * eps))
    return np.array(out)
