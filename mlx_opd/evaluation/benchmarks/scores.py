"""Accuracy from per-sample rows: overall and per category, per view, the crop-vs-full gap,
each benchmark's own headline numbers, and binomial confidence intervals. Pure functions."""

from __future__ import annotations

import math
from collections import defaultdict

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def diff_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """(p2 - p1, low, high): Newcombe's hybrid score interval (his method 10) for the
    difference of two binomial proportions. It treats the two evals as independent, which
    is conservative when they answered the same questions."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p2 - p1
    low = d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    high = d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return d, low, high


def _acc(rows) -> dict:
    n = len(rows)
    k = sum(bool(r["correct"]) for r in rows)
    return {"n": n, "correct": k, "acc": k / n if n else None,
            "unparsed": sum(r["parsed"] is None for r in rows)}


def _gap(rows_plain, rows_crop) -> tuple[float, int] | None:
    """crop - full accuracy over the items that have both views."""
    crop_ids = {r["id"] for r in rows_crop}
    both = [r for r in rows_plain if r["id"] in crop_ids]
    if not both or not rows_crop:
        return None
    return _acc(rows_crop)["acc"] - _acc(both)["acc"], len(both)


def _views_block(rows, views) -> dict:
    by_view = defaultdict(list)
    for r in rows:
        by_view[r["view"]].append(r)
    out = {v: _acc(by_view[v]) for v in views if by_view[v]}
    if "plain" in views and "teacher" in views:
        g = _gap(by_view["plain"], by_view["teacher"])
        if g is not None:
            out["gap"], out["gap_n"] = g
    return out


def summarize(rows: list[dict], views, kind: str, benchmark: str = "") -> dict:
    """Accuracy per view overall, per category and (mixed benchmarks) per question type;
    `gap` = crop - full accuracy over the samples that have both views (the paper's
    regional-to-global gap), overall, per category and per type; each benchmark's own
    headline numbers beside them."""
    by_view = defaultdict(list)
    for r in rows:
        by_view[r["view"]].append(r)
    out = {"n": len({r["id"] for r in rows}), "views": {}, "by_category": {}}
    for v in views:
        out["views"][v] = _acc(by_view[v])
        if out["views"][v]["acc"] is not None:
            out[f"{v}_acc"] = out["views"][v]["acc"]
    cats = defaultdict(list)
    for r in rows:
        cats[r["category"]].append(r)
    for c in sorted(cats):
        out["by_category"][c] = _views_block(cats[c], views)
    out["unparsed"] = sum(out["views"][v]["unparsed"] for v in views)
    g = _gap(by_view.get("plain", []), by_view.get("teacher", [])) \
        if "plain" in views and "teacher" in views else None
    if g is not None:
        out["gap"], out["gap_n"] = g
    types = defaultdict(list)
    for r in rows:
        if r.get("question_type"):
            types[r["question_type"]].append(r)
    if types:
        out["by_type"] = {t: _views_block(types[t], views) for t in sorted(types)}
    out.update(headlines(by_view.get("plain", []), kind, benchmark))
    return out


def headlines(plain: list[dict], kind: str, benchmark: str) -> dict:
    """Each benchmark's headline numbers on the full-image view, the authors' first."""
    out = {}
    if not plain:
        return out
    if kind == "yesno":
        out["pope"] = yes_no_metrics(plain)
    if all("pair" in r for r in plain):
        out["pair_acc"] = pair_accuracy(plain)
    if benchmark == "mmvp":
        from mlx_opd.evaluation.benchmarks.mmvp import SWAPPED
        out["ceiling"] = 1 - SWAPPED / 300  # two pairs' published answers are swapped
    if all(r.get("source") for r in plain) and {r["source"] for r in plain} & {"Omni3D"}:
        out["cvbench_score"] = cvbench_score(plain)
        out["cvbench_cambrian"] = cvbench_cambrian(plain)
    if all(r.get("cycle_category") not in (None, "") for r in plain):
        out["hrbench_cycle_mean"] = group_mean(plain, "cycle_category")
    if benchmark == "visualprobe":
        out["visualprobe_mean"] = group_mean(plain, "category")
    return out


def group_mean(rows, key: str) -> float:
    """The mean over groups (rows sharing `key`) of the groups' accuracies."""
    groups = defaultdict(list)
    for r in rows:
        groups[r[key]].append(bool(r["correct"]))
    return sum(sum(v) / len(v) for v in groups.values()) / len(groups)


def yes_no_metrics(rows) -> dict:
    """POPE's precision, recall, F1 ("yes" = positive) as the authors count them
    (VisionOPD/Vision-OPD eval/cal_acc.py @c2e345f lines 123-158): a wrong or unreadable
    answer to a "no" question is a false positive, to a "yes" question a false negative.
    `yes_ratio` is the share of answers that say yes; `gold_yes_ratio` the share of
    questions whose answer is yes (what their `yes_ratio` prints)."""
    tp = sum(r["correct"] and r["expected"] == "yes" for r in rows)
    fp = sum(not r["correct"] and r["expected"] == "no" for r in rows)
    fn = sum(not r["correct"] and r["expected"] == "yes" for r in rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(r["parsed"] == "yes" for r in rows) / len(rows),
            "gold_yes_ratio": sum(r["expected"] == "yes" for r in rows) / len(rows)}


def pair_accuracy(rows) -> float:
    """MMVP's headline: the fraction of image pairs with both questions right."""
    pairs = defaultdict(list)
    for r in rows:
        pairs[r["pair"]].append(bool(r["correct"]))
    full = [v for v in pairs.values() if len(v) == 2]
    return sum(all(v) for v in full) / len(full) if full else 0.0


def cvbench_score(rows) -> float:
    """The authors' CV-Bench headline (eval/cal_acc.py @c2e345f lines 161-176): the mean
    of the 2D accuracy (ADE20K and COCO rows pooled) and the 3D accuracy."""
    def acc(kind):
        sel = [bool(r["correct"]) for r in rows if str(r.get("type", "")).upper() == kind]
        return sum(sel) / len(sel) if sel else None
    parts = [a for a in (acc("2D"), acc("3D")) if a is not None]
    return sum(parts) / len(parts)


def cvbench_cambrian(rows) -> float:
    """The Cambrian paper's CV-Bench score: mean of 2D (mean of ADE20K and COCO accuracy)
    and 3D."""
    def acc(src):
        sel = [bool(r["correct"]) for r in rows if r.get("source") == src]
        return sum(sel) / len(sel) if sel else None
    two = [a for a in (acc("ADE20K"), acc("COCO")) if a is not None]
    three = acc("Omni3D")
    parts = ([sum(two) / len(two)] if two else []) + ([three] if three is not None else [])
    return sum(parts) / len(parts)
