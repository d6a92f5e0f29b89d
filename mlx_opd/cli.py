"""The `mlx-opd` command line: parse, build a config, call one library function.

Heavy imports (mlx, mlx-vlm, transformers) happen inside the commands so `--help` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from mlx_opd.evaluation.benchmarks.names import BENCHMARK_NAMES
from mlx_opd.preflight.doctor_bench import (
    BenchConfig,  # defaults for `doctor --help` (nothing heavy either)
)
from mlx_opd.preflight.plan import CHIPS  # plan.py imports nothing heavy at module level
from mlx_opd.run.config import (
    SynthConfig,  # defaults for `synth --help` (config.py imports nothing heavy)
)

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")


def _offline_if_local(model: str) -> None:
    # mlx-vlm probes the hub for optional processor files; a local folder needs no network.
    if Path(model).expanduser().exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def eta_progress(what: str):
    """progress(done, total, seconds) -> `eval 3/16 | 1.2 s/sample | ETA 0:00:16` on stderr."""
    from mlx_opd.run.metrics import format_eta

    def show(done: int, total: int, seconds: float) -> None:
        per = seconds / max(done, 1)
        click.echo(f"{what} {done}/{total} | {per:.1f} s/sample | "
                   f"ETA {format_eta(per * (total - done))}", err=True)
    return show


class UserError(click.ClickException):
    """A user's input that cannot be used: one line (what, where, how to fix), exit 2
    (as click's own usage errors)."""

    exit_code = 2


def _fail(e: Exception) -> None:
    if isinstance(e, click.ClickException):  # click's usage errors: exit 2 already
        raise e
    raise UserError(" ".join(part.strip() for part in str(e).splitlines() if part.strip()))


def _adapter(path):
    """--adapter as given, or a RUN_DIR's best (else last) adapter, saying which."""
    if path is None:
        return None
    from mlx_opd.run.run_dir import resolve_adapter

    try:
        found, note = resolve_adapter(path)
    except FileNotFoundError as e:
        _fail(e)
    if note:
        click.echo(note, err=True)
    return found


def pixel_options(f):
    f = click.option("--resized-width", type=int, help="Explicit image width (with --resized-height).")(f)
    f = click.option("--resized-height", type=int, help="Explicit image height (with --resized-width).")(f)
    f = click.option("--max-pixels", type=int, help="Upper bound on image pixels (processor resize).")(f)
    f = click.option("--min-pixels", type=int, help="Lower bound on image pixels (processor resize).")(f)
    return f


def view_options(f):
    from mlx_opd.run.config import STUDENT_VIEWS, TEACHER_VIEWS

    f = click.option("--teacher-view", type=click.Choice(TEACHER_VIEWS), default=None,
                     help="The teacher's privilege: crop (default), crops (one per box), "
                          "union, clean (the full image).")(f)
    f = click.option("--student-view", type=click.Choice(STUDENT_VIEWS), default=None,
                     help="What the student sees: boxed (default), plain, degraded.")(f)
    f = click.option("--min-crop-side", type=int, default=None, help="Minimum crop side after zoom (px).")(f)
    f = click.option("--zoom", type=float, default=None, help="Teacher crop zoom factor (default 2).")(f)
    f = click.option("--crop-margin", type=float, default=None, help="Crop margin, fraction of box side (default 0).")(f)
    f = click.option("--box-width", type=int, default=None, help="Red box line width in px (default 3).")(f)
    f = click.option("--no-hint", is_flag=True, help="Do not append the authors' hint to the student text.")(f)
    f = click.option("--no-box", is_flag=True, help="Do not draw the red box on the student image.")(f)
    return f


def _pixels(kw, base=None):
    """PixelConfig from the flags, over `base` (a run's config) when given."""
    import dataclasses

    from mlx_opd.run.config import PixelConfig

    given = {k: kw.pop(k) for k in ("min_pixels", "max_pixels", "resized_height", "resized_width")}
    if base is None:
        return PixelConfig(**given)
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def _view_cfg(kw, base=None):
    """ViewConfig from the flags, over `base` (a run's config) when given."""
    import dataclasses

    from mlx_opd.run.config import ViewConfig

    changes = {}
    if kw.pop("no_box"):
        changes["draw_box"] = False
    if kw.pop("no_hint"):
        changes["hint"] = None
    for key in ("box_width", "crop_margin", "zoom", "min_crop_side"):
        v = kw.pop(key)
        if v is not None:
            changes[key] = v
    for key, field_ in (("teacher_view", "teacher"), ("student_view", "student")):
        v = kw.pop(key, None)
        if v is not None:
            changes[field_] = v
    return dataclasses.replace(base or ViewConfig(), **changes)


def _run_config(path):
    """The views and pixels of a training config (a YAML file or a RUN_DIR), so eval and
    compare see images as the run did; None without --config."""
    if not path:
        return None
    from mlx_opd.run.config import ConfigError, load_train_config

    p = Path(path)
    if p.is_dir():
        p = p / "config.yaml"
    try:
        return load_train_config(str(p))
    except ConfigError as e:
        _fail(e)


def _views_of(run_config, adapter):
    """The training config whose views and pixels eval/compare use: --config when given,
    else the run an --adapter RUN_DIR (or an adapter inside one) came from, said so."""
    if run_config:
        return _run_config(run_config)
    if not adapter:
        return None
    p = Path(adapter).resolve()
    for run in (p, p.parent, p.parent.parent):  # RUN_DIR, RUN_DIR/adapters, .../best
        if (run / "config.yaml").is_file() and (run / "adapters").is_dir():
            click.echo(f"views and pixel settings from {run / 'config.yaml'} (the adapter's "
                       "run); flags given here override them", err=True)
            return _run_config(str(run))
    return None


def _split_options(options) -> list[str] | None:
    """--options repeated, or once with commas (as build-data takes them)."""
    if len(options) == 1 and "," in options[0]:
        options = [o.strip() for o in options[0].split(",")]
    return [o for o in options if o] or None


def config_option(f):
    return click.option("--config", "run_config", type=click.Path(exists=True),
                        help="A training config (YAML) or RUN_DIR: use its views and pixel "
                             "settings, so evaluation sees images as training did; flags "
                             "given here override it.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlx-opd")
def main():
    """Vision-OPD on MLX: on-policy self-distillation from a crop-seeing teacher to a
    full-image student, inside one VLM, with LoRA."""
    # transformers is imported for tokenizers/processors only; its torch notice is noise here.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@main.command("tiny-model")
@click.option("--family", type=click.Choice(FAMILIES), help="A toy checkpoint of this family.")
@click.option("--like", "like", metavar="HUB_ID",
              help="A replica of this hub model instead: its real config, tokenizer and chat "
                   "template, random weights, fewer layers (e.g. Qwen/Qwen2.5-VL-3B-Instruct).")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--hidden-size", type=int, default=64, show_default=True, help="Toy only.")
@click.option("--layers", type=int, default=2, show_default=True, help="Text layers.")
@click.option("--heads", type=int, default=4, show_default=True, help="Toy only.")
@click.option("--vision-depth", "--vision-layers", "vision_depth", type=int, default=2,
              show_default=True, help="Vision blocks.")
@click.option("--quantize", type=click.Choice(["4", "8"]), default=None,
              help="Replicas: quantize with mlx-vlm's convert, as mlx-community's repos are.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def tiny_model(family, like, out, seed, hidden_size, layers, heads, vision_depth, quantize,
               force):
    """Write a random-initialised checkpoint in Hugging Face layout (offline): a toy of a
    family, or a replica of a real model at its real widths (--like)."""
    if bool(family) == bool(like):
        _fail(click.UsageError("give either --family (a toy) or --like HUB_ID (a replica)"))
    try:
        if like:
            from mlx_opd.models.replicas import REAL_MODELS, build_replica

            path = build_replica(like, out, layers=layers, vision_layers=vision_depth, seed=seed,
                                 quantize=None if quantize is None else int(quantize), force=force)
            click.echo(f"wrote a replica of {like} ({REAL_MODELS[like].family}, {layers} text "
                       f"layers, {vision_depth} vision blocks"
                       + (f", {quantize}-bit" if quantize else "") + f") to {path}")
            click.echo(f"next: mlx-opd plan --model {path} --data DATA.jsonl\n"
                       "  (the memory and time of a step at these widths, before loading "
                       "any weights)")
            return
        from mlx_opd.toy.tiny import TinySize, build_tiny_model

        size = TinySize(hidden_size=hidden_size, num_layers=layers, num_heads=heads,
                        num_kv_heads=max(1, heads // 2), intermediate_size=2 * hidden_size,
                        vision_depth=vision_depth)
        path = build_tiny_model(family, out, seed=seed, size=size, force=force)
    except (FileExistsError, ValueError, RuntimeError) as e:
        _fail(e)
    click.echo(f"wrote tiny {family} checkpoint to {path}")
    click.echo(f"next: mlx-opd train --model {path} --data DATA.jsonl --out RUN_DIR "
               "--max-steps 2")


@main.command()
@click.option("--model", required=True, help="Hub id or local model folder.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), help="LoRA adapter folder.")
@click.option("--image", type=click.Path(), required=True)
@click.option("--question", required=True)
@click.option("--box", multiple=True,
              help="Evidence box x1,y1,x2,y2 (see --box-format); repeat for several boxes "
                   "(--teacher-view crops); none with box-free views (--teacher-view clean).")
@click.option("--box-format", type=click.Choice(["xyxy", "xyxy_norm", "xywh"]), default="xyxy",
              show_default=True)
@click.option("--options", multiple=True,
              help="Multiple-choice options: repeat per option, or once comma-separated.")
@click.option("--max-tokens", type=int, default=32, show_default=True)
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
@click.option("--data", required=True, type=click.Path(), help="JSONL, parquet file or folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--limit", type=int, default=8, show_default=True)
@click.option("--box-format", type=click.Choice(["xyxy", "xyxy_norm", "xywh"]), default="xyxy",
              show_default=True, help="Box format of rows that do not declare one.")
@click.option("--on-bad-sample", type=click.Choice(["error", "skip"]), default="error",
              show_default=True)
@click.option("--force", is_flag=True, help="Replace an --out that an earlier `views` wrote.")
@view_options
def views(data, out, limit, box_format, on_bad_sample, force, **kw):
    """Write the plain, student and teacher views of some samples as PNGs."""
    from mlx_opd.data import read_samples
    from mlx_opd.method.views import all_views
    from mlx_opd.run.config import DataConfig
    from mlx_opd.run.errors import DataError
    from mlx_opd.run.files import OutputExistsError, check_replaceable, write_dir_atomically

    view_cfg = _view_cfg(kw)

    def write(tmp: Path) -> None:
        for i, s in enumerate(samples):
            for name, v in all_views(s, view_cfg).items():
                for j, im in enumerate(v.images):  # a crops teacher: _teacher_1, _teacher_2
                    suffix = f"_{j + 1}" if len(v.images) > 1 else ""
                    im.save(tmp / f"{i:04d}_{name}{suffix}.png")
                (tmp / f"{i:04d}_{name}.txt").write_text(v.text + "\n")
    try:
        out_dir = Path(out)
        check_replaceable(out_dir, force)  # the old views go only once the new are written
        samples, report = read_samples(DataConfig(path=data, box_format=box_format,
                                                  on_bad_sample=on_bad_sample, limit=limit),
                                       view_cfg.needs_boxes())
        write_dir_atomically(out_dir, write, kind="views")
    except (DataError, OutputExistsError) as e:
        _fail(e)
    click.echo(f"{report.summary()}; wrote views to {out_dir}")
    click.echo(f"next: mlx-opd eval --model MODEL --data {data} --out EVAL.json\n"
               "  (the accuracy of each view: the gap)")
    for msg in report.skipped[:20]:
        click.echo(f"  skipped: {msg}", err=True)


def _parse_set(values) -> dict:
    """--set section.key=value (YAML-parsed value) -> {"section.key": value}."""
    import yaml

    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected section.key=value", param_hint="--set")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


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
@click.option("--on-bad-sample", type=click.Choice(["error", "skip"]), default=None,
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
@click.option("--on-bad-sample", type=click.Choice(["error", "skip"]), default=None,
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
@click.option("--model", required=True, help="Hub id or local model folder.")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False),
              help="A trained adapter (or RUN_DIR): its answers beside the base's.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Where to listen; anything but loopback makes the page reachable from "
                   "other machines.")
@click.option("--port", type=int, default=7860, show_default=True)
@click.option("--max-tokens", type=int, default=32, show_default=True)
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


@main.command()
@click.option("--model", required=True, help="The base the adapter was trained on.")
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False),
              help="RUN_DIR, a checkpoint folder or an adapter folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["hf", "peft", "mlx"]), default="hf",
              show_default=True)
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16",
              show_default=True, help="hf: weight dtype.")
