"""Fused top-K divergence kernels for Metal and CUDA, and how to launch them.

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

The dispatcher (which backend, and the self-check against the MLX-ops reference before a
kernel is first used) lives on the loss side, `mlx_opd.loss.topk_rows_for`: this module
sits below it and imports nothing from it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import mlx.core as mx

from mlx_opd.run.config import LOSS_BACKENDS

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


@functools.cache
def kernel_rows_cached(spec, backend):
    """make_kernel_rows, built once per (spec, backend)."""
    return make_kernel_rows(spec, backend)
