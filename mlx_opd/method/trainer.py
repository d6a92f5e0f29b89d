"""Vision-OPD training: one VLM, a crop-seeing teacher, a full-image student.

    mlx-opd train --config examples/tiny.yaml --out runs/tiny

Each optimizer step, for `prompts_per_step` samples:
    roll out      the student samples n responses from the student view (full image,
                  red box, hint) of each prompt; each prompt is prefilled once and all
                  the prompts' rows decode together as one batch (rollout.py)
    build views   the teacher view is the crop; both views keep their own prompt length
                  and positions, aligned on the response tokens only
    score         the teacher (EMA weights, stop-gradient) and the student score the same
                  sampled ids, each view's prompt run once and the n responses continuing
                  from it (prefix.py; score.shared_prefix=false repeats the prompt per row);
                  the divergence comes from hidden states through the LM head chunk by
                  chunk (loss.fused_token_divergence); gradients accumulate
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
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import yaml
from mlx.utils import tree_map, tree_unflatten

from mlx_opd import models
from mlx_opd.data import Sample, read_samples
from mlx_opd.method import prefix
from mlx_opd.method.loss import AUTHORS_TAIL_FLOOR, EXACT_TAIL_FLOOR, fused_token_divergence
from mlx_opd.method.rollout import sample_prompts
from mlx_opd.method.teacher import Teacher
from mlx_opd.method.views import student_view, teacher_view, usable
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


@dataclass
class Scored:
    """What one prompt contributed to a step."""

    loss: float
    agree: int
    grads: dict
    # per phase: peak bytes and seconds (the peak restarts at each phase, so each figure is
    # that phase's own high-water mark, resident weights included)
    teacher_peak: int = 0
    student_peak: int = 0
    teacher_seconds: float = 0.0
    student_seconds: float = 0.0


@dataclass
class RunState:
    step: int = 0
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    extra: dict = field(default_factory=dict)


# --- set-up ---------------------------------------------------------------------------

def lr_at(cfg, step):
    """Linear warm-up then constant (the recipe). Step i (0-based) has seen (i + 1) * p
    prompts; the warm-up lasts warmup_steps reference steps of R prompts:
    lr_i = lr * min(1, (i + 1) * p / (warmup_steps * R)). Works on ints and mx arrays."""
    if cfg.warmup_steps <= 0:
        return cfg.lr
    frac = (step + 1) * cfg.prompts_per_step / (cfg.warmup_steps * cfg.reference_prompts_per_step)
    return cfg.lr * (mx.minimum(1.0, frac) if isinstance(frac, mx.array) else min(1.0, frac))


def _schedule(cfg):
    return cfg.lr if cfg.warmup_steps <= 0 else (lambda step: lr_at(cfg, step))


def make_optimizer(cfg) -> optim.AdamW:
    """The recipe's optimizer: PyTorch AdamW semantics, betas (0.9, 0.999), eps 1e-8, and
    bias correction (MLX's AdamW defaults to none, which makes the first steps ~3x larger
    than the configured lr)."""
    return optim.AdamW(learning_rate=_schedule(cfg), betas=[0.9, 0.999], eps=1e-8,
                       weight_decay=cfg.weight_decay, bias_correction=True)


def _apply_memory_controls(cfg, model) -> None:
    gb = 1 << 30
    if cfg.memory.wired_limit_gb is not None and mx.metal.is_available():
        mx.set_wired_limit(int(cfg.memory.wired_limit_gb * gb))
    if cfg.memory.cache_limit_gb is not None:
        mx.set_cache_limit(int(cfg.memory.cache_limit_gb * gb))
    if cfg.memory.grad_checkpoint:
        checkpoint_layers(model)


def data_order(n_samples: int, seed: int, step: int, per_step: int) -> list[int]:
    """Indices of the samples used at `step`: a fresh permutation per epoch, so the
    position in the data is a function of the step (exact on resume)."""
    out = []
    for g in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(g, n_samples)
        out.append(int(np.random.default_rng(seed + epoch).permutation(n_samples)[i]))
    return out


def rollout_key(seed: int, step: int, j: int) -> mx.array:
    return mx.random.key((seed * 1_000_003 + step * 1009 + j) % (1 << 62))


# --- the pieces of one step -------------------------------------------------------------

def student_prompt(loaded, sample: Sample, cfg: TrainConfig, step: int = 0) -> models.Encoded:
    """The student view's prompt (views.student: the full image with its boxes and the
    hint, plain, or degraded as at `step`)."""
    view = student_view(sample, cfg.views, step)
    return check_prompt_length(models.encode(loaded, view.images, view.text, cfg.pixels),
                               sample, cfg, "student")


def frozen_inputs(cfg: TrainConfig) -> bool:
    """True when the vision tower and the embeddings are not trained (LoRA on the language
    model): a prompt's input embeddings are then the same in every phase of a step."""
    return cfg.lora.finetune != "full" and not cfg.lora.train_vision


