"""`mlx-opd doctor`: what this machine gives mlx-opd to work with."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def _total_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def report(measure: bool = True) -> dict:
    """Versions, backend, BLAS (with a measured matmul GFLOP/s) and memory limits."""
    import mlx.core as mx

    from mlx_opd.run import blas  # preload already ran in mlx_opd/__init__

    backend = "metal" if mx.metal.is_available() else "cuda" if mx.cuda.is_available() else "cpu"
    info = {
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "versions": {p: _version(p) for p in
                     ("mlx-opd", "mlx", "mlx-lm", "mlx-vlm", "transformers", "numpy", "pillow")},
        "backend": backend,
        "default_device": str(mx.default_device()),
        "device_info": mx.device_info() if hasattr(mx, "device_info") else {},
        "blas": dict(blas.STATE) if backend == "cpu" else {"path": None,
                                                         "reason": f"{backend} backend"},
        "memory": {"ram_bytes": _total_ram_bytes(), "mlx_memory_limit": mx.get_memory_limit()},
    }
    if measure:
        info["matmul_gflops_fp32"] = round(blas.matmul_gflops(), 1)
    info["loss_kernels"] = loss_kernel_report()
    return info


def loss_kernel_report() -> dict:
    """Which divergence path `loss_backend=auto` uses here, with each kernel's self-check."""
    from mlx_opd.metal import kernels
    from mlx_opd.method.loss import kernel_self_check

    have = kernels.available()
    checks = {b: kernel_self_check(b) for b in have}
    chosen = next((b for b in have if checks[b]["ok"]), "mlx")
    return {"available": have, "self_check": checks, "auto_uses": chosen}


def format_report(info: dict) -> str:
    gb = 1 << 30
    v = info["versions"]
    lines = [
        f"python        {info['python']} on {info['platform']}",
        "packages      " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"backend       {info['backend']} (default device {info['default_device']})",
    ]
    b = info["blas"]
    lines.append(f"BLAS          {'optimised: ' + b['path'] if b['path'] else 'reference / built-in'}"
                 f" ({b['reason']})")
    if "matmul_gflops_fp32" in info:
        lines.append(f"matmul fp32   {info['matmul_gflops_fp32']} GFLOP/s (1024x1024, best of 3)")
    m = info["memory"]
    ram = f"{m['ram_bytes'] / gb:.1f} GiB" if m["ram_bytes"] else "unknown"
    lines.append(f"memory        RAM {ram}; MLX memory limit {m['mlx_memory_limit'] / gb:.1f} GiB")
    k = info["loss_kernels"]
    if not k["available"]:
        lines.append("loss kernels  no Metal or CUDA here: loss_backend=auto uses the compiled "
                     "MLX-ops path")
    for b, c in k["self_check"].items():
        verdict = "ok" if c["ok"] else f"FAILED ({c.get('error')}), falling back to MLX ops"
        errs = ", ".join(f"{d}: value {e['value_err']:.1e} grad {e['grad_err']:.1e}"
                         for d, e in c.items() if isinstance(e, dict))
        lines.append(f"loss kernel   {b}: self-check {verdict}" + (f" [{errs}]" if errs else ""))
    if k["available"]:
        lines.append(f"loss backend  auto -> {k['auto_uses']}")
    return "\n".join(lines)
