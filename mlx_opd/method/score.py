"""Scoring, the method's central phase: the teacher (its weights, the crop prompt,
stop-gradient) and the student (the full-image prompt, with the gradient) score the same
sampled tokens; the divergence between their next-token distributions comes from hidden
states through the LM head chunk by chunk (loss.fused_token_divergence), each view's
prompt run once for its n responses (prefix.py; score.shared_prefix=false repeats it
per row, the reference)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_opd import models
from mlx_opd.method import prefix
from mlx_opd.method.loss import AUTHORS_TAIL_FLOOR, EXACT_TAIL_FLOOR, fused_token_divergence
from mlx_opd.method.teacher import Teacher
from mlx_opd.run.config import TrainConfig


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


def frozen_inputs(cfg: TrainConfig) -> bool:
    """True when the vision tower and the embeddings are not trained (LoRA on the language
    model): a prompt's input embeddings are then the same in every phase of a step."""
    return cfg.lora.finetune != "full" and not cfg.lora.train_vision



def divergence_kwargs(cfg: TrainConfig, estimator: str | None = None) -> dict:
    """The fused divergence's arguments a config sets (loss.*, the rollout temperature):
    the one place a loss config becomes a call (the step and validation use it)."""
    c = cfg.loss
    return dict(kind=c.kind, beta=c.beta, estimator=estimator or c.estimator, k=c.k,
                tail=c.tail, temperature=cfg.rollout.temperature, backend=c.backend,
                chunk_size=c.chunk_size,
                tail_floor=EXACT_TAIL_FLOOR if c.exact_tail else AUTHORS_TAIL_FLOOR)


def _divergence(cfg, student_hidden, teacher_hidden, head, ids, mask, head_trainable,
                teacher_head=None):
    return fused_token_divergence(
        student_hidden, teacher_hidden, head, mask, reduction="none", sampled_ids=ids,
        head_weight_trainable=head_trainable, teacher_head=teacher_head, with_agreement=True,
        **divergence_kwargs(cfg))


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