@click.option("--hf-source", help="hf: the original Hugging Face model (folder or hub id) for "
                                  "tokenizer and processor files; default: --model.")
@click.option("--max-shard-gb", type=float, default=5.0, show_default=True)
@click.option("--dequantize", is_flag=True, help="mlx: write float weights for a quantized base.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def export(model, adapter, out, fmt, dtype, hf_source, max_shard_gb, dequantize, force):
    """Export base + adapter: a Hugging Face checkpoint, a PEFT adapter or a fused MLX folder."""
    _offline_if_local(model)
    import warnings

    from mlx_opd.engines import export as ex

    warnings.simplefilter("always")
    try:
        if fmt == "hf":
            path = ex.export_hf(model, adapter, out, dtype, hf_source, force, max_shard_gb)
        elif fmt == "peft":
            path = ex.export_peft(model, adapter, out, force)
        else:
            path = ex.export_mlx(model, adapter, out, force, dequantize)
    except (ex.ExportError, FileNotFoundError) as e:
        _fail(e)
    click.echo(f"wrote {fmt} export to {path}")
    if fmt == "peft":
        click.echo(f"next: on the PyTorch side, PeftModel.from_pretrained(base, '{path}') "
                   "with the Hugging Face original of --model as base")
    else:  # a whole model: evaluate it as it is
        click.echo(f"next: mlx-opd eval --model {path} --data HELDOUT.jsonl --out {path}-eval.json")


@main.command("export-data")
@click.option("--data", required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["verl", "swift"]), default="verl",
              show_default=True, help="verl: the authors' fork; swift: ms-swift's OPSD.")
