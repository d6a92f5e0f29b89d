"""Vision-OPD training, the loop: set up (read the data, load the model, restore a
resumed run), then step after step (step.train_step) with validation, checkpoints and
the guards between them, and the final adapters and summary.

    mlx-opd train --config examples/tiny.yaml --out runs/tiny

Each optimizer step (step.py), for `prompts_per_step` samples:
    roll out      the student samples n responses from the student view (full image,
                  red box, hint) of each prompt; the prompts' rows decode as one batch,
                  finished rows leaving it (rollout.py)
    build views   the teacher view is the crop; both views keep their own prompt length
                  and positions, aligned on the response tokens only
    score         the teacher (EMA weights, stop-gradient) and the student score the same
                  sampled ids, each view's prompt run once and the n responses continuing
                  from it (score.py, prefix.py; score.shared_prefix=false repeats the
                  prompt per row); the divergence comes from hidden states through the LM
                  head chunk by chunk (loss.fused_token_divergence); gradients accumulate
then: clip -> AdamW step -> teacher update -> log -> checkpoint.

Departures from the authors' recipe, deliberately:
1. LoRA (or QLoRA) instead of a full fine-tune by default (a Mac cannot hold 2 x 9B in
   fp32 with AdamW), so the EMA averages the LoRA factors (see teacher.py).
2. 4 prompts x 8 samples per step by default instead of 96 x 8; raise
   optim.prompts_per_step to accumulate the authors' batch.
3. max 256 response tokens by default instead of 1024.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlx.core as mx
import yaml
from mlx.utils import tree_unflatten

from mlx_opd import models
from mlx_opd.data import read_samples
from mlx_opd.method import step as one_step
from mlx_opd.method.step import RunState, make_optimizer
from mlx_opd.method.teacher import Teacher
from mlx_opd.method.views import usable
from mlx_opd.models import lora, parts
from mlx_opd.models.grad_checkpoint import checkpoint_layers
from mlx_opd.run import checkpoint, distributed
from mlx_opd.run.config import ConfigError, TrainConfig, to_dict
from mlx_opd.run.metrics import MetricsLog, Progress
from mlx_opd.run.resume import record_resume
from mlx_opd.run.run_dir import (
    BEST,
    VALIDATION_FILE,
    best_adapter_dir,
    check_run_dir,
    loss_of,
    next_steps,
    seal_run,
    start_run_dir,
    summary_text,
    write_config,
)


class TrainingStopped(RuntimeError):
    """The run stopped early (non-finite steps); its last checkpoint is resumable."""


# --- set-up ---------------------------------------------------------------------------


def _apply_memory_controls(cfg, model) -> None:
    gb = 1 << 30
    if cfg.memory.wired_limit_gb is not None and mx.metal.is_available():
        mx.set_wired_limit(int(cfg.memory.wired_limit_gb * gb))
    if cfg.memory.cache_limit_gb is not None:
        mx.set_cache_limit(int(cfg.memory.cache_limit_gb * gb))
    if cfg.memory.grad_checkpoint:
        checkpoint_layers(model)


# --- the loop ---------------------------------------------------------------------------

def check_base(cfg: TrainConfig, resume: bool) -> TrainConfig:
    """cfg with model.revision set to the base it resolves to; a resume whose recorded base
    is no longer what model.path resolves to stops with what changed (before loading)."""
    recorded = cfg.model.revision
    now = models.base_identity(models.resolve_path(cfg.model.path, revision=recorded))
    if resume and recorded and now != recorded:
        raise ConfigError(
            f"the base model changed since this run started: RUN_DIR/config.yaml records "
            f"{recorded}, {cfg.model.path} is now {now}. Resuming on another base would mix "
            "two models; restore the original base, or start a new run from these adapters "
            "(--set model.adapter=RUN_DIR/adapters, another --out)")
    return replace(cfg, model=replace(cfg.model, revision=now))


def with_adapter_shape(cfg: TrainConfig) -> TrainConfig:
    """cfg with the LoRA shape of model.adapter (a run started from another's adapters
    trains those tensors), said when it differs, so config.yaml describes the tensors."""
    if not cfg.model.adapter:
        return cfg
    path = Path(cfg.model.adapter) / "adapter_config.json"
    if not path.exists():
        raise ConfigError(f"model.adapter {cfg.model.adapter}: no adapter_config.json there; "
                          "pass RUN_DIR/adapters or a checkpoint folder")
    saved = json.loads(path.read_text())
    if saved.get("fine_tune_type") == "full":
        shape = {"finetune": "full"}
    else:
        p = saved.get("lora_parameters") or {}
        rank = int(p.get("rank", cfg.lora.rank))
        scale = float(p.get("scale", cfg.lora.alpha / cfg.lora.rank))  # alpha / rank
        shape = {"finetune": "lora", "rank": rank, "alpha": scale * rank,
                 "dropout": float(p.get("dropout", 0.0))}
    differ = {k: v for k, v in shape.items() if getattr(cfg.lora, k) != v}
    if differ:
        print("model.adapter: " + ", ".join(f"lora.{k} = {v!r} (was {getattr(cfg.lora, k)!r})"
                                           for k, v in differ.items())
              + ": the adapter's own shape", file=sys.stderr)
    return replace(cfg, lora=replace(cfg.lora, **differ))


def prepare(cfg: TrainConfig, run_dir: Path, resume: bool, dist: distributed.Dist):
    loaded = models.load(cfg.model.path, cfg.model.adapter, revision=cfg.model.revision)
    if cfg.model.adapter is None:
        adapter_config = lora.attach(loaded.model, cfg.lora)
    else:  # continue training the given adapters (mlx-vlm restores them trainable)
        adapter_config = parts.adapter_config(loaded.model)
    _apply_memory_controls(cfg, loaded.model)
    optimizer = make_optimizer(cfg.optim)
    optimizer.init(loaded.model.trainable_parameters())
    teacher = Teacher(loaded.model, cfg.teacher, cfg.optim.prompts_per_step,
                      cfg.optim.reference_prompts_per_step)
    loaded.model.eval()  # the default between phases; the student's pass switches to train
    state = RunState()
    if resume:
        found = checkpoint.load_latest(run_dir, warn=print) if dist.main else None
        counters, guards = [0.0, 0.0, 0.0], None
        if found is not None:  # rank 0 reads it; everyone gets rank 0's values
            ck, saved = found
            loaded.model.update(tree_unflatten(list(saved["adapters"].items())))
            if saved["teacher"]:
                teacher.params = dict(saved["teacher"])
            optimizer.state = saved["optimizer"]
            s = saved["state"]
            counters = [s["step"], s["nonfinite_in_a_row"], s["nonfinite_total"]]
            guards = s.get("validation")
            print(f"resumed from {ck} (step {s['step']})")
        loaded.model.update(distributed.broadcast_tree(loaded.model.trainable_parameters(), dist))
        teacher.params = distributed.broadcast_tree(teacher.params, dist)
        optimizer.state = distributed.broadcast_tree(optimizer.state, dist)
        step, in_a_row, total = (int(x) for x in distributed.sum_floats(counters, dist))
        state = RunState(step, in_a_row, total, {"validation": guards} if guards else {})
    return loaded, adapter_config, optimizer, teacher, state


def save_checkpoint(run_dir, cfg, loaded, adapter_config, optimizer, teacher, state, n_samples):
    s = {"step": state.step, "samples_seen": state.step * cfg.optim.prompts_per_step,
         "epoch": state.step * cfg.optim.prompts_per_step / n_samples,
         "nonfinite_in_a_row": state.nonfinite_in_a_row,
         "nonfinite_total": state.nonfinite_total, "seed": cfg.run.seed,
         "rng": "rollout keys from (seed, step, prompt); global MLX seed from (seed, step)",
         "validation": state.extra.get("validation")}
    return checkpoint.save(run_dir, state.step, lora.saved_weights(loaded.model, adapter_config),
                           adapter_config, teacher.params, optimizer.state, s, cfg.run.keep_last)


def total_steps(cfg: TrainConfig, n_samples: int) -> int:
    steps = math.ceil(cfg.optim.epochs * n_samples / cfg.optim.prompts_per_step)
    return min(steps, cfg.optim.max_steps) if cfg.optim.max_steps is not None else steps


def steps_explained(cfg: TrainConfig, n_samples: int) -> str:
    """Which of optim.epochs and optim.max_steps sets the number of steps, in words."""
    o = cfg.optim
    by_epochs = math.ceil(o.epochs * n_samples / o.prompts_per_step)
    what = (f"{o.epochs:g} epoch(s) x {n_samples} samples / {o.prompts_per_step} prompts per "
            f"step = {by_epochs} step(s)")
    if o.max_steps is None:
        return what
    if o.max_steps < by_epochs:
        return f"optim.max_steps={o.max_steps} wins over {what}"
    if o.max_steps > by_epochs:
        return (f"{what}: optim.epochs wins over optim.max_steps={o.max_steps}; raise "
                "optim.epochs to train longer")
    return what


@dataclass
class _Run:
    """What a run holds between steps, and what it does around them (log, validate, save,
    report); set up by _start. Only rank 0 writes (distributed.py)."""

    cfg: TrainConfig
    dist: distributed.Dist
    run_dir: Path
    samples: list
    loaded: object
    adapter_config: dict
    optimizer: object
    teacher: Teacher
    state: one_step.RunState
    steps: int
    validator: object = None
    guards: object = None
    log: object = None
    reporter: object = None
    watchdog: object = None
    progress: object = None
    first: dict | None = None
    last: dict | None = None
    tokens: float = 0.0
    t_start: float = field(default_factory=time.perf_counter)

    def beat(self) -> None:
        if self.watchdog is not None:
            self.watchdog.beat()

    def save(self):
        if self.dist.main:
            return save_checkpoint(self.run_dir, self.cfg, self.loaded, self.adapter_config,
                                   self.optimizer, self.teacher, self.state, len(self.samples))

    def record(self, record: dict) -> None:
        self.beat()
        self.first = record if self.first is None else self.first
        self.last, self.tokens = record, self.tokens + record["rollout/tokens"]
        if self.dist.main:
            self.log.write(record)
            self.reporter.write(self.state.step, record)
            self.progress.update(self.state.step, loss_of(record), record["rollout/tokens_per_s"])

    def validation_due(self) -> bool:
        every = self.cfg.validation.every or self.steps
        step = self.state.step
        return self.validator is not None and (step % every == 0 or step == self.steps)

    def checkpoint_due(self) -> bool:
        return self.state.step % self.cfg.run.save_every == 0 or self.state.step == self.steps

    def validate(self) -> str | None:
        """Evaluate, log, keep the best adapter; the guards' reason to stop, or None."""
        from mlx_opd.method import validation as val

        record = self.validator.run(self.loaded, self.teacher)
        is_best, why = val.check(self.guards, record, self.cfg.validation, self.state.step)
        self.state.extra["validation"] = self.guards.to_dict()
        if self.dist.main:
            # the guards' state as of now, for people and scripts (the checkpoint keeps its own)
            (self.run_dir / VALIDATION_FILE).write_text(json.dumps(self.guards.to_dict(), indent=2))
            val.write_rows(self.run_dir, self.state.step, self.validator.rows)
            self.log.write({"step": self.state.step, **record})
            self.reporter.write(self.state.step, record)
            print(val.format_line(self.state.step, record, self.guards), file=sys.stderr,
                  flush=True)
            if is_best:
                lora.save_adapter(best_adapter_dir(self.run_dir),
                                  lora.saved_weights(self.loaded.model, self.adapter_config),
                                  self.adapter_config,
                                  {"best.json": json.dumps(self.guards.best, indent=2)})
        self.beat()
        return why

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.reporter is not None:
            self.reporter.close()


