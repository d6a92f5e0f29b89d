"""The build's state: one append-only JSONL per stage under DATA/.build, one record per
image or item, flushed and synced batch by batch. A stage skips what its file holds, so an
interrupted build resumes where it stopped; a half-written last line (the interruption
itself) is ignored and that record is computed again."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


class Store:
    def __init__(self, root: Path, stage: str):
        self.path = Path(root) / ".build" / f"{stage}.jsonl"
        self.records: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line an interruption cut short
                self.records[rec["id"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def add(self, records: list[dict]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in records)
        with open(self.path, "a") as f:
            if f.tell() and not self._ends_with_newline():
                f.write("\n")  # after a cut-short line, start a fresh one
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self.records[r["id"]] = r

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


class Progress:
    """`[stage] done/total unit, s/unit, ETA` at most every `every` seconds, and at the end."""

    def __init__(self, stage: str, total: int, unit: str, log=print, every: float = 5.0,
                 already: int = 0):
        self.stage, self.total, self.unit, self.log, self.every = stage, total, unit, log, every
        self.already, self.t0, self.last = already, time.perf_counter(), 0.0
        if already:
            log(f"[{stage}] {already}/{total} {unit}s done before: resuming")

    def tick(self, done: int) -> None:
        now = time.perf_counter()
        fresh = done - self.already
        if fresh <= 0 or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        per = (now - self.t0) / fresh
        self.log(f"[{self.stage}] {done}/{self.total} {self.unit}s, {per:.2f} s/{self.unit}, "
                 f"ETA {per * (self.total - done):.0f} s")


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