def roll_out(loaded, samples: list[Sample], cfg: TrainConfig, keys, beat=lambda: None,
             step: int = 0):
    """(student prompts, n responses per sample, each prompt's input features or None):
    all the samples' rows decoded together (rollout.py); `keys[j]` is sample j's rollout
    key. With frozen inputs the features computed here (the vision tower's one run on the
    image this step) are reused by the student's scoring pass."""
    if not samples:  # more ranks than prompts: nothing to do on this one
        return [], [], []
    loaded.model.eval()  # sampling is inference: no dropout, inference kernels allowed
    encs = [student_prompt(loaded, s, cfg, step) for s in samples]
    features = [models.input_features(loaded.model, e) if frozen_inputs(cfg) else None
                for e in encs]
    # rollout.prompt_batch bounds the rows decoding at once; waiting prompts enter as
    # rows finish, and the watchdog hears from each (not once per long step)
    outs = sample_prompts(loaded, encs, cfg.rollout.n, cfg.rollout.max_tokens,
                          cfg.rollout.temperature, keys, cfg.rollout.block_pad_tokens, features,
                          capacity=cfg.rollout.prompt_batch * cfg.rollout.n, beat=beat)
    return encs, outs, features


def teacher_prompt(loaded, sample: Sample, cfg: TrainConfig) -> models.Encoded:
    """The teacher view's prompt (views.teacher: one crop, several, their union or the
    clean full image; its own length); it scores the student's sampled ids."""
    view = teacher_view(sample, cfg.views)
    return check_prompt_length(models.encode(loaded, view.images, view.text,
                                             cfg.pixels.for_view("teacher")), sample, cfg, "teacher")


def check_prompt_length(enc: models.Encoded, sample: Sample, cfg: TrainConfig,
                        view: str) -> models.Encoded:
    """Stop with advice, naming the sample, when a prompt exceeds rollout.max_prompt_tokens."""
    from mlx_opd.run.errors import DataError

    if enc.prompt_len > cfg.rollout.max_prompt_tokens:
        w, h = enc.image_size
        images = f"{w}x{h} image" if enc.num_images == 1 else \
            f"{enc.num_images} images, the first {w}x{h}"
        raise DataError(
            f"the {view} prompt has {enc.prompt_len} tokens ({images} after resizing), "
            f"more than rollout.max_prompt_tokens={cfg.rollout.max_prompt_tokens}",
            sample.where, "lower pixels.max_pixels (e.g. --set pixels.max_pixels="
            f"{max(3136, (w * h) // 4)}), or raise rollout.max_prompt_tokens if memory allows")
    return enc


