"""Per-step metrics (RUN_DIR/metrics.jsonl, namespaced keys) and a progress line with ETA."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class MetricsLog:
    """Appends one JSON object per step; on resume, lines past the resumed step are dropped
    so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = Path(path)
        if resume_step and self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if (row := _parse(ln)) is not None and row.get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif not resume_step:
            self.path.write_text("")

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _parse(line: str) -> dict | None:
    """One metrics line, or None for a blank or half-written one (a kill mid-write)."""
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def read(path: Path) -> list[dict]:
    return [row for ln in Path(path).read_text().splitlines() if (row := _parse(ln)) is not None]


def format_eta(seconds: float) -> str:
    """H:MM:SS, the one ETA format of every progress line."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """`step 3/10 | loss 0.0123 | 45 tok/s | 2.1 s/step | ETA 0:00:14` on stderr."""

    def __init__(self, total: int, start: int = 0, stream=sys.stderr):
        self.total, self.start, self.stream = total, start, stream
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        done = step - self.start
        per = (time.perf_counter() - self.t0) / max(done, 1)
        line = (f"step {step}/{self.total} | loss {loss:.4f} | {tokens_per_s:.0f} tok/s | "
                f"{per:.1f} s/step | ETA {format_eta(per * (self.total - step))}")
        end = "\n" if step == self.total or not self.stream.isatty() else "\r"
        print(line, end=end, file=self.stream, flush=True)
