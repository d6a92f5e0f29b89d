"""Evaluate one benchmark: greedy answers under the full image (plain) and, where the
benchmark gives evidence boxes, the crop (teacher view); per-sample rows cached as they
complete, so an interrupted run resumes; summary, per-category accuracy and a chart.

    mlx-opd eval --benchmark vstar --data craigwu/vstar_bench --model M --out OUT.json
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlx_opd.evaluation.benchmarks import answers
from mlx_opd.evaluation.benchmarks.cache import KIND, RowWriter, open_cache, paths
from mlx_opd.evaluation.benchmarks.item import BenchItem, Benchmark, Unreadable
from mlx_opd.evaluation.benchmarks.scores import summarize
from mlx_opd.evaluation.pages import bench_images, eval_page
from mlx_opd.run.config import PixelConfig, ViewConfig
from mlx_opd.run.errors import DataError
from mlx_opd.run.files import write_json_atomically
from mlx_opd.run.metrics import format_eta

BENCH_VIEWS = ("plain", "teacher")  # full image; evidence crop (needs boxes)


@dataclass(frozen=True)
class BenchSettings:
    """Everything a cached row depends on: a rerun reuses rows only when these match."""

    benchmark: str
    variant: str | None
    data: str
    model: str
    adapter: str | None
    views: tuple[str, ...]
    max_tokens: int
    pixels: dict = field(default_factory=dict)
    crop: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["views"] = list(self.views)
        return d


def settings_for(bench: Benchmark, variant, data: str, model: str, adapter, views=None,
                 max_tokens: int | None = None, pixels: PixelConfig = PixelConfig(),
                 view_cfg: ViewConfig = ViewConfig()) -> BenchSettings:
    """The settings of one evaluation, defaults filled in from the benchmark."""
    return BenchSettings(benchmark=bench.name, variant=variant, data=data, model=str(model),
                         adapter=None if adapter is None else str(adapter),
                         views=check_views(views or default_views(bench)),
                         max_tokens=max_tokens or bench.max_tokens,
                         pixels=pixels.processor_kwargs(),
                         crop={"zoom": view_cfg.zoom, "crop_margin": view_cfg.crop_margin,
                               "min_crop_side": view_cfg.min_crop_side})


def default_views(bench: Benchmark) -> tuple[str, ...]:
    return bench.default_views


def check_views(views) -> tuple[str, ...]:
    bad = [v for v in views if v not in BENCH_VIEWS]
    if bad or not views:
        raise ValueError(f"benchmark views are {', '.join(BENCH_VIEWS)} (full image, evidence "
                         f"crop), got {', '.join(bad) or 'none'}; the student view's red box "
                         "and hint are not part of the paper's benchmark protocol")
    return tuple(views)


def _row_extra(item: BenchItem) -> dict:
    return {k: v for k, v in item.extra.items()
            if k not in ("raw_options", "text", "prompt") and isinstance(v, (str, int, float, bool))}


def answer_item(loaded, bench: Benchmark, item: BenchItem, views, pixels: PixelConfig,
                view_cfg: ViewConfig, max_tokens: int) -> list[dict]:
    """One row per view in `views` (the caller drops the crop view for items without an
    evidence box): the greedy answer, what the rules read from it, and whether it is right."""
    from mlx_opd import models
    from mlx_opd.data.images import open_rgb
    from mlx_opd.method import rollout
    from mlx_opd.method.views import crop_box

    image = open_rgb(item.image, item.where)
    text = bench.prompt(item)
    kind = item.kind or bench.answer_kind
    rows = []
    for v in views:
        t0 = time.perf_counter()
        if v == "plain":
            img = image
        elif item.crop is not None:  # the benchmark's own crop (ZoomBench)
            img = open_rgb(item.crop, item.where)
        else:
            img = crop_box(image, item.box, view_cfg)
        enc = models.encode(loaded, img, text, pixels.for_view(v))
        out = rollout.sample(loaded, enc, max_tokens=max_tokens, temperature=0.0)
        said = models.decode(loaded, out.token_ids)
        parsed, correct = answers.grade(kind, said, item.answer, item.options,
                                        bench.lower_letters)
        rows.append({"id": item.id, "view": v, "category": item.category, "answer": said,
                     "parsed": parsed, "expected": item.answer, "correct": correct,
                     "kind": kind, "prompt": text, "options": list(item.options or ()),
                     "prompt_tokens": enc.prompt_len, "image_size": list(img.size),
                     "model_image_size": list(enc.image_size),
                     "seconds": round(time.perf_counter() - t0, 3), **_row_extra(item)})
    return rows


class BenchProgress:
    """`vstar 12/191 (5 cached) | 3.1 s/sample | ETA 0:08:43 | plain 0.42` on stderr."""

    def __init__(self, name: str, total: int, stream=sys.stderr):
        self.name, self.total, self.stream = name, total, stream

    def __call__(self, done: int, reused: int, seconds: float, acc: float | None) -> None:
        per = seconds / max(done - reused, 1)  # the time of the samples answered now
        line = (f"{self.name} {done}/{self.total} ({reused} cached) | {per:.1f} s/sample | "
                f"ETA {format_eta(per * (self.total - done))}")
        if acc is not None:
            line += f" | plain acc so far {acc:.2f}"
        print(line, file=self.stream, flush=True)


@dataclass
class _Answered:
    """What one pass over a benchmark's items gave."""

    rows: list = field(default_factory=list)
    reused: int = 0
    seconds: float = 0.0                      # spent answering (cached items excluded)
    unreadable: list = field(default_factory=list)
    thumbs: dict = field(default_factory=dict)  # the page's pictures, made as items pass


