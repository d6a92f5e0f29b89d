"""Use an optimised BLAS for MLX's Linux CPU backend.

MLX's Linux CPU wheel links a reference BLAS (fp32 matmul ~5 GFLOP/s on a 2-core build
machine). Loading OpenBLAS with RTLD_GLOBAL *before* `mlx.core` is imported makes MLX
resolve its BLAS symbols there (120-180 GFLOP/s measured on the same machine). This runs
when `mlx_opd` is imported; set MLX_OPD_NO_BLAS=1 to turn it off, or MLX_OPD_BLAS=/path
to name a library. macOS (Accelerate) and CUDA builds are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

# What preload() did, for `mlx-opd doctor`.
STATE: dict = {"path": None, "reason": "not attempted"}


def preload() -> dict:
    """Load an optimised BLAS globally if on Linux, allowed and found. Idempotent."""
    if STATE["reason"] != "not attempted":
        return STATE
    if not sys.platform.startswith("linux"):
        STATE["reason"] = "not Linux (MLX uses Accelerate/Metal there)"
    elif os.environ.get("MLX_OPD_NO_BLAS"):
        STATE["reason"] = "disabled by MLX_OPD_NO_BLAS"
    elif "mlx.core" in sys.modules:
        STATE["reason"] = "mlx.core was imported before mlx_opd; import mlx_opd first"
    else:
        paths = [os.environ["MLX_OPD_BLAS"]] if os.environ.get("MLX_OPD_BLAS") else CANDIDATES
        for path in paths:
            if os.path.exists(path):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError as e:
                    STATE["reason"] = f"failed to load {path}: {e}"
                    continue
                STATE.update(path=path, reason="loaded")
                return STATE
        if STATE["reason"] == "not attempted":
            STATE["reason"] = ("no optimised BLAS found; on Debian/Ubuntu: "
                               "apt-get install libopenblas0-pthread (make setup does it)")
    return STATE


def matmul_gflops(n: int = 1024, repeats: int = 3) -> float:
    """Measured fp32 matmul throughput of MLX on the default device, in GFLOP/s."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a @ b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
