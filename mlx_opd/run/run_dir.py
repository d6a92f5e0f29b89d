"""A training run's folder: never mixed with another run, and a summary when it ends."""

from __future__ import annotations

from pathlib import Path

from mlx_opd.run.config import ConfigError, TrainConfig, to_dict


def check_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """A new run never mixes with an existing one: refuse unless --resume or --force, and
    never take a folder mlx-opd did not write (files.py's rule)."""
    from mlx_opd.run.files import written_by_us

    if resume or not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if not written_by_us(run_dir):
        from mlx_opd.run.files import check_replaceable

        check_replaceable(run_dir, True, "--out")  # raises: the user's own folder
    if not force:
        held = [n for n in ("config.yaml", "metrics.jsonl", "checkpoints", "adapters")
                if (run_dir / n).exists()]
        what = f"a run ({', '.join(held)})" if held else "files"
        raise ConfigError(
            f"{run_dir} already holds {what}. Continue it with `mlx-opd train --resume "
            f"{run_dir}`, move it aside with --force (it is renamed, never deleted), or "
            "choose another --out")


def start_run_dir(run_dir: Path, force: bool, cfg: TrainConfig) -> None:
    from mlx_opd.run.files import claim_output, write_marker

    claim_output(run_dir, force, aside=True, log=print)  # a run is moved aside, never deleted
    run_dir.mkdir(parents=True, exist_ok=True)
    write_marker(run_dir, "run")
    write_config(run_dir, cfg)


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    """RUN_DIR/config.yaml: the run's effective config (resume reads it back)."""
    import yaml

    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# What the trainer writes at the top of RUN_DIR (checkpoints/ and adapters/ carry their own
# markers): the run is sealed with these names only, so a file a user put in the folder is
# never taken for the run's (files.seal).
RUN_FILES = ("config.yaml", "metrics.jsonl", "validation.json", "history.jsonl",
             "plots/*.png", "tensorboard/events.out.tfevents.*", "wandb/*",
             "validation/step_*.jsonl", "report.html")


def seal_run(run_dir: Path) -> None:
    from mlx_opd.run.files import seal

    seal(run_dir, "run", only=RUN_FILES)


def loss_of(record: dict) -> float:
    return record.get("loss/objective", record.get("loss/surrogate", float("nan")))


def next_steps(cfg: TrainConfig, run_dir: Path) -> list[str]:
    """The commands to run after training, each runnable as printed (HELDOUT.jsonl stands
    for held-out data when the run had no validation file)."""
    data = cfg.validation.path or "HELDOUT.jsonl"
    return [f"next: mlx-opd eval --model {cfg.model.path} --adapter {run_dir} --data {data} "
            f"--out {run_dir}-eval.json",
            "  (--adapter RUN_DIR takes the best adapter when validation kept one, else the "
            "last, and the run's views and pixel settings)",
            f"or: mlx-opd export --model {cfg.model.path} --adapter {run_dir} "
            f"--out {run_dir}-hf --format hf"]


def summary_text(cfg: TrainConfig, run_dir: Path, first: dict | None, last: dict | None,
                 tokens: float, seconds: float, validated: bool = False) -> str:
    """The end-of-run summary: what happened, where it is, what to run next (after the
    validation summary when the run validated)."""
    from mlx_opd.run.plot import plot_run

    lines = [f"done: {last['step'] if last else 'no new'} step(s) in {seconds:.0f} s"]
    if first and last:
        lines.append(f"  loss {loss_of(first):.4f} (step {first['step']}) -> "
                     f"{loss_of(last):.4f} (step {last['step']}); "
                     f"{tokens:.0f} sampled tokens ({tokens / max(seconds, 1e-9):.0f} tok/s overall)")
    try:
        plots = plot_run(run_dir)
        lines.append(f"  plots: {plots[0]}")
    except (FileNotFoundError, ValueError):
        pass
    lines.append(f"  adapters: {run_dir / 'adapters'}")
    if not validated:
        lines += next_steps(cfg, run_dir)
    return "\n".join(lines)


BEST = "best"  # RUN_DIR/adapters/best: the best adapter by the validation criterion
VALIDATION_FILE = "validation.json"  # RUN_DIR/validation.json: history, best, why it stopped


def best_adapter_dir(run_dir) -> Path:
    return Path(run_dir) / "adapters" / BEST


def resolve_adapter(path) -> tuple[Path, str]:
    """(adapter folder, what was taken and why) for `--adapter`: an adapter folder as is;
    a RUN_DIR's best adapter (adapters/best, kept by validation) when it has one, else its
    last (adapters/), else its newest checkpoint."""
    import json

    from mlx_opd.run.checkpoint import latest

    p = Path(path)
    if (p / "adapter_config.json").exists():
        return p, ""
    best = best_adapter_dir(p)
    if (best / "adapter_config.json").exists():
        info = json.loads((best / "best.json").read_text()) if (best / "best.json").exists() \
            else {}
        return best, (f"--adapter {p}: the best adapter, {best} (step {info.get('step', '?')}, "
                      f"by validation {info.get('criterion', '?')}); the last is {p / 'adapters'}")
    if (p / "adapters" / "adapter_config.json").exists():
        return p / "adapters", f"--adapter {p}: the last adapter, {p / 'adapters'}"
    ck = latest(p)
    if ck is not None:
        return ck, f"--adapter {p}: no final adapter yet; the newest checkpoint, {ck}"
    raise FileNotFoundError(f"{p}: no adapter_config.json here, in {p}/adapters or in a "
                            "checkpoint; pass a RUN_DIR written by `mlx-opd train` or an "
                            "adapter folder")
