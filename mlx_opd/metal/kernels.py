"""Fused top-K divergence kernels for Metal and CUDA, the dispatcher, and a self-check.

One algorithm, written once in portable sources beside this file:
    topk_divergence.h            helpers (threadgroup reductions, per-bucket math)
    topk_divergence.body         per-row forward: lse of both rows, top-K gather, tail, D, G
    topk_divergence_grad.body    the dense student gradient (backward kernel only)
    topk_divergence_store.body   writes the row's loss
    prelude_{metal,cuda}.h / prefix_{metal,cuda}.body   the backend's spelling of the
                                 macros and of the thread ids
`mx.fast.metal_kernel` / `mx.fast.cuda_kernel` compile prelude + helpers as the header
and prefix + body as the kernel body. The tests compile the very same files as C++
against a CPU emulation of the built-ins (tests/emulation/), so the kernel's logic is
checked on machines with neither Metal nor a GPU.

Dispatch (`loss_backend`): "auto" takes Metal, else CUDA, else the compiled MLX-ops path
(mlx_opd.loss); "metal" / "cuda" demand that backend; "mlx" forces the ops path. The first
use of a kernel runs `self_check`, which compares it with the ops path on a small random
batch; on a mismatch it warns and the ops path is used instead.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import mlx.core as mx

from ..config import LOSS_BACKENDS

SRC = Path(__file__).parent
THREADS = 256  # per threadgroup: one row per threadgroup, 8 SIMD groups of 32
BACKENDS = LOSS_BACKENDS


def kernel_source(backend: str, grad: bool) -> tuple[str, str]:
    """(header, body) for `backend` in {"metal", "cuda"}; `grad` adds the gradient section."""
    read = lambda name: (SRC / name).read_text()  # noqa: E731
    header = read(f"prelude_{backend}.h") + read("topk_divergence.h")
    body = read(f"prefix_{backend}.body") + read("topk_divergence.body")
    if grad:
        body += read("topk_divergence_grad.body")
    return header, body + read("topk_divergence_store.body")


def available() -> list[str]:
    out = []
    if mx.metal.is_available():
        out.append("metal")
    if mx.cuda.is_available():
        out.append("cuda")
    return out


@functools.cache
def _kernel(backend: str, grad: bool):
    """Built once per (backend, grad); MLX caches the compiled library per template."""
    header, body = kernel_source(backend, grad)
    make = mx.fast.metal_kernel if backend == "metal" else mx.fast.cuda_kernel
    return make(name="mlx_opd_topk_div" + ("_grad" if grad else ""),
                input_names=["zs", "zt", "ids", "params", "cot"],
                output_names=["loss", "grad"] if grad else ["loss"],
                source=body, header=header)


def run_kernel(backend: str, zs: mx.array, zt: mx.array, ids: mx.array, spec,
               cot: mx.array | None = None, grad: bool = False) -> list[mx.array]:
    """Launch the forward (loss [R]) or backward (loss [R], grad [R, V]) kernel."""
    R, V = zs.shape
    params = mx.array([spec.beta, 1.0 / spec.temperature, spec.log_tail_floor], dtype=mx.float32)
    cot = mx.ones((R,), mx.float32) if cot is None else cot.astype(mx.float32)
    shapes, dtypes = [(R,)], [mx.float32]
    if grad:
        shapes.append((R, V))
        dtypes.append(zs.dtype)
    return _kernel(backend, grad)(
        inputs=[zs, zt.astype(zs.dtype), ids.astype(mx.int32), params, cot],
        template=[("T", zs.dtype), ("K", int(ids.shape[1])), ("TAIL", bool(spec.tail)),
                  ("DIRECTION", int(spec.direction))],
        grid=(R * THREADS, 1, 1), threadgroup=(THREADS, 1, 1),
        output_shapes=shapes, output_dtypes=dtypes)


def make_kernel_rows(spec, backend: str):
    """custom_function (student [R,V], teacher [R,V], ids [R,K]) -> loss [R] on a kernel."""

    @mx.custom_function
    def rows(zs, zt, ids):
        return run_kernel(backend, zs, zt, ids, spec)[0]

    @rows.vjp
    def rows_vjp(primals, cotangent, _output):
        zs, zt, ids = primals
        _, g = run_kernel(backend, zs, zt, ids, spec, cot=cotangent, grad=True)
        return g, mx.zeros_like(zt), mx.zeros_like(ids)

    return rows


_SELF_CHECK: dict[str, dict] = {}


def self_check(backend: str, atol: float = 1e-4) -> dict:
    """Compare the `backend` kernel with the MLX-ops path (value and gradient) on a small
    random batch whose vocabulary straddles the threadgroup width. Cached per backend."""
    if backend in _SELF_CHECK:
        return _SELF_CHECK[backend]
    from ..loss import DivergenceSpec, _make_topk_rows, topk_ids

    key = mx.random.key(1234)
    k1, k2 = mx.random.split(key)
    zs = mx.random.normal((6, 1000), key=k1) * 3
    zt = mx.random.normal((6, 1000), key=k2) * 3
    ids = topk_ids(zs, 100)
    result = {"backend": backend, "ok": False}
    try:
        for kind_beta in ((2, 0.5), (0, 0.0), (1, 1.0)):
            spec = DivergenceSpec(kind="jsd", beta=kind_beta[1])
            ref_fn, ker_fn = _make_topk_rows(spec), make_kernel_rows(spec, backend)
            ref_v, ref_g = mx.value_and_grad(lambda z, f=ref_fn: f(z, zt, ids)[0].sum())(zs)
            ker_v, ker_g = mx.value_and_grad(lambda z, f=ker_fn: f(z, zt, ids).sum())(zs)
            err_v = float(mx.abs(ref_v - ker_v).item())
            err_g = float(mx.abs(ref_g - ker_g).max().item())
            result[f"direction{kind_beta[0]}"] = {"value_err": err_v, "grad_err": err_g}
            if not (err_v <= atol * max(1.0, abs(float(ref_v.item()))) and err_g <= atol):
                raise AssertionError(f"mismatch: value err {err_v:.2e}, grad err {err_g:.2e}")
        result["ok"] = True
    except Exception as e:  # a kernel that fails to build or run must not stop training
        result["error"] = f"{type(e).__name__}: {e}"
    _SELF_CHECK[backend] = result
    return result


def topk_rows_for(spec, backend: str = "auto", dtype=mx.float32):
    """The kernel-backed row function for `spec`, or None for the MLX-ops path."""
    if backend not in BACKENDS:
        raise ValueError(f"loss_backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "mlx":
        return None
    have = available()
    if backend in ("metal", "cuda") and backend not in have:
        raise ValueError(f"loss_backend={backend!r} but this machine has no {backend} "
                         f"backend (available: {have or ['cpu only']}); use 'auto' or 'mlx'")
    choice = backend if backend != "auto" else (have[0] if have else None)
    if choice is None or dtype not in (mx.float32, mx.float16, mx.bfloat16):
        return None
    check = self_check(choice)
    if not check["ok"]:
        warnings.warn(f"the {choice} divergence kernel failed its self-check "
                      f"({check.get('error')}); using the MLX-ops path instead", stacklevel=3)
        return None
    return _kernel_rows_cached(spec, choice)


@functools.cache
def _kernel_rows_cached(spec, backend):
    return make_kernel_rows(spec, backend)
