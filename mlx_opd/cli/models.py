"""Commands about models: `tiny-model` (tiny or real-width replicas, offline), `export`
(Hugging Face, PEFT, MLX) and `doctor` (this machine, and a measured step vs the plan)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from mlx_opd.cli.common import FAMILIES, _fail, _offline_if_local, main
from mlx_opd.preflight.doctor_bench import (
    BenchConfig,  # defaults for `doctor --help` (nothing heavy either)
)
from mlx_opd.run.config import ExportConfig
from mlx_opd.toy.sizes import TinySize  # nothing heavy: --help stays instant


@main.command("tiny-model")
@click.option("--family", type=click.Choice(FAMILIES), help="A toy checkpoint of this family.")
@click.option("--like", "like", metavar="HUB_ID",
              help="A replica of this hub model instead: its real config, tokenizer and chat "
                   "template, random weights, fewer layers (e.g. Qwen/Qwen2.5-VL-3B-Instruct).")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--hidden-size", type=int, default=TinySize.hidden_size, show_default=True,
              help="Toy only.")
@click.option("--layers", type=int, default=TinySize.num_layers, show_default=True,
              help="Text layers.")
@click.option("--heads", type=int, default=TinySize.num_heads, show_default=True,
              help="Toy only.")
@click.option("--vision-depth", "--vision-layers", "vision_depth", type=int,
              default=TinySize.vision_depth,
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
@click.option("--model", required=True, help="The base the adapter was trained on.")
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False),
              help="RUN_DIR, a checkpoint folder or an adapter folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["hf", "peft", "mlx"]),
              default=ExportConfig.format,
              show_default=True)
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=ExportConfig.dtype,
              show_default=True, help="hf: weight dtype.")
@click.option("--hf-source", help="hf: the original Hugging Face model (folder or hub id) for "
                                  "tokenizer and processor files; default: --model.")
@click.option("--max-shard-gb", type=float, default=ExportConfig.max_shard_gb, show_default=True)
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
