"""Commands that measure a model: `eval` (accuracy per view, the paper's benchmarks, two
evaluations compared), `compare` (one photo, three views) and `studio` (the local page)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from mlx_opd.cli.common import (
    _adapter,
    _fail,
    _offline_if_local,
    _pixels,
    _split_options,
    _view_cfg,
    _views_of,
    config_option,
    eta_progress,
    main,
    pixel_options,
    view_options,
)
from mlx_opd.data.samples import BOX_FORMATS
from mlx_opd.evaluation.benchmarks.names import BENCHMARK_NAMES
from mlx_opd.evaluation.benchmarks.names import MAX_TOKENS as BENCH_MAX_TOKENS
from mlx_opd.run.config import BAD_SAMPLE_RULES, CompareConfig, DataConfig, EvalConfig


@main.command()
@click.option("--model", required=True, help="Hub id or local model folder.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="LoRA adapter folder.")
@click.option("--image", type=click.Path(), required=True)
@click.option("--question", required=True)
@click.option("--box", multiple=True,
              help="Evidence box x1,y1,x2,y2 (see --box-format); repeat for several boxes "
                   "(--teacher-view crops); none with box-free views (--teacher-view clean).")
@click.option("--box-format", type=click.Choice(BOX_FORMATS), default=DataConfig.box_format,
              show_default=True)
@click.option("--options", multiple=True,
              help="Multiple-choice options: repeat per option, or once comma-separated.")
@click.option("--max-tokens", type=int, default=CompareConfig.max_tokens, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the result as JSON.")
@config_option
@pixel_options
@view_options
def compare(model, adapter, image, question, box, box_format, options, max_tokens, json_out,
            run_config, **kw):
    """Greedy answers for the plain, student and teacher (crop) views, plus a gap probe."""
    _offline_if_local(model)
    from mlx_opd import models
    from mlx_opd.data import make_sample
    from mlx_opd.evaluation.compare import compare as run_compare
    from mlx_opd.evaluation.compare import format_table
    from mlx_opd.run.errors import DataError

    boxes = []
    for one in box:
        try:
            boxes.append([float(v) for v in one.split(",")])
        except ValueError:
            _fail(ValueError(f"--box {one!r}: expected four comma-separated numbers x1,y1,x2,y2"))
    run = _views_of(run_config, adapter)
    pixels = _pixels(kw, run.pixels if run else None)
    view_cfg = _view_cfg(kw, run.views if run else None)
    row = {"image": str(Path(image).resolve()), "question": question,
           **({"box": boxes[0]} if len(boxes) == 1 else {"boxes": boxes} if boxes else {}),
           "box_format": box_format, "options": _split_options(options)}
    try:
        sample = make_sample(row, Path.cwd(), "--image/--box", need_boxes=view_cfg.needs_boxes())
        loaded = models.load(model, _adapter(adapter))
        result = run_compare(loaded, sample, view_cfg, pixels, max_tokens)
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(e)
    click.echo(format_table(result))
    if json_out:
        from mlx_opd.run.files import keep_old_files

        keep_old_files([json_out])
        Path(json_out).write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {json_out}")
    click.echo(f"next: mlx-opd eval --model {model}"
               + (f" --adapter {adapter}" if adapter else "")
               + " --data DATA.jsonl --out EVAL.json\n  (the gap over a dataset, not one image)")


@main.command()
@click.option("--model", required=True, help="Hub id or local model folder.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False),
              help="A trained adapter (or RUN_DIR): its answers beside the base's.")
@click.option("--host", default=CompareConfig.host, show_default=True,
              help="Where to listen; anything but loopback makes the page reachable from "
                   "other machines.")
@click.option("--port", type=int, default=CompareConfig.port, show_default=True)
@click.option("--max-tokens", type=int, default=CompareConfig.max_tokens, show_default=True)
@config_option
@pixel_options
@view_options
def studio(model, adapter, host, port, max_tokens, run_config, **kw):
    """A local page for crop vs full answers: open a photo, draw the box, ask; the three
    views' answers, option probabilities and the divergence along the answer (needs the
    `studio` extra: pip install "mlx-opd[studio]")."""
    _offline_if_local(model)
    try:
        from mlx_opd.evaluation.studio import Studio, server
    except ImportError:
        _fail(RuntimeError('mlx-opd studio needs the studio extra: pip install "mlx-opd[studio]"'))
    run = _views_of(run_config, adapter)
    found = _adapter(adapter)
    s = Studio(model, None if found is None else str(found),
               _view_cfg(kw, run.views if run else None),
               _pixels(kw, run.pixels if run else None), max_tokens)
    try:
        srv = server(s, host, port)
    except ImportError as e:
        _fail(RuntimeError(f'{e}: pip install "mlx-opd[studio]"'))
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: listening on {host}: other machines can reach this page",
                   err=True)
    s.start_loading()
    click.echo(f"mlx-opd studio on http://{host}:{port}/ (Ctrl-C stops it); the model loads "
               "in the background, the page shows its progress")
    srv.run()


@main.command("eval")
@click.option("--model", help="Hub id or local model folder (required unless --compare).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False))
@click.option("--data", help="Our data (JSONL, parquet, folder); with --benchmark: the "
                             "benchmark's folder or dataset hub id (default: its hub id).")
@click.option("--out", type=click.Path(dir_okay=False), help="EVAL.json")
@click.option("--benchmark", type=click.Choice(BENCHMARK_NAMES),
              help="Evaluate one of the paper's benchmarks with its prompt template.")
@click.option("--variant", help="Benchmark variant: mme-realworld en (full, default) | lite | cn.")
@click.option("--views", default=None,
              help="Comma-separated views. Data: plain, student, teacher (default all). "
                   "Benchmarks: plain, teacher (default plain, plus teacher = evidence crop "
                   "where boxes exist: vstar).")
@click.option("--limit", type=int, default=None, help="Only the first N samples.")
@click.option("--max-tokens", type=int, default=None,
              help=f"Answer length cap (default {EvalConfig.max_tokens}; benchmarks "
                   f"{BENCH_MAX_TOKENS}).")
@click.option("--judge", "judge_model", default=None,
              help="Benchmarks: a local MLX model that maps answers the rules cannot read to "
                   "an option (reported separately; off by default).")
@click.option("--compare", "compare_files", nargs=2, type=click.Path(exists=True, dir_okay=False),
              metavar="BEFORE.json AFTER.json",
              help="Compare two evals: per category, the difference and its 95% CI.")
@click.option("--force", is_flag=True, help="Benchmarks: move an --out with other settings "
                                            "aside and start over (default: refuse).")
@click.option("--box-format", type=click.Choice(BOX_FORMATS), default=DataConfig.box_format,
              show_default=True)
@click.option("--on-bad-sample", type=click.Choice(BAD_SAMPLE_RULES),
              default=DataConfig.on_bad_sample,
              show_default=True)
@click.option("--instruction", default=None,
              help="Answer instruction after the options (default: the benchmark one).")
@config_option
@pixel_options
@view_options
def eval_cmd(model, adapter, data, out, benchmark, variant, views, limit, max_tokens,
             judge_model, compare_files, force, box_format, on_bad_sample, instruction,
             run_config, **kw):
    """Accuracy under plain / student / teacher views and the gap (crop - plain); or one of
    the paper's benchmarks (--benchmark); or two evals side by side (--compare)."""
    if compare_files:
        return _eval_compare(*compare_files, out)
    if not model:
        _fail(click.UsageError("--model is required (except with --compare)"))
    _offline_if_local(model)

    run = _views_of(run_config, adapter)
    pixels = _pixels(kw, run.pixels if run else None)
    view_cfg = _view_cfg(kw, run.views if run else None)
    if benchmark:
        return _eval_benchmark(benchmark, variant, model, adapter, data, out, views, limit,
                               max_tokens, judge_model, force, pixels, view_cfg)
    if not data or not out:
        _fail(click.UsageError("--data and --out are required (or pass --benchmark NAME)"))
    from mlx_opd import models
    from mlx_opd.data import DataError, read_samples
    from mlx_opd.evaluation.evaluate import evaluate, write
    from mlx_opd.run.config import DataConfig

    if instruction is not None:
        view_cfg = dataclasses.replace(view_cfg, answer_instruction=instruction)
    try:
        samples, report = read_samples(DataConfig(path=data, box_format=box_format,
                                                  on_bad_sample=on_bad_sample, limit=limit),
                                       view_cfg.needs_boxes())
        loaded = models.load(model, _adapter(adapter))
        for msg in report.skipped[:20]:
            click.echo(f"  skipped: {msg}", err=True)
        summary, rows = evaluate(loaded, samples,
                                 tuple(v.strip() for v in (views or "plain,student,teacher")
                                       .split(",")), view_cfg, pixels, max_tokens or EvalConfig.max_tokens,
                                 progress=eta_progress("eval"))
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(e)
    from mlx_opd.run.files import keep_old_files

    summary = {"model": model, "adapter": adapter, "data": data,
               "skipped_bad_samples": len(report.skipped), **summary}
    out = Path(out)
    from mlx_opd.evaluation.pages import eval_page

    keep_old_files([out, *(out.with_suffix(x) for x in (".jsonl", ".png", ".html"))])
    write(summary, rows, out)
    page = eval_page(summary, rows, out.with_suffix(".html"), view_cfg, out.with_suffix(".png"))
    click.echo("\n" + json.dumps(summary, indent=2))
    click.echo(f"wrote {out}, {out.with_suffix('.jsonl')}, {out.with_suffix('.png')} and "
               f"{page} (a card per item: open it in a browser)")
    if adapter:
        click.echo(f"next: mlx-opd eval --compare BEFORE.json {out}\n"
                   "  (BEFORE.json: this command without --adapter, with --out BEFORE.json)")
    else:
        click.echo(f"next: mlx-opd eval --compare {out} AFTER.json\n"
                   "  (AFTER.json: this command again with --adapter RUN_DIR and --out "
                   "AFTER.json)")