def train(cfg: TrainConfig, resume: bool = False, force: bool = False) -> Path:
    """Run Vision-OPD training; returns RUN_DIR. Resumable at any checkpoint. Under
    mlx.launch every rank runs this; only rank 0 writes (see distributed.py).

    Nothing is written until the data are read and the model is loaded, so a failed start
    leaves no half-made run; an existing run is never mixed into (see check_run_dir).
    With validation on (validation.py) the held-out samples are evaluated every
    `validation.every` steps and at the end, the best adapter is kept as
    RUN_DIR/adapters/best, and the guards may stop the run early (with a checkpoint)."""
    run = _start(cfg, resume, force)
    stop = None
    try:
        if run.validator is not None and not run.guards.history:
            stop = run.validate()  # the base itself: what the best must beat
        while run.state.step < run.steps and stop is None:
            run.record(one_step.train_step(run.cfg, run.loaded, run.optimizer, run.teacher,
                                           run.samples, run.state, run.dist, run.beat))
            _stop_if_nonfinite(run)
            if run.validation_due():
                stop = run.validate()
            if run.checkpoint_due() or stop:
                run.save()
    except KeyboardInterrupt:
        ck = run.save()
        if run.dist.main:
            print(f"\ninterrupted: saved {ck}; continue with --resume {run.run_dir}")
        raise
    except TrainingStopped:
        raise
    except Exception as e:  # an out-of-memory, a processor error on one image, ...
        raise _failed(run, e) from e
    finally:
        run.close()
    if run.dist.main:
        _finish(run, stop)
    return run.run_dir


