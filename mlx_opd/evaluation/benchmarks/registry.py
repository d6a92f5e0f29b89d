"""The benchmarks `mlx-opd eval --benchmark NAME` knows, by name and variant."""

from __future__ import annotations

from mlx_opd.evaluation.benchmarks import (
    cvbench,
    hrbench,
    mme_realworld,
    mmstar,
    mmvp,
    pope,
    visualprobe,
    vstar,
    zoombench,
)
from mlx_opd.evaluation.benchmarks.item import Benchmark
from mlx_opd.run.config import choose

# name -> {variant -> adapter}; the first variant is the default
BENCHMARKS: dict[str, dict[str, Benchmark]] = {
    "vstar": {"default": vstar.BENCHMARK},
    "zoombench": {"default": zoombench.BENCHMARK},
    "hrbench4k": {"default": hrbench.HRBENCH_4K},
    "hrbench8k": {"default": hrbench.HRBENCH_8K},
    "mme-realworld": {"en": mme_realworld.MME_REALWORLD, "lite": mme_realworld.MME_REALWORLD_LITE,
                      "cn": mme_realworld.MME_REALWORLD_CN},
    "visualprobe": {"default": visualprobe.BENCHMARK},
    "mmvp": {"default": mmvp.BENCHMARK},
    "cvbench": {"default": cvbench.BENCHMARK},
    "mmstar": {"default": mmstar.BENCHMARK},
    "pope": {"default": pope.BENCHMARK},
}
NAMES = tuple(BENCHMARKS)


def get(name: str, variant: str | None = None) -> Benchmark:
    """The adapter for `name` (and `variant`, default the first); unknown values name the
    nearest valid one."""
    choose("--benchmark", name, NAMES)
    variants = BENCHMARKS[name]
    if variant is None:
        return next(iter(variants.values()))
    variant = variant.lower()
    choose(f"--variant for {name}", variant, tuple(variants))
    return variants[variant]
