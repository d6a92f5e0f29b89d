"""`mlx-opd demo`: the toy world end to end (docs/demo.md)."""

from __future__ import annotations

import os

import click

from mlx_opd.cli.common import _fail, main
from mlx_opd.toy.demo_base import VIEW_SEEDS, Targets  # light: --help stays instant


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
@click.option("--seeds", default=",".join(map(str, VIEW_SEEDS)), show_default=True,
              help="--compare-views: the rollout seeds of each run, comma-separated.")
@click.option("--check", is_flag=True,
              help=f"Exit with status 1 when the held-out figures miss the demo's targets "
                   f"({Targets().describe()}); make demo-check runs it.")
@click.option("--seed", type=int, default=None,
              help="The training run's seed (rollout samples, data order); the base, data "
                   "and splits stay the same, so runs differ only in their sampling.")
def demo(out, quick, cache, compare_teachers, compare_views, seeds, check, seed):
    """Offline, end to end: synthetic data -> tiny base with a gap -> eval -> Vision-OPD ->
    eval. Writes OUT/summary.json and OUT/summary.png."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mlx_opd.toy.demo import run_demo
    from mlx_opd.toy.demo_baselines import compare_teachers as run_compare

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
