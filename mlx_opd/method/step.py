"""One training step, its phases in order (train_step): roll out (the student samples n
answers per prompt, rollout.py) -> score (teacher and student on the same tokens,
score.py) -> reduce and clip -> the optimizer and teacher update, all or nothing
(commit_step) -> the step's metrics. Also what a step needs: the schedule, the data
order, the rollout keys and the two views' prompts."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from mlx_opd import models
from mlx_opd.data import Sample
from mlx_opd.method.rollout import sample_prompts
from mlx_opd.method.score import frozen_inputs, score
from mlx_opd.method.teacher import Teacher
from mlx_opd.method.views import student_view, teacher_view
from mlx_opd.run import distributed
from mlx_opd.run.config import TrainConfig


@dataclass
class RunState:
    step: int = 0
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    extra: dict = field(default_factory=dict)


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


def student_prompt(loaded, sample: Sample, cfg: TrainConfig, step: int = 0) -> models.Encoded:
    """The student view's prompt (views.student: the full image with its boxes and the
    hint, plain, or degraded as at `step`)."""
    view = student_view(sample, cfg.views, step)
    return check_prompt_length(models.encode(loaded, view.images, view.text, cfg.pixels),
                               sample, cfg, "student")


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


def _add(a, b):
    return b if a is None else tree_map(lambda x, y: x + y, a, b)


@dataclass
class Rolled:
    """A step's rollouts on this rank and their counts over all ranks."""

    items: list          # (sample, student prompt, Rollouts, input features) per prompt
    tokens: float        # kept response tokens, all ranks
    rows: float          # responses, all ranks
    finished: float      # responses that ended with EOS, all ranks
    computed: float      # positions the decodes computed, all ranks
    longest: float       # the longest response, all ranks
    seconds: float       # this rank's rollout seconds
    peak: int            # this rank's rollout peak bytes


def train_step(cfg, loaded, optimizer, teacher, samples, state: RunState,
               dist: distributed.Dist | None = None, beat=lambda: None) -> dict:
    """One step, its phases in order: roll out -> score -> reduce and clip -> commit (the
    optimizer and teacher update) -> metrics. With several ranks each takes its share of
    the step's prompts (distributed.py)."""
    dist = dist or distributed.init()
    t0, resident = time.perf_counter(), mx.get_active_memory()  # weights, optimizer, teacher
    mx.reset_peak_memory()
    mx.random.seed((cfg.run.seed * 7919 + state.step) % (1 << 31))  # e.g. LoRA dropout
    rolled = roll_out_step(cfg, loaded, samples, state, dist, beat)
    grads, loss, agree, phases = score_step(cfg, loaded, teacher, rolled, beat)
    grads, reduce = reduce_step(loaded, grads, dist)
    loss, agree = distributed.sum_floats([loss, agree], dist)
    grads, grad_norm = optim.clip_grad_norm(grads, cfg.optim.grad_clip)
    grad_norm = float(grad_norm.item())
    lr = float(lr_at(cfg.optim, state.step))  # the lr this step applies (0-based step)
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    commit_step(loaded.model, optimizer, teacher, state, grads if finite else None)
    record = step_metrics(cfg, state, rolled, phases, dist, loss=loss, agree=agree, lr=lr,
                          grad_norm=grad_norm, finite=finite, resident=resident, t0=t0)
    if dist.active:
        record.update({"dist/ranks": dist.size, **reduce,
                       "dist/allreduce_bytes": distributed.tree_bytes(grads)})
    return record


def roll_out_step(cfg, loaded, samples, state: RunState, dist, beat) -> Rolled:
    """This rank's share of the step's prompts, rolled out, and the counts of all ranks."""
    picked = [samples[i] for i in data_order(len(samples), cfg.run.seed, state.step,
                                             cfg.optim.prompts_per_step)]
    mine = distributed.my_share(picked, dist)
    encs, outs, feats = roll_out(loaded, [s for _, s in mine], cfg,
                                 [rollout_key(cfg.run.seed, state.step, j) for j, _ in mine],
                                 beat, state.step)
    items = list(zip([s for _, s in mine], encs, outs, feats))
    lengths = [len(t) for _, _, r, _ in items for t in r.token_ids]
    finished = sum(f for _, _, r, _ in items for f in r.finished)
    computed = sum(r.computed_tokens for _, _, r, _ in items)
    tokens, rows, finished, computed = distributed.sum_floats(
        [sum(lengths), len(lengths), finished, computed], dist)
    longest = max(distributed.gather_float(float(max(lengths, default=0)), dist))
    return Rolled(items, tokens, rows, finished, computed, longest,
                  sum(r.seconds for _, _, r, _ in items), mx.get_peak_memory())