@click.option("--config", type=click.Path(dir_okay=False),
              help="A training config whose hyper-parameters the launch script carries.")
@click.option("--model", default=None, help="Base model for the launch script.")
@click.option("--image-root", default=None,
              help="Where --out will be on the machine that trains (image paths are written "
                   "under it; default: --out as it is here).")
@click.option("--like", type=click.Path(exists=True, dir_okay=False), default=None,
              help="verl: a parquet (e.g. the authors' prepared train.parquet) whose exact "
                   "schema ours takes, so both mix in one run.")
@click.option("--on-bad-sample", type=click.Choice(["error", "skip"]), default="error",
              show_default=True)
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def export_data(data, out, fmt, config, model, image_root, like, on_bad_sample, force):
    """Training data and a launch script for a GPU engine: the authors' verl fork
    (Vision-OPD as they ran it) or ms-swift (on-policy self-distillation, frozen teacher)."""
    from mlx_opd.data import DataError, read_samples
    from mlx_opd.engines.swift import SwiftExportError, export_swift
    from mlx_opd.engines.verl import VerlExportError, export_verl
    from mlx_opd.run.config import ConfigError, load_train_config
    from mlx_opd.run.files import OutputExistsError, check_replaceable

    try:
        cfg = load_train_config(config, {"data.path": data, "data.on_bad_sample": on_bad_sample})
        check_replaceable(Path(out), force)
        if like and fmt != "verl":
            raise ConfigError("--like casts to a parquet schema: it applies to --format verl")
        samples, report = read_samples(cfg.data, cfg.views.needs_boxes())
        base = model or cfg.model.path or "Qwen/Qwen2.5-VL-3B-Instruct"
        if fmt == "verl":
            path = export_verl(samples, cfg, Path(out), base, image_root,
                               Path(like) if like else None)
            files = "train.parquet and run_vision_opd.sh"
        else:
            path = export_swift(samples, cfg, Path(out), base, image_root)
            files = "train.jsonl and run_swift_opsd.sh"
    except (ConfigError, DataError, OutputExistsError, VerlExportError, SwiftExportError) as e:
        _fail(e)
    if report.skipped:
        click.echo(f"skipped {len(report.skipped)} rows; first: {report.skipped[0]}", err=True)
    click.echo(f"{report.summary()}; wrote {path}/{files}")
    script = "run_vision_opd.sh" if fmt == "verl" else "run_swift_opsd.sh"
    click.echo(f"next: on the GPU machine, bash {Path(path) / script} (its header names the "
               "variables to set; docs/scale-up.md)")