def _divergence(cfg, student_hidden, teacher_hidden, head, ids, mask, head_trainable,
                teacher_head=None):
    c = cfg.loss
    return fused_token_divergence(
        student_hidden, teacher_hidden, head, mask, kind=c.kind, beta=c.beta,
        estimator=c.estimator, k=c.k, tail=c.tail, temperature=cfg.rollout.temperature,
        reduction="none", sampled_ids=ids, backend=c.backend,
        chunk_size=c.chunk_size, head_weight_trainable=head_trainable,
        teacher_head=teacher_head, with_agreement=True,
        tail_floor=EXACT_TAIL_FLOOR if c.exact_tail else AUTHORS_TAIL_FLOOR)


def response_hidden(model, cfg: TrainConfig, enc: models.Encoded, responses, ids,
                    features=None):
    """Hidden states [n, T, H] predicting each response token of one prompt: the prompt
    run once (score.shared_prefix, prefix.py) or repeated in every row (the reference)."""
    if cfg.score.shared_prefix:
        return prefix.response_hidden(model, enc, ids, features)
    with models.precomputed_inputs(model, features):
        return models.response_hidden(model, models.make_batch([enc] * len(responses),
                                                               responses))


def score(loaded, teacher: Teacher, cfg: TrainConfig, s_enc: models.Encoded,
          t_enc: models.Encoded, responses, normaliser: float, features=None) -> Scored:
    """Loss and gradients of one prompt's n responses (`responses`: the sampled ids, the
    same for both views); the teacher (crop prompt `t_enc`) is stop-gradient, the student
    sees `s_enc` (`features`: its input features from the rollout, when frozen)."""
    model = loaded.model
    ids, mask = models.pad_responses(responses)
    model.eval()  # the teacher only scores: inference mode on every module (no dropout)
    t0 = time.perf_counter()
    mx.reset_peak_memory()
    with teacher.weights_in(model):
        teacher_hidden = mx.stop_gradient(response_hidden(model, cfg, t_enc, responses, ids))
        mx.eval(teacher_hidden)
    teacher_peak, t1 = mx.get_peak_memory(), time.perf_counter()
    mx.reset_peak_memory()
    # the student's gradient pass in training mode on every module: LoRA dropout applies,
    # and kernels without a VJP (mlx-vlm's Metal gated-delta on qwen3_5) are not picked
    model.train()
    head = models.lm_head(model)
    # a full fine-tune trains the head too (a tied head through the input embedding), and
    # the teacher scores through ITS head: with LoRA the head is never adapted, so shared
    full = cfg.lora.finetune == "full"
    head_trainable = full and type(head) in (nn.Linear, nn.Embedding)
    teacher_head = teacher.params.get(models.lm_head_key(model)) if full else None
    # with LoRA the vision tower and the embeddings are frozen: their output is computed
    # (and its activations freed) before the gradient pass, with the same values; the
    # shared prefix needs the prompt's features once (the rollout's, when given), the
    # reference path once per row
    if not frozen_inputs(cfg):
        features = None
    elif not cfg.score.shared_prefix:
        features = models.input_features(
            model, models.make_batch([s_enc] * len(responses), responses))
    elif features is None:
        features = models.input_features(model, s_enc)

    def objective(m):
        student_hidden = response_hidden(m, cfg, s_enc, responses, ids, features)
        per_token, agree = _divergence(cfg, student_hidden, teacher_hidden, models.lm_head(m),
                                       ids, mask, head_trainable, teacher_head)
        if cfg.loss.reduction == "sequence_mean":
            per_token = per_token / mx.maximum(mask.sum(-1, keepdims=True), 1)
        return per_token.sum() / normaliser, mx.stop_gradient(agree)

    try:
        (value, agree), grads = nn.value_and_grad(model, objective)(model)
        mx.eval(value, agree, grads)
    finally:
        model.eval()
    student_peak, t2 = mx.get_peak_memory(), time.perf_counter()
    return Scored(float(value.item()), int(agree.item()), grads, teacher_peak, student_peak,
                  t1 - t0, t2 - t1)


def _add(a, b):
    return b if a is None else tree_map(lambda x, y: x + y, a, b)


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


