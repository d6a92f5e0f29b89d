"""What every command group shares: the `main` group, user errors as one line, the
pixel and view options, a run's config, `--set` parsing."""

from __future__ import annotations

import os
from pathlib import Path

import click

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
    from mlx_opd.run.config import STUDENT_VIEWS, TEACHER_VIEWS, ViewConfig

    f = click.option("--teacher-view", type=click.Choice(TEACHER_VIEWS), default=None,
                     help=f"The teacher's privilege: {ViewConfig.teacher} (default); crop, crops (one per box), "
                          "union, clean (the full image).")(f)
    f = click.option("--student-view", type=click.Choice(STUDENT_VIEWS), default=None,
                     help=f"What the student sees: {ViewConfig.student} (default); boxed, plain, degraded.")(f)
    f = click.option("--min-crop-side", type=int, default=None, help="Minimum crop side after zoom (px).")(f)
    f = click.option("--zoom", type=float, default=None, help=f"Teacher crop zoom factor (default {ViewConfig.zoom:g}).")(f)
    f = click.option("--crop-margin", type=float, default=None, help=f"Crop margin, fraction of box side (default {ViewConfig.crop_margin:g}).")(f)
    f = click.option("--box-width", type=int, default=None, help=f"Red box line width in px (default {ViewConfig.box_width}).")(f)
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
