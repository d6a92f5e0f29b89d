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


def summarize(rows: list[dict], views, kind: str) -> dict:
    """Accuracy per view overall and per category; `gap` = crop - full accuracy over the
    samples that have both views (the paper's regional-to-global gap)."""
    by_view = defaultdict(list)
    for r in rows:
        by_view[r["view"]].append(r)
    out = {"n": len({r["id"] for r in rows}), "views": {}, "by_category": {}}
    for v in views:
        out["views"][v] = _acc(by_view[v])
        cats = defaultdict(list)
        for r in by_view[v]:
            cats[r["category"]].append(r)
        for c in sorted(cats):
            out["by_category"].setdefault(c, {})[v] = _acc(cats[c])
        if out["views"][v]["acc"] is not None:
            out[f"{v}_acc"] = out["views"][v]["acc"]
    out["unparsed"] = sum(out["views"][v]["unparsed"] for v in views)
    if "plain" in views and "teacher" in views:
        crop_ids = {r["id"] for r in by_view["teacher"]}
        both = [r for r in by_view["plain"] if r["id"] in crop_ids]
        if both:
            out["gap"] = _acc(by_view["teacher"])["acc"] - _acc(both)["acc"]
            out["gap_n"] = len(both)
    plain = by_view.get("plain", [])
    if kind == "yesno" and plain:
        out["pope"] = yes_no_metrics(plain)
    if plain and all("pair" in r for r in plain):
        out["pair_acc"] = pair_accuracy(plain)
    if plain and all(r.get("source") for r in plain) and {r["source"] for r in plain} & {"Omni3D"}:
        out["cvbench_score"] = cvbench_score(plain)
    return out


def yes_no_metrics(rows) -> dict:
    """POPE's precision, recall, F1 and yes-ratio ("yes" = positive; unparsed = no)."""
    tp = sum(r["parsed"] == "yes" and r["expected"] == "yes" for r in rows)
    fp = sum(r["parsed"] == "yes" and r["expected"] == "no" for r in rows)
    fn = sum(r["parsed"] != "yes" and r["expected"] == "yes" for r in rows)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(r["parsed"] == "yes" for r in rows) / len(rows)}


def pair_accuracy(rows) -> float:
    """MMVP's headline: the fraction of image pairs with both questions right."""
    pairs = defaultdict(list)
    for r in rows:
        pairs[r["pair"]].append(bool(r["correct"]))
    full = [v for v in pairs.values() if len(v) == 2]
    return sum(all(v) for v in full) / len(full) if full else 0.0


def cvbench_score(rows) -> float:
    """CV-Bench's headline: mean of 2D (mean of ADE20K and COCO accuracy) and 3D."""
    def acc(src):
        sel = [bool(r["correct"]) for r in rows if r.get("source") == src]
        return sum(sel) / len(sel) if sel else None
    two = [a for a in (acc("ADE20K"), acc("COCO")) if a is not None]
    three = acc("Omni3D")
    parts = ([sum(two) / len(two)] if two else []) + ([three] if three is not None else [])
    return sum(parts) / len(parts)
