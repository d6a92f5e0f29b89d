"""The teacher's weights: never the live policy by default (method.md, "Teacher weights").

The base weights are shared; only the trainable parameters (the LoRA factors, or every
weight in a full fine-tune) have a teacher copy. Modes:
    ema     teacher <- (1 - rate) * teacher + rate * student after every optimizer step,
            starting from the initial model. With LoRA this averages the FACTORS A and B
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

from .config import TeacherConfig
from .lora import trainable


class Teacher:
    def __init__(self, model: nn.Module, cfg: TeacherConfig):
        self.cfg = cfg
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
        r = self.cfg.ema_rate
        student = trainable(model)
        self.params = {k: (1.0 - r) * v + r * student[k] for k, v in self.params.items()}
        mx.eval(self.params)