@main.command("extract-data")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--remove", is_flag=True, help="Delete each archive once it is extracted.")
def extract_data(dataset, remove):
    """Extract a dataset's image archives (Vision-OPD-6K's images/*.tar.gz*,
    teacher_images/*.tar.gz) into their folders, where its train.jsonl points."""
    import time

    from mlx_opd.data import DataError
    from mlx_opd.data.archives import extract
    from mlx_opd.run.metrics import format_eta

    start, last = time.time(), [0.0]

    def show(done: int, total: int) -> None:
        now = time.time()
        if now - last[0] < 2 and done < total:
            return
        last[0] = now
        rate = done / max(now - start, 1e-9)
        click.echo(f"extract {done / 2**30:.2f}/{total / 2**30:.2f} GiB | "
                   f"{rate / 2**20:.0f} MiB/s | ETA {format_eta((total - done) / max(rate, 1))}",
                   err=True)
    kept: list = []
    try:
        n = extract(Path(dataset), show, remove=remove, kept=kept)
    except DataError as e:
        _fail(e)
    click.echo(f"extracted {n} files in {time.time() - start:.0f} s"
               + (f"; {len(kept)} already there were left as they are (first: {kept[0]})"
                  if kept else ""))
    click.echo(f"next: mlx-opd train --data {dataset} --model MODEL")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--n", type=int, default=200, show_default=True, help="Training scenes.")
