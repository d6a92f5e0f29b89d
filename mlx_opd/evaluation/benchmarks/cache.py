"""Per-sample results that survive an interrupted evaluation.

OUT.json carries the evaluation's settings from its first moment (status "running", then
the summary, status "complete"); OUT.jsonl gets one line per (sample, view) as soon as it
is answered, flushed and fsynced. A rerun with the same --out and the same settings reuses
every finished line; different settings, or an OUT.json mlx-opd did not write, are refused
(nothing is overwritten) unless --force, which moves the old files aside.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlx_opd.run.files import OutputExistsError, move_aside
from mlx_opd.run.metrics import read

KIND = "mlx-opd benchmark eval"


def paths(out: Path) -> tuple[Path, Path, Path]:
    out = Path(out)
    return out, out.with_suffix(".jsonl"), out.with_suffix(".png")


def _rows(path: Path) -> list[dict]:
    """Every complete row; a line cut short by a kill is dropped (metrics.read)."""
    return [r for r in (read(path) if path.exists() else [])
            if isinstance(r, dict) and "id" in r and "view" in r]


def _differences(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def open_cache(out: Path, settings: dict, force: bool) -> dict[tuple[str, str], dict]:
    """{(id, view): row} of finished samples to reuse; prepares OUT.jsonl for appending."""
    summary_path, rows_path, chart = paths(out)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    existing = [p for p in (summary_path, rows_path) if p.exists()]
    if not existing:
        return {}
    problem = None
    try:
        old = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = {}
    if old.get("kind") != KIND:
        problem = (f"{existing[0]} exists and was not written by `mlx-opd eval --benchmark`")
    else:
        diff = _differences(old.get("settings", {}), settings)
        if diff:
            problem = (f"{summary_path} holds an evaluation with other settings ("
                       + "; ".join(diff) + ")")
    if problem:
        if not force:
            raise OutputExistsError(f"{problem}; nothing was overwritten. Choose another --out, "
                                    "or pass --force to move the old files aside and start over")
        for p in (summary_path, rows_path, chart, summary_path.with_suffix(".html")):
            if p.exists():
                move_aside(p)
        return {}
    rows = _rows(rows_path)
    # rewrite without any torn last line, so appended lines start on a fresh line
    tmp = rows_path.with_name(f".{rows_path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    os.replace(tmp, rows_path)
    return {(str(r["id"]), r["view"]): r for r in rows}


class RowWriter:
    """Appends one row per line and makes it durable before the next sample starts."""

    def __init__(self, path: Path):
        self.f = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()
