"""Commands about data: `synth`, `views` (what each side sees), `export-data` (verl,
ms-swift), `extract-data` (the dataset's archives) and `build-data` (photos to data)."""

from __future__ import annotations

from pathlib import Path

import click

from mlx_opd.builder.config import BuildConfig, ConsensusConfig, MiningConfig, RegionConfig
from mlx_opd.cli.common import (
    _fail,
    _offline_if_local,
    _run_config,
    _view_cfg,
    config_option,
    main,
    view_options,
)
from mlx_opd.data.samples import BOX_FORMATS
from mlx_opd.run.config import (  # defaults for --help (config.py imports nothing heavy)
    BAD_SAMPLE_RULES,
    DataConfig,
    SheetConfig,
    SynthConfig,
)


@main.command()
@click.option("--data", required=True, type=click.Path(), help="JSONL, parquet file or folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--limit", type=int, default=SheetConfig.limit, show_default=True)
@click.option("--box-format", type=click.Choice(BOX_FORMATS), default=DataConfig.box_format,
              show_default=True, help="Box format of rows that do not declare one.")
@click.option("--on-bad-sample", type=click.Choice(BAD_SAMPLE_RULES),
              default=DataConfig.on_bad_sample,
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
@click.option("--on-bad-sample", type=click.Choice(BAD_SAMPLE_RULES),
              default=DataConfig.on_bad_sample,
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


# build-data's options that are BuildConfig fields (or its sections') under the same name
BUILD_OPTIONS = ("images", "model", "out", "mine_with", "adapter", "limit", "boxes", "detector",
                 "detector_model", "max_pixels", "heldout_share", "batch", "seed",
                 "max_area_ratio", "min_side", "template", "k", "m", "max_full_acc")


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
@click.option("--detector", type=click.Choice(["model", "sam3"]), default=BuildConfig.detector,
              show_default=True, help="Refine the model's boxes with SAM3 (mlx-vlm).")
@click.option("--detector-model", help="SAM3 checkpoint folder (with --detector sam3).")
@click.option("--question", "template", help="A template question instead of the model's, "
              "e.g. 'What is the colour of the {label}?' (with --options).")
@click.option("--options", help="The template's choices, comma-separated.")
@click.option("--styles", help="Question styles, comma-separated (colour,text,count,"
              "material,shape,state).")
@click.option("--no-validate", is_flag=True, help="Skip the check of each written question.")
@click.option("--k", "k", type=int, help=f"Crop answers per item (consensus; default {ConsensusConfig.k}).")
@click.option("--m", "m", type=int, help=f"Full-image answers per item (mining; default {MiningConfig.m}).")
@click.option("--max-full-acc", type=float, help="Keep items whose full-image accuracy is "
              f"below this (default {MiningConfig.max_full_acc:g}).")
@click.option("--no-mining", is_flag=True, help="Keep every item whose crop consensus held.")
@click.option("--max-area-ratio", type=float, help=f"Drop boxes this big or bigger, as a share of the image (default {RegionConfig.max_area_ratio:g}; 1: keep all).")
@click.option("--min-side", type=int, help=f"Drop boxes with a side under N px (default {RegionConfig.min_side}).")
@click.option("--build-max-pixels", "max_pixels", type=int,
              help="The processor's bound on image pixels.")
@click.option("--heldout-share", type=float, help="Share of the kept items for heldout.jsonl, "
              f"whole photos at a time (default {BuildConfig.heldout_share:g}).")
@click.option("--batch", type=int, help=f"Prompts decoded together (default {BuildConfig.batch}).")
@click.option("--seed", type=int, help="Seeds sampling, option order and the split.")
@click.option("--force", is_flag=True, help="Replace --out instead of resuming it.")
@config_option
@view_options
def build_data(run_config, force, **kw):
    """Training data from a folder of photos: regions, questions, crop consensus and gap
    mining for the model to be trained (docs/build-data.md)."""
    import dataclasses

    from mlx_opd.builder.config import from_flat
    from mlx_opd.builder.pipeline import build_data as run
    from mlx_opd.builder.pipeline import summary_text
    from mlx_opd.run.errors import DataError

    base = _run_config(run_config)
    views = _view_cfg(kw, base.views if base else None)
    split = lambda v: tuple(x.strip() for x in v.split(",") if x.strip()) if v else None  # noqa: E731
    flat = {k: v for k, v in kw.items() if k in BUILD_OPTIONS}
    flat.update(options=split(kw["options"]), styles=split(kw["styles"]),
                validate=False if kw["no_validate"] else None,
                mining=False if kw["no_mining"] else None)
    try:
        cfg = from_flat(flat, views)
        for m in {cfg.model, cfg.miner}:
            _offline_if_local(m)
        rep = run(cfg, force=force)
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(e)
    click.echo(summary_text(rep, Path(cfg.out)))
    if dataclasses.asdict(views) != dataclasses.asdict(type(views)()):
        click.echo("note: train with the same view settings (--config or --set views.*)")