def _start(cfg: TrainConfig, resume: bool, force: bool) -> _Run:
    """Read the data, load the model, restore a resumed run's state, open the run folder
    and its logs; says what the run will do."""
    from mlx_opd.method import validation as val
    from mlx_opd.run.reporting import Reporter

    dist = distributed.init(required=cfg.run.distributed)
    run_dir = Path(cfg.run.out)
    check_run_dir(run_dir, resume, force)
    samples, report = read_samples(cfg.data, cfg.views.needs_boxes())
    samples, unusable = usable(samples, cfg.views, cfg.data.on_bad_sample)
    report.read -= len(unusable)
    report.skipped += unusable
    samples, val_samples, val_note = val.carve(samples, cfg)
    cfg = with_adapter_shape(check_base(cfg, resume))
    distributed.check_same(dist, distributed.config_hash(to_dict(cfg), cfg.model.path))
    mx.random.seed(cfg.run.seed)
    loaded, adapter_config, optimizer, teacher, state = prepare(cfg, run_dir, resume, dist)
    if dist.main and not resume:
        start_run_dir(run_dir, force, cfg)
    elif dist.main:  # the resumed run's effective config (the changes a resume may make)
        record_resume(run_dir, yaml.safe_load((run_dir / "config.yaml").read_text()), cfg,
                      state.step)
        write_config(run_dir, cfg)
    steps = total_steps(cfg, len(samples))
    run = _Run(cfg, dist, run_dir, samples, loaded, adapter_config, optimizer, teacher, state,
               steps, val.Validator(loaded, val_samples, cfg) if val_samples else None,
               val.GuardState.from_dict(state.extra.get("validation")),
               progress=Progress(steps, state.step))
    if dist.main:
        run.log = MetricsLog(run_dir / "metrics.jsonl", state.step)
        run.reporter = Reporter(cfg, run_dir)
        _announce(run, report, val_note)
    if dist.active:
        run.watchdog = distributed.Watchdog(cfg.run.step_timeout_s, dist.rank)
    return run


