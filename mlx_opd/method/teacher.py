"""The teacher's weights: never the live policy by default (docs/design/method.md, "Teacher weights").

The base weights are shared; only the trainable parameters (the LoRA factors, or every
weight in a full fine-tune) have a teacher copy. Modes:
    ema     teacher <- (1 - r) * teacher + r * student after every optimizer step,
            starting from the initial model. The recipe's rate (0.05) is per step of 96
            prompts; with p prompts per step, r = 1 - (1 - rate) ** (p / 96)
            (`rate_per_step`), so the teacher trails the student by the same amount of
            data whatever the batch (optim.reference_prompts_per_step sets the 96).
            With LoRA this averages the FACTORS A and B
            separately, which is not the EMA of the product B @ A (the authors' EMA is over
            full weights); it is cheap, exact for a full fine-tune, and it starts from the
            base model because B starts at zero.
    frozen  the initial model (for LoRA: adapters off).
    live    the current policy itself; the authors saw this collapse (avg. accuracy 0.51).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from mlx_opd.models.lora import trainable
from mlx_opd.run.config import TeacherConfig


def rate_per_step(rate: float, prompts_per_step: int, reference_prompts: int) -> float:
    """The EMA rate per optimizer step of `prompts_per_step` prompts that decays the
    teacher as much per prompt seen as `rate` per step of `reference_prompts` prompts."""
    return 1.0 - (1.0 - rate) ** (prompts_per_step / reference_prompts)


class Teacher:
    def __init__(self, model: nn.Module, cfg: TeacherConfig, prompts_per_step: int | None = None,
                 reference_prompts: int | None = None):
        """`prompts_per_step` and `reference_prompts` convert cfg.ema_rate from the
        recipe's units (see rate_per_step); without them the rate is per step as given."""
        self.cfg = cfg
        self.rate = cfg.ema_rate if prompts_per_step is None else \
            rate_per_step(cfg.ema_rate, prompts_per_step, reference_prompts)
        if cfg.mode == "live":
            warnings.warn("teacher.mode=live: the teacher is the current policy; the Vision-OPD "
                          "authors saw this collapse (average accuracy 0.51). Prefer ema.",
                          stacklevel=2)
        # a real copy: later in-place updates of the student must not reach it
        self.params = {} if cfg.mode == "live" else {k: mx.array(v) for k, v in trainable(model).items()}
        mx.eval(self.params)

    @contextmanager
    def weights_in(self, model: nn.Module):
        """Temporarily put the teacher's parameters into `model` (no-op for live)."""
        if not self.params:
            yield
            return
        student = trainable(model)
        model.update(tree_unflatten(list(self.params.items())))
        try:
            yield
        finally:
            model.update(tree_unflatten(list(student.items())))

    def update(self, model: nn.Module) -> None:
        """After an optimizer step: EMA toward the student (ema), nothing otherwise."""
        if self.cfg.mode != "ema":
            return
        r = self.rate
        student = trainable(model)
        self.params = {k: (1.0 - r) * v + r * student[k] for k, v in self.params.items()}
        mx.eval(self.params)
