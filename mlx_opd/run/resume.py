"""A resume is the run it resumes.

Settings that define the run (what is trained, on what, how it samples, what it
minimises, how it steps) are fixed at the first start: RUN_DIR/config.yaml keeps them and
describes the tensors on disk. A resume may change only how long the run goes, how often
it saves, validates and logs, and how it spends memory; each change is said on the
console and appended to RUN_DIR/history.jsonl. A fixed setting given differently (by
--set, a flag or --config) is refused with both values and the way to start a new run
from this one's adapters.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlx_opd.run.config import ConfigError, TrainConfig, load_train_config, resolve_paths, to_dict

# Dotted keys (or whole sections, ending in ".") that may change on resume.
MAY_CHANGE = ("optim.max_steps", "optim.epochs", "run.out", "run.save_every", "run.keep_last",
              "run.report_to", "run.max_nonfinite", "run.step_timeout_s", "run.distributed",
              "memory.", "loss.backend", "loss.chunk_size", "rollout.prompt_batch",
              "validation.every", "validation.patience", "validation.margin",
              "validation.min_format", "validation.max_teacher_drop", "validation.batch")
HISTORY = "history.jsonl"


def flatten(values: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}."""
    out = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "columns":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def may_change(key: str) -> bool:
    return any(key == m or (m.endswith(".") and key.startswith(m)) for m in MAY_CHANGE)


def changes(before: TrainConfig | dict, after: TrainConfig | dict) -> dict[str, tuple]:
    """{dotted key: (before, after)} for every setting that differs."""
    a = flatten(before if isinstance(before, dict) else to_dict(before))
    b = flatten(after if isinstance(after, dict) else to_dict(after))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def resume_config(run_dir: Path, overrides: dict, config: str | None = None,
                  log=print) -> TrainConfig:
    """The run's own config (RUN_DIR/config.yaml) with the changes a resume may make;
    `config`: another YAML whose keys are applied as overrides under the same rules."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: not found; --resume takes a RUN_DIR written by mlx-opd train")
    saved = load_train_config(str(path))
    if config:
        import yaml

        try:
            other = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{config}: cannot read it ({e})") from None
        if not isinstance(other, dict):
            raise ConfigError(f"{config}: expected a mapping of config keys")
        overrides = {**flatten(resolve_paths(other, Path(config).resolve().parent)), **overrides}
    cfg = load_train_config(str(path), overrides)
    if Path(cfg.run.out).resolve() != run_dir.resolve():
        raise ConfigError(f"--resume {run_dir} with --out {cfg.run.out}: a resume continues in "
                          "its own folder; drop --out (or resume that folder)")
    diff = changes(saved, cfg)
    fixed = {k: v for k, v in diff.items() if not may_change(k)}
    if fixed:
        shown = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in fixed.items())
        raise ConfigError(
            f"--resume {run_dir}: {shown}. A resume continues the run as it was defined; "
            f"to train with other settings start a new run from its adapters: mlx-opd train "
            f"--config {path} --set model.adapter={run_dir / 'adapters'} --out NEW_RUN "
            f"(plus your --set; the optimizer starts afresh)")
    for k, (a, b) in diff.items():
        if k != "run.out":
            log(f"resume: {k} {a!r} -> {b!r}")
    return cfg


def record_resume(run_dir: Path, before: dict, cfg: TrainConfig, step: int) -> None:
    """Append the resume and what it changed to RUN_DIR/history.jsonl."""
    diff = {k: list(v) for k, v in changes(before, cfg).items()}
    with open(Path(run_dir) / HISTORY, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "resume", "step": step,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": diff}) + "\n")