def _announce(run: _Run, report, val_note: str) -> None:
    cfg = run.cfg
    print(f"{report.summary()}; {run.steps} step(s) ({steps_explained(cfg, len(run.samples))}) "
          f"of {cfg.optim.prompts_per_step} prompts x {cfg.rollout.n} samples on "
          f"{run.dist.size} process(es); teacher {cfg.teacher.mode}; views: teacher "
          f"{cfg.views.teacher}, student {cfg.views.student}; run dir {run.run_dir}")
    for msg in report.skipped[:20]:
        print(f"  skipped: {msg}")
    if run.validator is not None:
        print(f"{val_note}; every {cfg.validation.every or run.steps} step(s), best by "
              f"{cfg.validation.criterion}")


def _stop_if_nonfinite(run: _Run) -> None:
    if run.state.nonfinite_in_a_row > run.cfg.run.max_nonfinite:
        run.save()
        raise TrainingStopped(
            f"{run.state.nonfinite_in_a_row} non-finite steps in a row at step "
            f"{run.state.step}; stopped with a checkpoint in {run.run_dir}/checkpoints. Lower "
            "optim.lr or check the data, then resume with --resume")


def _failed(run: _Run, e: Exception) -> TrainingStopped:
    ck = run.save() or f"{run.run_dir}/checkpoints (by rank 0)"  # the last consistent state
    return TrainingStopped(
        f"step {run.state.step + 1} failed ({type(e).__name__}: {e}); saved the last "
        f"consistent state (step {run.state.step}) to {ck}. Fix the cause, then continue "
        f"with `mlx-opd train --resume {run.run_dir}`")


def _finish(run: _Run, stop: str | None) -> None:
    """The final adapters, the summary and what to do next (rank 0)."""
    from mlx_opd.method import validation as val

    lora.save_adapter(run.run_dir / "adapters",
                      lora.saved_weights(run.loaded.model, run.adapter_config),
                      run.adapter_config, keep=(BEST,))
    print(summary_text(run.cfg, run.run_dir, run.first, run.last, run.tokens,
                       time.perf_counter() - run.t_start, validated=run.validator is not None))
    if run.validator is not None:
        # a guard firing at the last step stopped nothing
        print(val.summary_lines(run.guards, run.state.step, run.run_dir,
                                stop if run.state.step < run.steps else None))
        print("\n".join(next_steps(run.cfg, run.run_dir)))
    seal_run(run.run_dir)