def train(cfg: TrainConfig, resume: bool = False, force: bool = False) -> Path:
    """Run Vision-OPD training; returns RUN_DIR. Resumable at any checkpoint. Under
    mlx.launch every rank runs this; only rank 0 writes (see distributed.py).

    Nothing is written until the data are read and the model is loaded, so a failed start
    leaves no half-made run; an existing run is never mixed into (see check_run_dir).
    With validation on (validation.py) the held-out samples are evaluated every
    `validation.every` steps and at the end, the best adapter is kept as
    RUN_DIR/adapters/best, and the guards may stop the run early (with a checkpoint)."""
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
    cfg = check_base(cfg, resume)
    cfg = with_adapter_shape(cfg)
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
    log = MetricsLog(run_dir / "metrics.jsonl", state.step) if dist.main else None
    reporter = Reporter(cfg, run_dir) if dist.main else None
    progress = Progress(steps, state.step)
    watchdog = distributed.Watchdog(cfg.run.step_timeout_s, dist.rank) if dist.active else None
    t_start, first, last, tokens = time.perf_counter(), None, None, 0.0
    validator = val.Validator(loaded, val_samples, cfg) if val_samples else None
    guards = val.GuardState.from_dict(state.extra.get("validation"))
    stop_reason = None

    def save():
        if dist.main:
            return save_checkpoint(run_dir, cfg, loaded, adapter_config, optimizer, teacher,
                                   state, len(samples))

    def validate() -> str | None:
        """Evaluate, log, keep the best adapter; the guards' reason to stop, or None."""
        record = validator.run(loaded, teacher)
        is_best, why = val.check(guards, record, cfg.validation, state.step)
        state.extra["validation"] = guards.to_dict()
        if dist.main:
            # the guards' state as of now, for people and scripts (the checkpoint keeps its own)
            (run_dir / VALIDATION_FILE).write_text(json.dumps(guards.to_dict(), indent=2))
            val.write_rows(run_dir, state.step, validator.rows)
            log.write({"step": state.step, **record})
            reporter.write(state.step, record)
            print(val.format_line(state.step, record, guards), file=sys.stderr, flush=True)
            if is_best:
                lora.save_adapter(best_adapter_dir(run_dir),
                                  lora.saved_weights(loaded.model, adapter_config),
                                  adapter_config, {"best.json": json.dumps(guards.best, indent=2)})
        return why

    every = cfg.validation.every or steps
    if dist.main:
        print(f"{report.summary()}; {steps} step(s) ({steps_explained(cfg, len(samples))}) of "
              f"{cfg.optim.prompts_per_step} prompts x {cfg.rollout.n} samples on {dist.size} "
              f"process(es); teacher {cfg.teacher.mode}; views: teacher {cfg.views.teacher}, "
              f"student {cfg.views.student}; run dir {run_dir}")
        for msg in report.skipped[:20]:
            print(f"  skipped: {msg}")
        if validator is not None:
            print(f"{val_note}; every {every} step(s), best by "
                  f"{cfg.validation.criterion}")
    beat = watchdog.beat if watchdog is not None else (lambda: None)
    try:
        if validator is not None and not guards.history:
            stop_reason = validate()  # the base itself: what the best must beat
        while state.step < steps and stop_reason is None:
            record = train_step(cfg, loaded, optimizer, teacher, samples, state, dist, beat)
            beat()
            first = record if first is None else first
            last, tokens = record, tokens + record["rollout/tokens"]
            if dist.main:
                log.write(record)
                reporter.write(state.step, record)
                progress.update(state.step, loss_of(record),
                                record["rollout/tokens_per_s"])
            if state.nonfinite_in_a_row > cfg.run.max_nonfinite:
                save()
                raise TrainingStopped(
                    f"{state.nonfinite_in_a_row} non-finite steps in a row at step {state.step}; "
                    f"stopped with a checkpoint in {run_dir}/checkpoints. Lower optim.lr or check "
                    "the data, then resume with --resume")
            if validator is not None and (state.step % every == 0 or state.step == steps):
                stop_reason = validate()
                beat()
            if state.step % cfg.run.save_every == 0 or state.step == steps or stop_reason:
                save()
    except KeyboardInterrupt:
        ck = save()
        if dist.main:
            print(f"\ninterrupted: saved {ck}; continue with --resume {run_dir}")
        raise
    except TrainingStopped:
        raise
    except Exception as e:  # an out-of-memory, a processor error on one image, ...
        ck = save() or f"{run_dir}/checkpoints (by rank 0)"  # the last consistent state
        raise TrainingStopped(
            f"step {state.step + 1} failed ({type(e).__name__}: {e}); saved the last "
            f"consistent state (step {state.step}) to {ck}. Fix the cause, then continue "
            f"with `mlx-opd train --resume {run_dir}`") from e
    finally:
        if watchdog is not None:
            watchdog.stop()
        if reporter is not None:
            reporter.close()
    if dist.main:
        lora.save_adapter(run_dir / "adapters", lora.saved_weights(loaded.model, adapter_config),
                          adapter_config, keep=(BEST,))
        print(summary_text(cfg, run_dir, first, last, tokens, time.perf_counter() - t_start,
                           validated=validator is not None))
        if validator is not None:
            # a guard firing at the last step stopped nothing
            print(val.summary_lines(guards, state.step, run_dir,
                                    stop_reason if state.step < steps else None))
            print("\n".join(next_steps(cfg, run_dir)))
        seal_run(run_dir)
    return run_dir