def run_benchmark(loaded, bench: Benchmark, root: Path, out: Path, settings: BenchSettings,
                  pixels: PixelConfig = PixelConfig(), view_cfg: ViewConfig = ViewConfig(),
                  limit: int | None = None, force: bool = False, progress=None,
                  judge=None, log=None) -> dict:
    """Evaluate `bench` from `root`; returns the summary written to OUT.json."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    summary_path, rows_path, chart_path = paths(out)
    cached = open_cache(summary_path, settings.as_dict(), force)
    total, items = bench.read(root)
    target = min(total, limit) if limit is not None else total
    if cached:
        log(f"resumed: {len(cached)} cached answers in {rows_path} are reused")
    header = {"kind": KIND, "status": "running", "benchmark": bench.name, "title": bench.title,
              "settings": settings.as_dict()}
    write_json_atomically(summary_path, header)
    t_start = time.perf_counter()
    done = _answer_items(loaded, bench, items, target, cached, RowWriter(rows_path), settings,
                         pixels, view_cfg, progress or BenchProgress(bench.name, target), log)
    if not done.rows:
        raise DataError("the benchmark has no rows", str(root), "check --data")
    judged = judge(done.rows) if judge is not None else None
    summary = {**header, "status": "complete", "model": settings.model,
               "adapter": settings.adapter, "data": settings.data,
               "reused": done.reused, "computed": len({r["id"] for r in done.rows}) - done.reused,
               "rows_total_in_benchmark": total,
               "seconds": round(time.perf_counter() - t_start, 1),
               "unreadable": len(done.unreadable),
               "unreadable_rows": [asdict(u) for u in done.unreadable[:50]],
               **summarize(done.rows, settings.views, bench.answer_kind, bench.name)}
    if judged is not None:
        summary["judge"] = judged
    write_json_atomically(summary_path, summary)
    from mlx_opd.evaluation.benchmarks.report import accuracy_chart

    accuracy_chart(summary, chart_path)
    eval_page(summary, done.rows, summary_path.with_suffix(".html"), view_cfg, chart_path,
              images=done.thumbs)
    return summary


def _answer_items(loaded, bench: Benchmark, items, target: int, cached: dict, writer,
                  settings: BenchSettings, pixels, view_cfg, progress, log) -> _Answered:
    """The first `target` items answered (or taken from the cache), each new row written as
    it comes; an unreadable row is reported, counted and skipped."""
    done = _Answered()
    try:
        for k, item in enumerate(items):
            if k >= target:
                break
            if isinstance(item, Unreadable):  # reported and counted; the run goes on
                done.unreadable.append(item)
                log(f"{bench.name}: row {item.id} ({item.where}) skipped: {item.reason}")
                progress(k + 1, done.reused, done.seconds, None)
                continue
            done.thumbs[item.id] = bench_images(item, view_cfg)
            want = [v for v in settings.views if v != "teacher" or item.has_crop_view]
            have = [cached[(item.id, v)] for v in want if (item.id, v) in cached]
            if len(have) == len(want):
                done.reused += 1
                done.rows += have
            else:
                t0 = time.perf_counter()
                todo = [v for v in want if (item.id, v) not in cached]
                try:
                    new = answer_item(loaded, bench, item, todo, pixels, view_cfg,
                                      settings.max_tokens)
                except DataError as e:  # e.g. an image that does not decode
                    done.unreadable.append(Unreadable(item.id, item.where, e.what))
                    log(f"{bench.name}: row {item.id} ({item.where}) skipped: {e.what}")
                    progress(k + 1, done.reused, done.seconds, None)
                    continue
                for r in new:
                    writer.write(r)
                done.rows += have + new
                done.seconds += time.perf_counter() - t0
            plain = [r["correct"] for r in done.rows if r["view"] == "plain"]
            progress(k + 1, done.reused, done.seconds, sum(plain) / len(plain) if plain else None)
    finally:
        writer.close()
    return done
