"""PNG curves of a training run (RUN_DIR/metrics.jsonl -> RUN_DIR/plots/*.png)."""

from __future__ import annotations

from pathlib import Path

from mlx_opd.run.metrics import read

PANELS = [("loss/objective", "loss"), ("loss/surrogate", "loss (sampled-token surrogate)"),
          ("teacher/argmax_agreement", "teacher/student argmax agreement"),
          ("rollout/mean_response_len", "mean response length (tokens)"),
          ("rollout/tokens_per_s", "rollout tokens/s"), ("optim/grad_norm", "grad norm"),
          ("optim/lr", "learning rate"), ("time/step_seconds", "seconds per step"),
          ("memory/peak_bytes", "peak memory (GB)"),
          ("val/plain_acc", "validation: plain full-image accuracy"),
          ("val/student_acc", "validation: student-view accuracy"),
          ("val/teacher_acc", "validation: crop (teacher view) accuracy"),
          ("val/gap", "validation: gap (crop - plain)"),
          ("val/format", "validation: readable answers (share)"),
          ("val/divergence", "validation: held-out divergence"),
          ("val/mean_answer_len", "validation: mean answer length (tokens)")]
SCALE = {"memory/peak_bytes": 1e-9}  # shown in GB, not raw bytes


def plot_run(run_dir: str | Path) -> list[Path]:
    """One PNG per metric plus an overview grid; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics; run `mlx-opd train --out {run_dir}` first")
    rows = read(path)
    if not rows:
        raise ValueError(f"{path} is empty: no step has finished yet")
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    panels = [(k, t) for k, t in PANELS if any(k in r for r in rows)]
    fig, axes = plt.subplots((len(panels) + 1) // 2, 2, figsize=(11, 2.6 * ((len(panels) + 1) // 2)))
    written = []
    from matplotlib.ticker import MaxNLocator

    for ax, (key, title) in zip(axes.flat, panels):
        have = [r for r in rows if key in r]  # validation rows are separate records
        steps = [r["step"] for r in have]
        ys = [r[key] * SCALE.get(key, 1.0) for r in have]
        f, a = plt.subplots(figsize=(5, 3.2))
        for axis in (ax, a):
            axis.plot(steps, ys, marker="o" if len(steps) < 30 else None)
            axis.set_title(title)
            axis.set_xlabel("step")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
        f.tight_layout()
        p = out_dir / (key.replace("/", "_") + ".png")
        f.savefig(p, dpi=110)
        plt.close(f)
        written.append(p)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    overview = out_dir / "overview.png"
    fig.savefig(overview, dpi=110)
    plt.close(fig)
    return [overview] + written
