"""Charts of one benchmark evaluation, and two evaluations side by side with the
difference and its 95% binomial confidence interval, so a change is told from noise."""

from __future__ import annotations

import json
from pathlib import Path

from mlx_opd.evaluation.benchmarks.scores import diff_interval

VIEW_COLOURS = {"plain": "#888888", "teacher": "#428bca"}
VIEW_LABEL = {"plain": "full image", "teacher": "evidence crop"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_chart(summary: dict, path: Path) -> Path:
    """Accuracy per category (and overall) per view; the title names model, benchmark, n,
    unparsed and the gap, so a chart of zeros says why."""
    plt = _plt()
    views = list(summary["views"])
    cats = ["overall"] + list(summary["by_category"])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cats) * len(views) + 2), 3.8))
    width = 0.8 / len(views)
    for j, v in enumerate(views):
        accs = [summary["views"][v]["acc"]] + [summary["by_category"][c].get(v, {}).get("acc")
                                              for c in cats[1:]]
        xs = [i + (j - (len(views) - 1) / 2) * width for i in range(len(cats))]
        bars = ax.bar(xs, [a or 0 for a in accs], width, color=VIEW_COLOURS[v],
                      label=VIEW_LABEL[v])
        for b, a in zip(bars, accs):
            if a is not None:
                ax.text(b.get_x() + b.get_width() / 2, a + 0.01, f"{a:.2f}", ha="center",
                        fontsize=7)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([c.replace("_", " ")[:22] for c in cats], fontsize=7, rotation=15)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("accuracy (rule-based)")
    model = Path(str(summary.get("model", ""))).name + (" + adapter" if summary.get("adapter") else "")
    gap = f", gap {summary['gap']:+.2f}" if "gap" in summary else ""
    ax.set_title(f"{summary.get('title', '')}: {model}, n={summary['n']}, "
                 f"{summary['unparsed']} unparsed{gap}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_eval(path: str | Path) -> dict:
    """An eval JSON: a benchmark eval, or an `eval --data` one (overall numbers only)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a readable eval JSON ({e})") from None
    if not isinstance(d, dict) or d.get("kind") == "mlx-opd eval comparison":
        raise ValueError(f"{p}: not an eval JSON; pass files written by `mlx-opd eval --out`")
    if d.get("status") == "running":
        raise ValueError(f"{p}: this evaluation did not finish; rerun its command to complete it")
    if "views" not in d:  # eval --data: n and plain_acc / student_acc / teacher_acc
        views = {v: {"n": d["n"], "correct": round(d[f"{v}_acc"] * d["n"]), "acc": d[f"{v}_acc"]}
                 for v in ("plain", "student", "teacher") if f"{v}_acc" in d and "n" in d}
        if not views:
            raise ValueError(f"{p}: no accuracies found; pass files written by `mlx-opd eval`")
        d = {**d, "views": views, "by_category": {}}
    ok = lambda a: isinstance(a, dict) and all(  # noqa: E731
        isinstance(a.get(k), (int, float)) for k in ("n", "correct", "acc"))
    if not (isinstance(d["views"], dict) and all(ok(a) for a in d["views"].values())
            and isinstance(d.get("by_category", {}), dict)):
        raise ValueError(f"{p}: its views are not an eval's (n, correct, acc per view); pass "
                         "files written by `mlx-opd eval --out`")
    return d


def compare(before: dict, after: dict) -> list[dict]:
    """One row per (category, view) both evals have: accuracies, difference, 95% CI."""
    if before.get("benchmark") != after.get("benchmark"):
        raise ValueError(f"the two evals are of different benchmarks ({before.get('benchmark')} "
                         f"vs {after.get('benchmark')}); compare evals of the same one")
    rows = []
    groups = [("overall", before["views"], after["views"])] + [
        (c, before["by_category"][c], after["by_category"].get(c, {}))
        for c in before.get("by_category", {})]
    for cat, b, a in groups:
        for v in b:
            if not isinstance(b[v], dict) or not isinstance(a.get(v), dict) \
                    or not b[v]["n"] or not a[v]["n"]:
                continue
            d, lo, hi = diff_interval(b[v]["correct"], b[v]["n"], a[v]["correct"], a[v]["n"])
            rows.append({"category": cat, "view": v, "n_before": b[v]["n"],
                         "acc_before": b[v]["acc"], "n_after": a[v]["n"], "acc_after": a[v]["acc"],
                         "diff": d, "ci_low": lo, "ci_high": hi,
                         "beyond_noise": lo > 0 or hi < 0})
    return rows


def format_table(rows: list[dict], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'category':<28} {'view':<8} {'before':>12} {'after':>12} {'diff':>7}  "
                 "95% CI            ")
    for r in rows:
        mark = "  *" if r["beyond_noise"] else ""
        lines.append(f"{r['category'][:28]:<28} {r['view']:<8} "
                     f"{r['acc_before']:>6.3f} ({r['n_before']:>3}) {r['acc_after']:>6.3f} "
                     f"({r['n_after']:>3}) {r['diff']:>+7.3f}  [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]{mark}")
    lines.append("* the interval excludes 0: more than noise at 95% (Newcombe hybrid score "
                 "interval; conservative for the same questions answered twice)")
    return "\n".join(lines)


def compare_chart(rows: list[dict], path: Path, title: str) -> Path:
    """Differences with their 95% intervals, one bar per (category, view)."""
    plt = _plt()
    labels = [f"{r['category'][:22]} ({r['view']})" for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    diffs = [r["diff"] for r in rows]
    err = [[r["diff"] - r["ci_low"] for r in rows], [r["ci_high"] - r["diff"] for r in rows]]
    ax.barh(ys, diffs, xerr=err, color=["#5cb85c" if d >= 0 else "#d9534f" for d in diffs],
            capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("accuracy after - before (95% CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_text(s: dict) -> str:
    """A benchmark summary as the lines `eval --benchmark` prints."""
    lines = [f"{s['title']}: n={s['n']} ({s['reused']} cached, {s['computed']} answered now), "
             f"{s['unparsed']} unparsed" + (f", {s['unreadable']} unreadable rows skipped"
                                             if s.get("unreadable") else "")]
    for v, a in s["views"].items():
        lines.append(f"  {v:<8} accuracy {a['acc']:.3f} ({a['correct']}/{a['n']})")
    if "gap" in s:
        lines.append(f"  gap (crop - full) {s['gap']:+.3f} over {s['gap_n']} samples")
    for title, block in (("", s["by_category"]), ("type ", s.get("by_type", {}))):
        for c, per in block.items():
            parts = [f"{v} {a['acc']:.3f} (n={a['n']})" for v, a in per.items()
                     if isinstance(a, dict)]
            if "gap" in per:
                parts.append(f"gap {per['gap']:+.3f}")
            lines.append(f"  {title}{c}: " + ", ".join(parts))
    for key in ("cvbench_score", "cvbench_cambrian", "hrbench_cycle_mean", "visualprobe_mean",
                "pair_acc", "ceiling"):
        if key in s:
            lines.append(f"  {key} {s[key]:.3f}")
    if "pope" in s:
        lines.append("  " + ", ".join(f"{k} {v:.3f}" for k, v in s["pope"].items()))
    if "judge" in s:
        j = s["judge"]
        lines.append(f"  judge {j['model']} (the authors' judge prompt): accepted "
                     f"{j['accepted']}/{j['looked_at']} replies the rules did not score right; "
                     "accuracy with its verdicts " + ", ".join(
                         f"{v} {a:.3f}" for v, a in j["acc_with_judge"].items()))
    return "\n".join(lines)


def write_comparison(before_path, after_path, out) -> tuple[str, list[Path]]:
    """`eval --compare`: the table of two evaluations per category, the page of the items
    fixed and broken, and with `out` the comparison's JSON and chart (an existing `out`
    that is not a comparison we wrote is refused, nothing overwritten). Returns (the
    table, the files written)."""
    from mlx_opd.evaluation.pages import changes_page, read_rows
    from mlx_opd.run.config import ViewConfig
    from mlx_opd.run.files import OutputExistsError, keep_old_files, write_json_atomically

    before, after = load_eval(before_path), load_eval(after_path)
    rows = compare(before, after)
    title = (f"{after.get('title') or after.get('benchmark') or 'eval'}: "
             f"{Path(before_path).name} -> {Path(after_path).name}")
    if out:
        out = Path(out)
        if out.exists():
            try:
                old = json.loads(out.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                old = {}
            if not isinstance(old, dict) or old.get("kind") != "mlx-opd eval comparison":
                raise OutputExistsError(f"{out} exists and is not a comparison mlx-opd wrote; "
                                        "choose another --out (nothing was overwritten)")
        out.parent.mkdir(parents=True, exist_ok=True)
    page = (out.with_suffix(".html") if out else
            Path(after_path).with_name(f"{Path(after_path).stem}-changes.html"))
    keep_old_files([page])
    changes_page(read_rows(before_path), read_rows(after_path), rows, page, ViewConfig(), title)
    written = [page]
    if out:
        write_json_atomically(out, {"kind": "mlx-opd eval comparison",
                                    "before": str(before_path), "after": str(after_path),
                                    "benchmark": after.get("benchmark"), "rows": rows})
        compare_chart(rows, out.with_suffix(".png"), title)
        written += [out, out.with_suffix(".png")]
    return format_table(rows, title), written
