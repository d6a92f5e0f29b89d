"""Benchmark names and variants for the command line (no imports, so `--help` is instant);
`registry.BENCHMARKS` maps the same names to adapters and a test keeps the two equal."""

BENCHMARK_NAMES = ("vstar", "zoombench", "hrbench4k", "hrbench8k", "mme-realworld",
                   "visualprobe", "mmvp", "cvbench", "mmstar", "pope")
VARIANTS = {"mme-realworld": ("en", "lite", "cn")}
