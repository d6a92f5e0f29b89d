"""Commands about a training run: `train`, `plan` (memory and time before loading), `plot`
and `report` (its curves and page)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mlx_opd.cli.common import _fail, _offline_if_local, _parse_set, main
from mlx_opd.preflight.plan import CHIPS  # plan.py imports nothing heavy at module level
from mlx_opd.run.config import BAD_SAMPLE_RULES


@main.command()
@click.option("--config", type=click.Path(dir_okay=False), help="YAML file (keys = config fields).")
@click.option("--model", help="Hub id or local folder (model.path).")
@click.option("--data", help="Training data: JSONL, parquet or folder (data.path).")
@click.option("--out", help="RUN_DIR (run.out).")
@click.option("--max-steps", type=int, help="optim.max_steps")
@click.option("--save-every", type=int, help="run.save_every")
@click.option("--seed", type=int, help="run.seed")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in RUN_DIR from its last checkpoint.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Any other config field, e.g. --set optim.lr=2e-5 (repeatable).")
@click.option("--force", is_flag=True,
              help="Start anew in an --out that holds a run: the old run is moved aside "
                   "(renamed RUN_DIR.old-TIME), never deleted.")
@click.option("--distributed", is_flag=True,
              help="Require an mlx.launch group (data-parallel over several processes/Macs).")
@click.option("--memory-gb", type=float, default=None,
              help="Memory to plan for (default: this machine's). A run whose predicted "
                   "peak exceeds it stops before loading weights, with advice.")
@click.option("--skip-memory-check", is_flag=True,
              help="Start even when `plan` predicts the run cannot fit.")
@click.option("--on-bad-sample", type=click.Choice(BAD_SAMPLE_RULES), default=None,
              help="A bad data row stops the run (error, the default) or is skipped and "
                   "counted (skip); data.on_bad_sample.")
def train(config, model, data, out, max_steps, save_every, seed, resume_dir, sets, force,
          distributed, memory_gb, skip_memory_check, on_bad_sample):
    """Vision-OPD training (CLI > YAML > defaults). Writes RUN_DIR/metrics.jsonl,
    checkpoints/, adapters/ and config.yaml."""
    from mlx_opd.data import DataError
    from mlx_opd.method.trainer import TrainingStopped
    from mlx_opd.method.trainer import train as run_train
    from mlx_opd.run.config import ConfigError, load_train_config
    from mlx_opd.run.distributed import DistributedError
    from mlx_opd.run.files import OutputExistsError
    from mlx_opd.run.resume import resume_config

    overrides = _parse_set(sets)
    for key, value in (("model.path", model), ("data.path", data), ("run.out", out),
                       ("optim.max_steps", max_steps), ("run.save_every", save_every),
                       ("run.seed", seed), ("run.distributed", distributed or None),
                       ("data.on_bad_sample", on_bad_sample)):
        if value is not None:
            overrides[key] = value
    try:
        if resume_dir:
            overrides.setdefault("run.out", resume_dir)
            cfg = resume_config(resume_dir, overrides, config)
        else:
            cfg = load_train_config(config, overrides)
        if not cfg.model.path or not cfg.data.path:
            raise ConfigError("model.path and data.path are required (--model/--data or YAML)")
        _offline_if_local(cfg.model.path)
        if resume_dir and force:
            raise ConfigError("--resume continues a run and --force starts a new one: pass one")
        if not skip_memory_check:
            _memory_check(cfg, memory_gb)
        run_train(cfg, resume=bool(resume_dir), force=force)
    except (ConfigError, DataError, DistributedError, FileNotFoundError, OutputExistsError,
            TrainingStopped, ValueError) as e:
        _fail(e)
    except KeyboardInterrupt:
        sys.exit(130)


def _memory_check(cfg, memory_gb):
    """Stop before any weights are loaded when the run clearly cannot fit (plan.py)."""
    from mlx_opd.preflight.plan import format_plan, plan
    from mlx_opd.run.config import ConfigError
    from mlx_opd.run.errors import DataError

    try:
        p = plan(cfg, memory_gb=memory_gb)
    except (ConfigError, DataError, FileNotFoundError):
        return  # the run's own start says what is wrong with its inputs, once
    except Exception as e:  # a plan that cannot be made never blocks training
        click.echo(f"memory check skipped: {type(e).__name__}: {e}", err=True)
        return
    if p["peak_bytes"] > p["memory_bytes"]:
        raise click.ClickException(
            "this run cannot fit: " + format_plan(p) + "\n(--skip-memory-check starts it anyway)")
    if not p["fits"]:
        click.echo("warning: the predicted peak is close to the memory:\n" + format_plan(p),
                   err=True)


@main.command("plan")
@click.option("--config", type=click.Path(dir_okay=False), help="YAML file (keys = config fields).")
@click.option("--model", help="Hub id or local folder (model.path); only its config is read.")
@click.option("--data", help="Training data (data.path); its first 64 samples are read (no model weights).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override any config field.")
@click.option("--memory-gb", type=float, default=None,
              help="Memory to plan for (default: this machine's).")
@click.option("--chip", type=click.Choice(sorted(CHIPS)), default=None, help="Also estimate seconds per step on this Apple chip.")
@click.option("--backend", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              show_default=True, help="Plan for this backend (gpu = Metal: bf16, fused attention).")
@click.option("--answers-from", "answers_from", type=click.Path(file_okay=False),
              help="--chip: a finished RUN_DIR whose answer lengths (metrics.jsonl) replace "
                   "rollout.max_tokens in the time estimate.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the plan as JSON.")
@click.option("--on-bad-sample", type=click.Choice(BAD_SAMPLE_RULES), default=None,
              help="data.on_bad_sample for the rows read.")
def plan_cmd(config, model, data, sets, memory_gb, chip, backend, answers_from, json_out,
             on_bad_sample):
    """Predict, before loading any weights, the peak memory of each phase of a training
    step and whether it fits; if not, which settings bring it under."""
    from mlx_opd.data import DataError
    from mlx_opd.preflight.plan import answer_lengths, format_plan, plan
    from mlx_opd.run.config import ConfigError, load_train_config

    answers = None
    if answers_from:
        answers = answer_lengths(answers_from)
        if answers is None:
            _fail(ValueError(f"--answers-from {answers_from}: no metrics.jsonl with rollout "
                             "lengths there; give a run folder that trained at least one step"))
    overrides = _parse_set(sets)
    for key, value in (("model.path", model), ("data.path", data),
                       ("data.on_bad_sample", on_bad_sample)):
        if value is not None:
            overrides[key] = value
    try:
        cfg = load_train_config(config, overrides)
        if not cfg.model.path or not cfg.data.path:
            raise ConfigError("model.path and data.path are required (--model/--data or YAML)")
        _offline_if_local(cfg.model.path)
        p = plan(cfg, memory_gb=memory_gb, chip=chip,
                 backend=None if backend == "auto" else backend, answers=answers)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
        _fail(e)
    click.echo(format_plan(p))
    click.echo(f"next: mlx-opd train --model {cfg.model.path} --data {cfg.data.path}"
               + (f" --config {config}" if config else "") + " --out RUN_DIR")
    if json_out:
        from mlx_opd.run.files import keep_old_files

        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        keep_old_files([json_out])
        Path(json_out).write_text(json.dumps(p, indent=2))
        click.echo(f"wrote {json_out}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def plot(run_dir):
    """PNG curves of a run's metrics (RUN_DIR/plots/)."""
    from mlx_opd.run.plot import plot_run

    try:
        files = plot_run(run_dir)
    except (FileNotFoundError, ValueError) as e:
        _fail(e)
    click.echo(f"wrote {len(files)} plots to {files[0].parent}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report(run_dir):
    """RUN_DIR/report.html: training curves, each view's validation curve with the best
    step, and the validation items whose answer changed, as cards."""
    from mlx_opd.evaluation.pages import run_page
    from mlx_opd.run.config import ConfigError
    from mlx_opd.run.files import marker_kind

    try:
        if marker_kind(run_dir) != "run":
            raise ValueError(f"{run_dir} is not a RUN_DIR `mlx-opd train` wrote (no marker); "
                             "the report is written only into a run's own folder")
        page = run_page(Path(run_dir))
    except (FileNotFoundError, ValueError, ConfigError) as e:
        _fail(e)
    click.echo(f"wrote {page} (open it in a browser)")
    from mlx_opd.run.config import load_train_config
    from mlx_opd.run.run_dir import next_steps

    click.echo(next_steps(load_train_config(str(Path(run_dir) / "config.yaml")),
                          Path(run_dir))[0])
