"""Forward+backward time and peak memory of the token-level divergence, all variants in one run.

    python benchmarks/loss.py --json runs/bench/loss.json          # the full grid
    python benchmarks/loss.py --json out.json --rows 256 --quick   # a few seconds' worth

Variants (the divergence is top-K (K=100) JSD beta 0.5 with the tail bucket unless noted):
    naive        plain MLX ops + autograd (log_softmax of both sides, gather, divergence)
    mlx_lm_kl    mlx-lm's kl_div_loss, full vocabulary forward KL (the nearest peer)
    mlx_lm_js    mlx-lm's js_div_loss, full vocabulary JS
    ours         mlx_opd.method.loss.token_divergence, once per available backend (mlx, metal, cuda)
    fused        mlx_opd.method.loss.fused_token_divergence from hidden states [rows, H] through an
                 LM head [V, H] (includes the head matmuls, so not the same workload)
Reported per record: median seconds of value_and_grad w.r.t. the student input, the
peak memory above what the inputs already hold (`peak_bytes`), the ratio of both to naive
on the same shape, and effective bytes/s (4 * rows * V * itemsize: read both rows, read the
student again and write the gradient) against a memory-copy bandwidth measured here.
Shapes whose naive (or peer) run would not fit in memory are recorded as skipped.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

# isort: off
import mlx_opd  # noqa: F401  (first: preloads the BLAS before mlx.core is imported)
import mlx.core as mx
import mlx.nn as nn
# isort: on

from mlx_opd.metal import kernels
from mlx_opd.method.loss import fused_token_divergence, token_divergence, token_divergence_reference

MEM_BUDGET = 0.7  # fraction of the machine's memory a single variant may plan to use


def _ram_bytes() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measure(fn, args, repeats: int):
    """Median seconds and extra peak bytes of fn(*args) (evaluated), after one warm-up."""
    mx.eval(fn(*args))
    times, peak = [], 0
    for _ in range(repeats):
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        t = time.perf_counter()
        out = fn(*args)
        mx.eval(out)
        times.append(time.perf_counter() - t)
        peak = max(peak, mx.get_peak_memory() - base)
        del out
    return statistics.median(times), peak


def copy_bandwidth(nbytes: int = 1 << 29) -> float:
    x = mx.random.normal((nbytes // 4,))
    mx.eval(x)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        mx.eval(x + 0)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best  # read + write


def logits_variants(backends):
    out = {
        "naive": lambda s, t: token_divergence_reference(s, t),
        "mlx_lm_kl": None,
        "mlx_lm_js": None,
    }
    from mlx_lm.tuner.losses import js_div_loss, kl_div_loss

    # mlx-lm: kl_div_loss(logits_q, logits_p) is KL(p || q): q = student, p = teacher.
    out["mlx_lm_kl"] = lambda s, t: kl_div_loss(s, mx.stop_gradient(t)).mean()
    out["mlx_lm_js"] = lambda s, t: js_div_loss(s, mx.stop_gradient(t)).mean()
    for b in backends:
        out[f"ours[{b}]"] = (lambda b_: lambda s, t: token_divergence(s, t, backend=b_))(b)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--rows", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--vocab", type=int, nargs="+", default=[151936, 248320])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--hidden", type=int, default=1024, help="hidden size for the fused path")
    ap.add_argument("--quick", action="store_true", help="ours + naive + fused only, 1 repeat")
    args = ap.parse_args()

    backends = ["mlx"] + kernels.available()
    ram = _ram_bytes()
    bw = copy_bandwidth()
    records = []

    def add(rec):
        records.append(rec)
        extra = (f"{rec['seconds']:.3f}s peak {rec['peak_bytes'] / 1e9:.3f} GB"
                 if "seconds" in rec else f"skipped: {rec['skipped']}")
        print(f"{rec['variant']:12s} {rec['dtype']:8s} rows {rec['rows']:5d} vocab {rec['vocab']:6d}  {extra}",
              flush=True)

    for dtype_name in args.dtypes:
        dtype = getattr(mx, dtype_name)
        for V in args.vocab:
            for R in args.rows:
                if dtype_name != "float32" and R > 256:
                    continue  # bf16 is slow on CPU; one size is enough to show the trend
                item = dtype.size
                arr = R * V * item
                zs = mx.random.normal((1, R, V)).astype(dtype)
                zt = mx.random.normal((1, R, V)).astype(dtype)
                mx.eval(zs, zt)
                repeats = 1 if args.quick else (3 if R <= 256 else 2)
                naive = None
                variants = logits_variants(backends)
                if args.quick:
                    variants = {k: v for k, v in variants.items() if not k.startswith("mlx_lm")}
                for name, fn in variants.items():
                    base = {"variant": name.split("[")[0], "backend": name[5:-1] if "[" in name
                            else "mlx", "rows": R, "vocab": V, "dtype": dtype_name}
                    # naive-style variants hold ~8 [R, V] fp32 buffers beyond the inputs
                    planned = 2 * arr + (8 if not name.startswith("ours") else 2) * R * V * 4
                    if planned > MEM_BUDGET * ram:
                        add({**base, "skipped": f"needs ~{planned / 1e9:.0f} GB, machine has "
                                                f"{ram / 1e9:.0f} GB"})
                        continue
                    secs, peak = measure(mx.value_and_grad(fn), [zs, zt], repeats)
                    rec = {**base, "seconds": secs, "peak_bytes": int(peak),
                           "effective_bytes_per_s": 4 * arr / secs, "copy_bytes_per_s": bw}
                    if name == "naive":
                        naive = rec
                    if naive is not None:
                        rec["time_vs_naive"] = secs / naive["seconds"]
                        rec["peak_vs_naive"] = peak / max(naive["peak_bytes"], 1)
                    add(rec)
                del zs, zt
                mx.clear_cache()
                if dtype_name == "float32" and V == args.vocab[0]:
                    head = nn.Linear(args.hidden, V, bias=False)
                    hs = mx.random.normal((1, R, args.hidden))
                    ht = mx.random.normal((1, R, args.hidden))
                    mx.eval(head.parameters(), hs, ht)
                    fn = mx.value_and_grad(lambda h, t, w: fused_token_divergence(h, t, w))
                    secs, peak = measure(fn, [hs, ht, head.weight], 1 if args.quick or R > 1024 else 2)
                    add({"variant": "fused", "backend": backends[-1], "rows": R, "vocab": V,
                         "dtype": dtype_name, "hidden": args.hidden, "seconds": secs,
                         "peak_bytes": int(peak)})
                    del head, hs, ht
                    mx.clear_cache()

    fused = {r["rows"]: r for r in records if r["variant"] == "fused"}
    for r in fused.values():
        if min(fused) != r["rows"]:
            r[f"peak_growth_vs_{min(fused)}_rows"] = r["peak_bytes"] / fused[min(fused)]["peak_bytes"] - 1
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(records, indent=2))
    print(f"{len(records)} records -> {args.json} ({platform.system()} {platform.machine()}, "
          f"backends {backends}, copy bandwidth {bw / 1e9:.1f} GB/s)")

if __name__ == "__main__":
    main()
