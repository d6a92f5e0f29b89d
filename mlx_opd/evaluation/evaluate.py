"""Accuracy under the three views and the regional-to-global gap.

    mlx-opd eval --model M [--adapter A] --data D --out EVAL.json [--views plain,teacher]

Greedy answers (temperature 0) to multiple-choice samples under the plain full image (the
deployment setting), the student view (box + hint) and the teacher view (crop); accuracy
per view; gap = crop accuracy - plain accuracy. Writes EVAL.json (summary), EVAL.jsonl
(one line per sample and view) and EVAL.png (bar chart).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mlx_opd import models
from mlx_opd.data import Sample
from mlx_opd.method import rollout
from mlx_opd.method.answers import accuracy_by_view, card_fields, grade
from mlx_opd.method.views import plain_view, student_view, teacher_view
from mlx_opd.run.config import EvalConfig, PixelConfig, ViewConfig

# One name per view everywhere (flags, JSON, JSONL, charts): plain, student, teacher
# (the teacher's view is the crop).
VIEWS = {"plain": plain_view, "student": student_view, "teacher": teacher_view}
SUMMARY_KEY = {v: f"{v}_acc" for v in VIEWS}
VIEW_COLOURS = {"plain": "#888888", "student": "#d9534f", "teacher": "#428bca"}


def evaluate(loaded: models.Loaded, samples: list[Sample], views=("plain", "student", "teacher"),
             view_cfg: ViewConfig = ViewConfig(), pixels: PixelConfig = PixelConfig(),
             max_tokens: int = EvalConfig.max_tokens, progress=None) -> tuple[dict, list[dict]]:
    """(summary, per-sample rows). Samples without an answer are skipped and counted."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; choose from {list(VIEWS)}")
    rows, correct, unparsed, counted = [], {v: 0 for v in views}, {v: 0 for v in views}, 0
    no_answer, t0 = 0, time.perf_counter()
    for i, s in enumerate(samples):
        if not s.answer:
            no_answer += 1
            continue
        counted += 1
        for v in views:
            view = VIEWS[v](s, view_cfg)
            enc = models.encode(loaded, view.images, view.text, pixels.for_view(v))
            out = rollout.sample(loaded, enc, max_tokens=max_tokens, temperature=0.0)
            text = models.decode(loaded, out.token_ids)
            pred, ok = grade(text, s)
            correct[v] += ok
            unparsed[v] += pred is None
            rows.append({"id": s.id, "view": v, "answer": text, "parsed": pred,
                         "expected": s.answer, "correct": ok, "prompt_tokens": enc.prompt_len,
                         **card_fields(s)})
        if progress:
            progress(i + 1, len(samples), time.perf_counter() - t0)
    if not counted:
        raise ValueError("no sample has an answer: evaluation needs the `answer` field")
    if no_answer:
        print(f"eval: {no_answer} sample(s) without an answer were skipped", file=sys.stderr)
    summary = {"n": counted, "skipped_no_answer": no_answer,
               "unparsed": sum(unparsed.values()), "unparsed_by_view": unparsed}
    summary.update(accuracy_by_view(correct, {v: counted for v in views}))
    return summary, rows


def bar_chart(summary: dict, path: Path, title: str = "") -> Path:
    """Accuracy per view; each bar says how many answers could not be parsed, and the
    title names the model, the data and n (a chart of zeros must say why)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v in VIEWS if SUMMARY_KEY[v] in summary]
    unparsed = summary.get("unparsed_by_view", {})
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    bars = ax.bar(names, [summary[SUMMARY_KEY[v]] for v in names],
                  color=[VIEW_COLOURS[v] for v in names])
    for b, v in zip(bars, names):
        acc = summary[SUMMARY_KEY[v]]
        ax.text(b.get_x() + b.get_width() / 2, acc + 0.01,
                f"{acc:.2f}\n{unparsed.get(v, 0)}/{summary['n']} unparsed", ha="center",
                fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("accuracy")
    gap = f"gap (teacher - plain) = {summary['gap']:+.2f}" if "gap" in summary else ""
    model = Path(str(summary.get("model", ""))).name + (" + adapter" if summary.get("adapter") else "")
    data = Path(str(summary.get("data", ""))).name
    ax.set_title(title or f"{model} on {data}, n={summary['n']}\n{gap}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(summary: dict, rows: list[dict], out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bar_chart(summary, out.with_suffix(".png"))