@click.option("--n-heldout", type=int, default=None, help="Held-out scenes (default: --n).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--image-size", type=int, nargs=2, default=SynthConfig.image_size,
              show_default=True, metavar="W H", help="Scene size in pixels.")
@click.option("--evidence-size", type=int, default=SynthConfig.evidence_size, show_default=True,
              help="Side of the evidence object in pixels (smaller = harder in the full view).")
@click.option("--clutter", type=int, default=SynthConfig.clutter, show_default=True,
              help="Grey shapes.")
@click.option("--distractors", type=int, default=SynthConfig.distractors, show_default=True,
              help="Coloured shapes of other kinds.")
@click.option("--options", "n_options", type=int, default=SynthConfig.n_options,
              show_default=True, help="Options per question.")
@click.option("--fixed-options", is_flag=True, help="Same option order in every scene.")
@click.option("--objects", type=click.IntRange(1, 2), default=SynthConfig.objects,
              show_default=True, help="2: two small objects far apart and a question "
                                      "comparing them (rows with `boxes`).")
@click.option("--pair-question", type=click.Choice(["same_colour", "both"]),
              default=SynthConfig.pair_question, show_default=True,
              help="--objects 2: are they the same colour, or both the palette's first?")
@click.option("--force", is_flag=True, help="Replace an --out that an earlier synth wrote.")
def synth(out, n, n_heldout, seed, image_size, evidence_size, clutter, distractors, n_options,
          fixed_options, objects, pair_question, force):
    """Synthetic fine-detail VQA: DIR/train.jsonl and DIR/heldout.jsonl with PNGs."""
    from mlx_opd.run.files import OutputExistsError, check_replaceable
    from mlx_opd.toy.synth import write_dataset

    try:
        cfg = SynthConfig(tuple(image_size), evidence_size, clutter, distractors, n_options,
                          fixed_options, objects, pair_question)
        check_replaceable(Path(out), force)
    except (ValueError, OutputExistsError) as e:
        _fail(e)
    paths = write_dataset(out, n, seed, cfg, n_heldout)
    click.echo(f"wrote {paths['train']} and {paths['heldout']}")
    click.echo(f"next: mlx-opd views --data {paths['train']} --out {Path(out)}-views --limit 4\n"
               "  (what the student and the teacher will see)")


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
              help="Answer length cap (default 8; benchmarks 16).")
@click.option("--judge", "judge_model", default=None,
              help="Benchmarks: a local MLX model that maps answers the rules cannot read to "
                   "an option (reported separately; off by default).")
@click.option("--compare", "compare_files", nargs=2, type=click.Path(exists=True, dir_okay=False),
              metavar="BEFORE.json AFTER.json",
              help="Compare two evals: per category, the difference and its 95% CI.")
@click.option("--force", is_flag=True, help="Benchmarks: move an --out with other settings "
                                            "aside and start over (default: refuse).")
@click.option("--box-format", type=click.Choice(["xyxy", "xyxy_norm", "xywh"]), default="xyxy",
              show_default=True)
@click.option("--on-bad-sample", type=click.Choice(["error", "skip"]), default="error",
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
    import dataclasses

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
                                       .split(",")), view_cfg, pixels, max_tokens or 8,
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
    click.echo(_benchmark_summary(summary))
    click.echo(f"wrote {out}, {Path(out).with_suffix('.jsonl')}, {Path(out).with_suffix('.png')}"
               f"\nnext: after training, run the same command with --adapter RUN_DIR/adapters "
               f"and another --out, then `mlx-opd eval --compare {out} AFTER.json`")