def score_step(cfg, loaded, teacher: Teacher, rolled: Rolled, beat):
    """Each prompt's responses scored (score.py), gradients summed: (grads, loss, agree,
    each prompt's Scored)."""
    normaliser = rolled.tokens if cfg.loss.reduction == "token_mean" else rolled.rows
    grads, loss, agree, phases = None, 0.0, 0, []
    for sample, enc, r, feats in rolled.items:
        scored = score(loaded, teacher, cfg, enc, teacher_prompt(loaded, sample, cfg),
                       r.token_ids, normaliser, feats)
        beat()
        grads, loss, agree = _add(grads, scored.grads), loss + scored.loss, agree + scored.agree
        phases.append(scored)
    mx.reset_peak_memory()
    if grads is None:  # more ranks than prompts: this rank contributes zeros
        grads = tree_map(mx.zeros_like, loaded.model.trainable_parameters())
    mx.eval(grads)
    return grads, loss, agree, phases


def reduce_step(loaded, grads, dist):
    """The gradients summed over the ranks, and the seconds it took (waiting for the
    slowest rank apart)."""
    t_wait = time.perf_counter()
    distributed.barrier(dist)  # waiting here = the ranks' load imbalance, not the link
    t_reduce = time.perf_counter()
    grads = distributed.sum_tree(grads, dist)
    mx.eval(grads)
    return grads, {"dist/allreduce_seconds": time.perf_counter() - t_reduce,
                   "dist/wait_seconds": t_reduce - t_wait}


def step_metrics(cfg, state: RunState, rolled: Rolled, phases, dist, *, loss, agree, lr,
                 grad_norm, finite, resident, t0) -> dict:
    """The step's line in metrics.jsonl (docs/training.md lists the keys)."""
    per_rank = distributed.gather_float(rolled.seconds, dist)
    n = rolled.tokens
    record = {
        "step": state.step,
        # the divergence itself; with the sampled estimator, its policy-gradient surrogate
        "loss/objective" if cfg.loss.estimator != "sampled" else "loss/surrogate": loss,
        "rollout/tokens": n,
        "rollout/mean_response_len": n / max(rolled.rows, 1),
        "rollout/max_response_len": rolled.longest,
        "rollout/finished_frac": rolled.finished / max(rolled.rows, 1),
        # positions the decode computed (a row's tokens, plus up to rollout.CHECK_EVERY - 1
        # past its EOS before it leaves the batch): kept / computed is the useful fraction
        "rollout/tokens_computed": rolled.computed,
        "rollout/useful_frac": n / max(rolled.computed, 1),
        "rollout/tokens_per_s": n / max(max(per_rank), 1e-9),
        "rollout/seconds": max(per_rank),
        "time/step_seconds": time.perf_counter() - t0,
        "memory/peak_bytes": max([rolled.peak, mx.get_peak_memory()]
                                 + [max(p.teacher_peak, p.student_peak) for p in phases]),
        "memory/resident_bytes": resident,
        "memory/rollout_peak_bytes": rolled.peak,
        "memory/teacher_peak_bytes": max((p.teacher_peak for p in phases), default=0),
        "memory/student_peak_bytes": max((p.student_peak for p in phases), default=0),
        "time/teacher_seconds": sum(p.teacher_seconds for p in phases),
        "time/student_seconds": sum(p.student_seconds for p in phases),
        "optim/lr": lr,
        "optim/grad_norm": grad_norm,
        "optim/skipped_nonfinite": not finite,
        "teacher/argmax_agreement": agree / max(n, 1),
        "data/samples_seen": state.step * cfg.optim.prompts_per_step,
    }
    if dist.active:
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

