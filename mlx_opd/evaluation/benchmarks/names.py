"""Benchmark names and variants for the command line (no imports, so `--help` is instant);
`registry.BENCHMARKS` maps the same names to adapters and a test keeps the two equal."""

BENCHMARK_NAMES = ("vstar", "zoombench", "hrbench4k", "hrbench8k", "mme-realworld",
                   "visualprobe", "mmvp", "cvbench", "mmstar", "pope")
VARIANTS = {"mme-realworld": ("en", "lite", "cn")}

# A benchmark answer's token cap (item.Benchmark.max_tokens): enough for a model's preamble
# before its letter (theirs: 32,768, infer.py via run_eval.sh:29; a Mac run would spend
# minutes on a rambling answer). Here, with the names, so `eval --help` reads it cheaply.
MAX_TOKENS = 256