def _benchmark_summary(s: dict) -> str:
    lines = [f"{s['title']}: n={s['n']} ({s['reused']} cached, {s['computed']} answered now), "
             f"{s['unparsed']} unparsed" + (f", {s['unreadable']} unreadable rows skipped"
                                             if s.get("unreadable") else "")]
    for v, a in s["views"].items():
        lines.append(f"  {v:<8} accuracy {a['acc']:.3f} ({a['correct']}/{a['n']})")
    if "gap" in s:
        lines.append(f"  gap (crop - full) {s['gap']:+.3f} over {s['gap_n']} samples")
    for title, block in (("", s["by_category"]), ("type ", s.get("by_type", {}))):
        for c, per in block.items():
            parts = [f"{v} {a['acc']:.3f} (n={a['n']})" for v, a in per.items()
                     if isinstance(a, dict)]
            if "gap" in per:
                parts.append(f"gap {per['gap']:+.3f}")
            lines.append(f"  {title}{c}: " + ", ".join(parts))
    for key in ("cvbench_score", "cvbench_cambrian", "hrbench_cycle_mean", "visualprobe_mean",
                "pair_acc", "ceiling"):
        if key in s:
            lines.append(f"  {key} {s[key]:.3f}")
    if "pope" in s:
        lines.append("  " + ", ".join(f"{k} {v:.3f}" for k, v in s["pope"].items()))
    if "judge" in s:
        j = s["judge"]
        lines.append(f"  judge {j['model']} (the authors' judge prompt): accepted "
                     f"{j['accepted']}/{j['looked_at']} replies the rules did not score right; "
                     "accuracy with its verdicts " + ", ".join(
                         f"{v} {a:.3f}" for v, a in j["acc_with_judge"].items()))
    return "\n".join(lines)


def _eval_compare(before_path, after_path, out):
    from mlx_opd.evaluation.benchmarks.report import compare, compare_chart, format_table, load_eval

    try:
        before, after = load_eval(before_path), load_eval(after_path)
        rows = compare(before, after)
    except ValueError as e:
        _fail(e)
    title = (f"{after.get('title') or after.get('benchmark') or 'eval'}: "
             f"{Path(before_path).name} -> {Path(after_path).name}")
    click.echo(format_table(rows, title))
    from mlx_opd.evaluation.pages import changes_page, read_rows
    from mlx_opd.run.config import ViewConfig
    from mlx_opd.run.files import keep_old_files

    if out:
        out = Path(out)
        if out.exists():
            try:
                old = json.loads(out.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                old = {}
            if not isinstance(old, dict) or old.get("kind") != "mlx-opd eval comparison":
                _fail(OSError(f"{out} exists and is not a comparison mlx-opd wrote; choose "
                              "another --out (nothing was overwritten)"))
        out.parent.mkdir(parents=True, exist_ok=True)
    page = (out.with_suffix(".html") if out else
            Path(after_path).with_name(f"{Path(after_path).stem}-changes.html"))
    keep_old_files([page])
    changes_page(read_rows(before_path), read_rows(after_path), rows, page, ViewConfig(), title)
    click.echo(f"wrote {page} (the items fixed and broken, as cards)")
    if out:
        from mlx_opd.run.files import write_json_atomically

        write_json_atomically(out, {"kind": "mlx-opd eval comparison", "before": str(before_path),
                         "after": str(after_path), "benchmark": after.get("benchmark"),
                         "rows": rows})
        compare_chart(rows, out.with_suffix(".png"), title)
        click.echo(f"wrote {out} and {out.with_suffix('.png')}")


@main.command()
@click.option("--no-measure", is_flag=True, help="Skip the matmul GFLOP/s measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--bench", "bench_model", default=None, metavar="HUB_ID",
              help="Measure this machine on a replica of HUB_ID at its real widths (e.g. "
                   "Qwen/Qwen2.5-VL-3B-Instruct): the divergence path at its vocabulary, "
                   "rollout tokens/s, one training step, each beside plan's prediction; "
                   "a few minutes. Writes --out/report.json and report.md.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/doctor-bench",
              show_default=True, help="--bench: the report's folder.")
@click.option("--layers", type=int, default=BenchConfig.layers, show_default=True,
              help="--bench: text layers of the replica.")
@click.option("--photo", type=int, nargs=2, default=BenchConfig.photo, show_default=True,
              metavar="W H", help="--bench: the photo's size in pixels.")
@click.option("--max-tokens", type=int, default=BenchConfig.max_tokens,
              show_default=True, help="--bench: decode steps of the rollout.")
def doctor(no_measure, as_json, bench_model, out, layers, photo, max_tokens):
    """Versions, backend (Metal / CUDA / CPU), BLAS in use with measured GFLOP/s, memory;
    with --bench, this machine measured beside plan's predictions."""
    if bench_model:
        return _doctor_bench(bench_model, Path(out), layers, tuple(photo), max_tokens)
    from mlx_opd.preflight.doctor import format_report, report

    info = report(measure=not no_measure)
    click.echo(json.dumps(info, indent=2) if as_json else format_report(info))


def _doctor_bench(model, out, layers, photo, max_tokens):
    from mlx_opd.preflight.doctor_bench import check, run
    from mlx_opd.run.files import OutputExistsError, marker_kind, write_marker, written_by_us

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # replicas are built offline
    try:
        bc = check(BenchConfig(model=model, layers=layers, photo=photo, max_tokens=max_tokens))
        if out.exists() and any(out.iterdir()) and marker_kind(out) != "doctor-bench":
            raise OutputExistsError(f"{out} holds files --bench did not write; choose "
                                    "another --out")  # an earlier bench's folder is reused
        out.mkdir(parents=True, exist_ok=True)
        if not written_by_us(out):
            write_marker(out, "doctor-bench")
        rep = run(bc, out, log=lambda m: click.echo(m, err=True))
    except (OutputExistsError, ValueError, FileNotFoundError) as e:
        _fail(e)
    click.echo((out / "report.md").read_text())
    flagged = rep["flagged"]
    click.echo(("flagged: " + ", ".join(flagged) + " (plan's model of the step is off here)\n")
               if flagged else "")
    click.echo(f"wrote {out / 'report.json'} and {out / 'report.md'}\n"
               f"next: paste {out / 'report.md'} into an issue, so the Mac figures in the "
               "docs become measured ones")


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--quick", is_flag=True,
              help="A reduced run that checks the plumbing only (about a minute; no gap "
                   "to expect from a 5-step base).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Where the tiny base is cached (default: OUT/cache).")
