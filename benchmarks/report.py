"""Markdown tables from the benchmark JSON files (docs/benchmarks.md is made with it).

    python benchmarks/report.py docs/benchmarks > docs/benchmarks.md
"""

import json
import sys
from pathlib import Path


def loss_table(records):
    out = ["| variant | dtype | rows | vocab | seconds | peak extra GB | time / naive | peak / naive |",
           "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "skipped" in r:
            out.append(f"| {r['variant']} | {r['dtype']} | {r['rows']} | {r['vocab']} | skipped: {r['skipped']} | | | |")
            continue
        tn = f"{r['time_vs_naive']:.2f}" if "time_vs_naive" in r else ""
        pn = f"{r['peak_vs_naive']:.2f}" if "peak_vs_naive" in r else ""
        out.append(f"| {r['variant']}{'[' + r['backend'] + ']' if r['variant'] == 'ours' else ''} | "
                   f"{r['dtype']} | {r['rows']} | {r['vocab']} | {r['seconds']:.2f} | "
                   f"{r['peak_bytes'] / 1e9:.3f} | {tn} | {pn} |")
    return "\n".join(out)


def rollout_table(records):
    """One row per (model, shape, workload, engine) of benchmarks/rollout.py, with each
    engine's whole-rollout tokens/s over the reference's in the same run: `before` (the
    loop of 39de53d) where it ran, else `loop` (with the image features' seconds added on
    both sides in the last ratio)."""
    def key(r):
        return r["model"], r["prompts"], r["workload"]

    # the reference: today's loop, or the loop before issue 32 where it ran (fixed lengths)
    base = {key(r): r for r in records if r["engine"] == "loop" and "skipped" not in r}
    base.update({key(r): r for r in records if r["engine"] == "before" and "skipped" not in r})
    out = ["| model | prompts x rows | workload | engine | vision s | prefill + decode s | "
           "kept / computed tokens | useful | decode tok/s | rollout tok/s | vs reference | "
           "with vision: tok/s, vs reference | peak GB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        head = f"| {r['model']} | {r['prompts']}x{r['rows']} | {r['workload']} | {r['engine']} |"
        if "skipped" in r:
            out.append(f"{head} skipped: {r['skipped']} | | | | | | | | |")
            continue
        b = base.get(key(r))
        ratio = f"{r['rollout_tokens_per_s'] / b['rollout_tokens_per_s']:.2f}x" if b else ""
        with_v = r.get("rollout_tokens_per_s_with_vision", r["rollout_tokens_per_s"])
        b_v = b.get("rollout_tokens_per_s_with_vision") if b else None
        vs = f"{with_v:.1f}, {with_v / b_v:.2f}x" if b_v else f"{with_v:.1f}"
        vision = f"{r['vision_seconds']:.1f}" if "vision_seconds" in r else "(in prefill)"
        out.append(f"{head} {vision} | {r['prefill_seconds']:.1f} + {r['decode_seconds']:.1f} | "
                   f"{r['tokens_kept']:,} / {r['tokens_computed']:,} | "
                   f"{r['useful_fraction']:.2f} | {r['decode_tokens_per_s']:.1f} | "
                   f"{r['rollout_tokens_per_s']:.1f} | {ratio} | {vs} | "
                   f"{r['peak_bytes'] / 1e9:.2f} |")
    return "\n".join(out)


def main():
    d = Path(sys.argv[1])
    loss = json.loads((d / "loss.json").read_text())
    ts = json.loads((d / "train_step.json").read_text())["records"]
    blas = json.loads((d / "blas.json").read_text())
    print("# Benchmarks (2-core Linux x86_64 build machine, MLX CPU backend)\n")
    print("Made with `make bench` (benchmarks/*.py write JSON; `benchmarks/report.py` makes "
          "these tables). The JSON files are beside this page in `docs/benchmarks/`.\n")
    print("## Token-level divergence, forward + backward (`benchmarks/loss.py`)\n")
    print("Top-100 JSD (beta 0.5) with the tail bucket unless noted; `mlx_lm_*` are full-vocabulary "
          "peers; `fused` starts from hidden states [rows, 1024] through an LM head (it includes "
          "the head matmuls, so it is not the same workload). `peak extra` is the peak memory above "
          "what the inputs already hold. Shapes whose naive run would not fit in memory are skipped.\n")
    print(loss_table(loss))
    fused = [r for r in loss if r["variant"] == "fused"]
    print("\nFused path, peak extra memory by rows: " + ", ".join(
        f"{r['rows']}: {r['peak_bytes'] / 1e9:.3f} GB" for r in fused) + ".")
    for a, b in zip(fused, fused[1:]):
        print(f"From {a['rows']} to {b['rows']} rows: {100 * (b['peak_bytes'] / a['peak_bytes'] - 1):+.1f}%.")
    copy = loss[0].get("copy_bytes_per_s")
    if copy:
        print(f"\nMemory-copy bandwidth measured in the same run: {copy / 1e9:.1f} GB/s (read + write).")
    print("\n## One training step (`benchmarks/train_step.py`)\n")
    keys = ["model_params", "rollout_tokens_per_s_batched", "rollout_tokens_per_s_sequential",
            "rollout_batched_speedup", "opd_update_seconds", "opd_update_seconds_crop",
            "sft_step_seconds", "opd_over_sft", "opd_over_sft_crop", "peak_bytes", "peak_bytes_sft"]
    print("| | " + " | ".join(r["model"] for r in ts) + " |")
    print("|---|" + "---|" * len(ts))
    for k in keys:
        vals = [r[k] for r in ts]
        fmt = [f"{v:,.0f}" if isinstance(v, int) or v > 100 else f"{v:.3g}" for v in vals]
        print(f"| {k} | " + " | ".join(fmt) + " |")
    print("\nn = 8 samples, 32 response tokens, float32. `opd_update` = teacher scoring + student "
          "forward/backward through the fused loss + AdamW step + EMA update (rollouts excluded); "
          "`sft_step` = cross-entropy on the same response tokens. `_crop`: the teacher sees the "
          "real crop view (fewer image tokens); otherwise both prompts have equal length.")
    dist_path = d / "distributed.json"
    if dist_path.exists():
        one, two = json.loads(dist_path.read_text())
        print("\n## Two processes on one machine (`benchmarks/distributed.py`)\n")
        print(f"Tiny model, 4 prompts per step, ring backend on loopback: one process "
              f"{one['step_seconds']:.2f} s/step; two processes {two['step_seconds']:.2f} s/step "
              f"(x{two['speedup_vs_1']:.2f}: both share this machine's 2 cores), of which the "
              f"gradient all-sum ({two['allreduce_bytes']:,} bytes) is {two['allreduce_seconds'] * 1000:.0f} ms "
              f"({100 * two['allreduce_share']:.1f}%) and waiting for the slower rank "
              f"{two['wait_seconds'] * 1000:.0f} ms ({100 * two['wait_share']:.1f}%).")
    for path in sorted(d.glob("rollout*.json")):
        print(f"\n## Rollout engines ({path.name}, `benchmarks/rollout.py`)\n")
        print(rollout_table(json.loads(path.read_text())["records"]))
    print("\n## BLAS (`benchmarks/blas.py`)\n")
    for name in ("preloaded", "reference"):
        g = blas[name]["gflops"]
        print(f"- {name}: " + ", ".join(f"{n}: {v:.1f} GFLOP/s" for n, v in g.items()) +
              f" ({blas[name]['blas']['reason']})")
    print(f"- speed-up at 1024: {blas['speedup_1024']:.1f}x")


if __name__ == "__main__":
    main()