def train_step(cfg, loaded, optimizer, teacher, samples, state: RunState,
               dist: distributed.Dist | None = None, beat=lambda: None) -> dict:
    """roll out -> build views -> score -> step -> teacher update; returns the metrics.
    With several ranks each takes its share of the step's prompts (distributed.py)."""
    dist = dist or distributed.init()
    t0 = time.perf_counter()
    resident = mx.get_active_memory()  # weights, optimizer state, teacher copy
    mx.reset_peak_memory()
    mx.random.seed((cfg.run.seed * 7919 + state.step) % (1 << 31))  # e.g. LoRA dropout
    picked = [samples[i] for i in data_order(len(samples), cfg.run.seed, state.step,
                                             cfg.optim.prompts_per_step)]
    mine = distributed.my_share(picked, dist)
    encs, outs, feats = roll_out(loaded, [s for _, s in mine], cfg,
                                 [rollout_key(cfg.run.seed, state.step, j) for j, _ in mine],
                                 beat, state.step)
    rolled = list(zip([s for _, s in mine], encs, outs, feats))
    rollout_seconds = sum(r.seconds for _, _, r, _ in rolled)
    lengths = [len(t) for _, _, r, _ in rolled for t in r.token_ids]
    finished = sum(f for _, _, r, _ in rolled for f in r.finished)
    computed = sum(r.computed_tokens for _, _, r, _ in rolled)
    n_tokens, n_seqs, finished, computed = distributed.sum_floats(
        [sum(lengths), len(lengths), finished, computed], dist)
    longest = max(distributed.gather_float(float(max(lengths, default=0)), dist))
    normaliser = n_tokens if cfg.loss.reduction == "token_mean" else n_seqs
    rollout_peak = mx.get_peak_memory()
    grads, loss, agree, phases = None, 0.0, 0, []
    for sample, enc, r, feats in rolled:
        scored = score(loaded, teacher, cfg, enc, teacher_prompt(loaded, sample, cfg),
                       r.token_ids, normaliser, feats)
        beat()
        grads, loss, agree = _add(grads, scored.grads), loss + scored.loss, agree + scored.agree
        phases.append(scored)
    mx.reset_peak_memory()
    if grads is None:  # more ranks than prompts: this rank contributes zeros
        grads = tree_map(mx.zeros_like, loaded.model.trainable_parameters())
    mx.eval(grads)
    t_wait = time.perf_counter()
    distributed.barrier(dist)  # waiting here = the ranks' load imbalance, not the link
    t_reduce = time.perf_counter()
    grads = distributed.sum_tree(grads, dist)
    mx.eval(grads)
    allreduce_seconds = time.perf_counter() - t_reduce
    loss, agree = distributed.sum_floats([loss, agree], dist)
    grads, grad_norm = optim.clip_grad_norm(grads, cfg.optim.grad_clip)
    grad_norm = float(grad_norm.item())
    lr = float(lr_at(cfg.optim, state.step))  # the lr this step applies (0-based step)
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    commit_step(loaded.model, optimizer, teacher, state, grads if finite else None)
    per_rank = distributed.gather_float(rollout_seconds, dist)
    record = {
        "step": state.step,
        # the divergence itself; with the sampled estimator, its policy-gradient surrogate
        "loss/objective" if cfg.loss.estimator != "sampled" else "loss/surrogate": loss,
        "rollout/tokens": n_tokens,
        "rollout/mean_response_len": n_tokens / max(n_seqs, 1),
        "rollout/max_response_len": longest,
        "rollout/finished_frac": finished / max(n_seqs, 1),
        # positions the decode computed (a row's tokens, plus up to rollout.CHECK_EVERY - 1
        # past its EOS before it leaves the batch): kept / computed is the useful fraction
        "rollout/tokens_computed": computed,
        "rollout/useful_frac": n_tokens / max(computed, 1),
        "rollout/tokens_per_s": n_tokens / max(max(per_rank), 1e-9),
        "rollout/seconds": max(per_rank),
        "time/step_seconds": time.perf_counter() - t0,
        "memory/peak_bytes": max([rollout_peak, mx.get_peak_memory()]
                                 + [max(p.teacher_peak, p.student_peak) for p in phases]),
        "memory/resident_bytes": resident,
        "memory/rollout_peak_bytes": rollout_peak,
        "memory/teacher_peak_bytes": max((p.teacher_peak for p in phases), default=0),
        "memory/student_peak_bytes": max((p.student_peak for p in phases), default=0),
        "time/teacher_seconds": sum(p.teacher_seconds for p in phases),
        "time/student_seconds": sum(p.student_seconds for p in phases),
        "optim/lr": lr,
        "optim/grad_norm": grad_norm,
        "optim/skipped_nonfinite": not finite,
        "teacher/argmax_agreement": agree / max(n_tokens, 1),
        "data/samples_seen": state.step * cfg.optim.prompts_per_step,
    }
    if dist.active:
        record.update({"dist/ranks": dist.size, "dist/allreduce_seconds": allreduce_seconds,
                       "dist/wait_seconds": t_reduce - t_wait,
                       "dist/allreduce_bytes": distributed.tree_bytes(grads)})
        record.update({f"dist/rollout_seconds_rank{r}": t for r, t in enumerate(per_rank)})
    return record


def commit_step(model, optimizer, teacher: Teacher, state: RunState, grads) -> None:
    """Apply one step all or nothing: the optimizer update, the teacher update and the
    counters land together (grads None: a skipped non-finite step). Ctrl-C waits until
    they have; an error inside restores the state before the step (MLX arrays are
    immutable, so keeping references is a snapshot)."""
    from mlx_opd.run.signals import deferred_interrupt

    with deferred_interrupt():
        before = (model.trainable_parameters(), tree_map(lambda x: x, optimizer.state),
                  teacher.params)
        try:
            if grads is not None:
                optimizer.update(model, grads)
                mx.eval(model.trainable_parameters(), optimizer.state)
                teacher.update(model)
                state.nonfinite_in_a_row = 0
            else:
                state.nonfinite_in_a_row += 1
                state.nonfinite_total += 1
            state.step += 1
        except BaseException:
            model.update(before[0])
            optimizer.state, teacher.params = before[1], before[2]
            raise