@click.option("--compare-teachers", is_flag=True,
              help="Baselines instead: frozen / EMA / live teacher and off-policy SFT on the "
                   "teacher's crop answers (OUT/compare.json, OUT/compare.png).")
@click.option("--compare-views", is_flag=True,
              help="Privileged views beyond one crop instead: several crops vs their union vs "
                   "the full image as the teacher on two-object scenes, and a clean teacher "
                   "with a degraded student (no boxes), over --seeds (OUT/views.json, "
                   "OUT/views.md; docs/views.md).")
@click.option("--seeds", default="0,1", show_default=True,
              help="--compare-views: the rollout seeds of each run, comma-separated.")
@click.option("--check", is_flag=True,
              help="Exit with status 1 when the held-out figures miss the demo's targets "
                   "(gap before >= 0.3, >= 50% of it closed, plain +15 points, crop -5 points "
                   "at most); make demo-check runs it.")
@click.option("--seed", type=int, default=None,
              help="The training run's seed (rollout samples, data order); the base, data "
                   "and splits stay the same, so runs differ only in their sampling.")
def demo(out, quick, cache, compare_teachers, compare_views, seeds, check, seed):
    """Offline, end to end: synthetic data -> tiny base with a gap -> eval -> Vision-OPD ->
    eval. Writes OUT/summary.json and OUT/summary.png."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mlx_opd.toy.demo import compare_teachers as run_compare
    from mlx_opd.toy.demo import run_demo

    log = lambda m: print(m, flush=True)  # noqa: E731
    try:
        if compare_teachers:
            run_compare(out, quick=quick, cache=cache, log=log)
        elif compare_views:
            from mlx_opd.toy.demo_views import compare_views as run_views

            try:
                chosen = tuple(int(x) for x in seeds.split(",") if x.strip())
            except ValueError:
                raise click.BadParameter(f"{seeds!r}: give integers, e.g. 0,1,2",
                                         param_hint="--seeds") from None
            run_views(out, quick=quick, cache=cache, seeds=chosen or (0,), log=log)
        else:
            summary = run_demo(out, quick=quick, cache=cache, log=log, seed=seed)
            if check and summary["missed_targets"]:  # status 1: a result, not a user error
                raise click.ClickException("the demo missed its targets: "
                                           + "; ".join(summary["missed_targets"]))
    except (FileExistsError, RuntimeError) as e:
        _fail(e)


@main.command("build-data")
@click.option("--images", required=True, type=click.Path(file_okay=False),
              help="A folder of photos (searched recursively).")
@click.option("--model", required=True, help="The VLM that finds regions and writes questions.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="DATA: train.jsonl, heldout.jsonl, report.json, sheet.html (nothing is "
                   "written elsewhere). A build stopped part-way resumes here.")
@click.option("--mine-with", help="The model to be trained, for gap mining (default --model).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False),
              help="A LoRA adapter on the mining model.")
@click.option("--limit", type=int, help="Read only the first N images (sorted by path).")
@click.option("--boxes", type=click.Path(exists=True, dir_okay=False),
              help="Your own boxes, COCO JSON (instead of the model's).")
@click.option("--detector", type=click.Choice(["model", "sam3"]), default="model",
              show_default=True, help="Refine the model's boxes with SAM3 (mlx-vlm).")
@click.option("--detector-model", help="SAM3 checkpoint folder (with --detector sam3).")
@click.option("--question", "template", help="A template question instead of the model's, "
              "e.g. 'What is the colour of the {label}?' (with --options).")
@click.option("--options", help="The template's choices, comma-separated.")
@click.option("--styles", help="Question styles, comma-separated (colour,text,count,"
              "material,shape,state).")
@click.option("--no-validate", is_flag=True, help="Skip the check of each written question.")
@click.option("--k", "k", type=int, help="Crop answers per item (consensus; default 8).")
@click.option("--m", "m", type=int, help="Full-image answers per item (mining; default 16).")
@click.option("--max-full-acc", type=float, help="Keep items whose full-image accuracy is "
              "below this (default 0.5).")
@click.option("--no-mining", is_flag=True, help="Keep every item whose crop consensus held.")
@click.option("--max-area-ratio", type=float, help="Drop boxes this big or bigger, as a share of the image (default 0.10; 1: keep all).")
@click.option("--min-side", type=int, help="Drop boxes with a side under N px (default 12).")
@click.option("--build-max-pixels", "max_pixels", type=int,
              help="The processor's bound on image pixels.")
@click.option("--heldout-share", type=float, help="Share of the kept items for heldout.jsonl, "
              "whole photos at a time (default 0.1).")
@click.option("--batch", type=int, help="Prompts decoded together (default 8).")
@click.option("--seed", type=int, help="Seeds sampling, option order and the split.")
@click.option("--force", is_flag=True, help="Replace --out instead of resuming it.")
@config_option
@view_options
def build_data(run_config, force, **kw):
    """Training data from a folder of photos: regions, questions, crop consensus and gap
    mining for the model to be trained (docs/build-data.md)."""
    import dataclasses

    from mlx_opd.builder.config import (
        BuildConfig,
        ConsensusConfig,
        MiningConfig,
        QuestionConfig,
        RegionConfig,
    )
    from mlx_opd.builder.pipeline import build_data as run
    from mlx_opd.builder.pipeline import summary_text
    from mlx_opd.run.errors import DataError

    base = _run_config(run_config)
    views = _view_cfg(kw, base.views if base else None)
    split = lambda v: tuple(x.strip() for x in v.split(",") if x.strip()) if v else None  # noqa: E731
    pick = lambda **d: {k: v for k, v in d.items() if v is not None}  # noqa: E731
    try:
        cfg = BuildConfig(
            **pick(images=kw["images"], model=kw["model"], out=kw["out"],
                   mine_with=kw["mine_with"], adapter=kw["adapter"], limit=kw["limit"],
                   boxes=kw["boxes"], detector=kw["detector"],
                   detector_model=kw["detector_model"], max_pixels=kw["max_pixels"],
                   heldout_share=kw["heldout_share"],
                   batch=kw["batch"], seed=kw["seed"]),
            regions=RegionConfig(**pick(max_area_ratio=kw["max_area_ratio"],
                                        min_side=kw["min_side"])),
            questions=QuestionConfig(**pick(template=kw["template"],
                                            options=split(kw["options"]),
                                            styles=split(kw["styles"]),
                                            validate=False if kw["no_validate"] else None)),
            consensus=ConsensusConfig(**pick(k=kw["k"])),
            mining=MiningConfig(**pick(m=kw["m"], max_full_acc=kw["max_full_acc"],
                                       enabled=False if kw["no_mining"] else None)),
            views=views)
        for m in {cfg.model, cfg.miner}:
            _offline_if_local(m)
        rep = run(cfg, force=force)
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(e)
    click.echo(summary_text(rep, Path(cfg.out)))
    if dataclasses.asdict(views) != dataclasses.asdict(type(views)()):
        click.echo("note: train with the same view settings (--config or --set views.*)")


if __name__ == "__main__":
    sys.exit(main())