def _eval_benchmark(name, variant, model, adapter, data, out, views, limit, max_tokens,
                    judge_model, force, pixels, view_cfg):
    """`eval --benchmark`: resolve the data, load the model, run with cache and resume."""
    from mlx_opd import models
    from mlx_opd.evaluation.benchmarks import registry
    from mlx_opd.evaluation.benchmarks.judge import make_judge
    from mlx_opd.evaluation.benchmarks.run import run_benchmark, settings_for
    from mlx_opd.evaluation.benchmarks.source import resolve, resolve_parts
    from mlx_opd.run.errors import DataError
    from mlx_opd.run.files import OutputExistsError

    if not out:
        _fail(click.UsageError("--out OUT.json is required: finished samples are cached "
                               "beside it, so a rerun resumes"))
    try:
        bench = registry.get(name, variant)
        data = data or bench.hub_id
        settings = settings_for(bench, variant, data, model, adapter,
                                [v.strip() for v in views.split(",")] if views else None,
                                max_tokens, pixels, view_cfg)
        if bench.hub_parts and data == bench.hub_id:
            root = resolve_parts(bench.hub_parts, Path(out).with_suffix(".sources"))
        else:
            root = resolve(data, bench.allow_patterns, bench.layout)
        loaded = models.load(model, _adapter(adapter))
        judge = None
        if judge_model:
            judge = make_judge(models.load(judge_model), judge_model,
                               log=lambda m: click.echo(m, err=True))
        summary = run_benchmark(loaded, bench, root, Path(out), settings, pixels, view_cfg,
                                limit, force, judge=judge)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished samples are kept in "
                   f"{Path(out).with_suffix('.jsonl')}; rerun the same command to resume",
                   err=True)
        sys.exit(130)
    except (DataError, FileNotFoundError, ValueError, OutputExistsError) as e:
        _fail(e)
    from mlx_opd.evaluation.benchmarks.report import summary_text

    click.echo(summary_text(summary))
    click.echo(f"wrote {out}, {Path(out).with_suffix('.jsonl')}, {Path(out).with_suffix('.png')}"
               f"\nnext: after training, run the same command with --adapter RUN_DIR/adapters "
               f"and another --out, then `mlx-opd eval --compare {out} AFTER.json`")


def _eval_compare(before_path, after_path, out):
    from mlx_opd.evaluation.benchmarks.report import write_comparison
    from mlx_opd.run.files import OutputExistsError

    try:
        table, written = write_comparison(before_path, after_path, out)
    except (ValueError, OutputExistsError) as e:
        _fail(e)
    click.echo(table)
    click.echo(f"wrote {written[0]} (the items fixed and broken, as cards)")
    if out:
        click.echo(f"wrote {' and '.join(str(w) for w in written[1:])}")
