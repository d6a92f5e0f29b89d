"""Trainable parameters: LoRA on the language model's linear layers, or a full fine-tune.

Convention (one, stated once): mlx-vlm's `LoRALinear`, y = W x + (alpha / rank) * B A x,
with B initialised to zero so training starts from the base model exactly; the scale
alpha / rank is PEFT's. A quantized base keeps its QuantizedLinear under the adapter
(QLoRA). Adapters are saved in mlx-vlm's layout (adapters.safetensors +
adapter_config.json with the adapted module names), so `mlx_vlm.load(base,
adapter_path=DIR)` and `mlx-opd compare --adapter DIR` load them as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_opd.models.parts import adapter_config
from mlx_opd.run.config import LoraConfig
from mlx_opd.run.files import write_dir_atomically


def target_names(model: nn.Module, train_vision: bool) -> list[str]:
    """Qualified names of the Linear / QuantizedLinear layers to adapt: all of the
    language model's except the LM head, plus the vision tower's when asked."""
    prefixes = ["language_model."] + (["vision_tower."] if train_vision else [])
    return [name for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.QuantizedLinear))
            and any(name.startswith(p) for p in prefixes) and not name.endswith("lm_head")]


def attach(model: nn.Module, cfg: LoraConfig) -> dict:
    """Freeze the base and make the configured parameters trainable; returns the adapter
    config that is saved beside the weights."""
    if cfg.finetune == "full":
        model.freeze()
        model.language_model.unfreeze()
        if cfg.train_vision:
            model.vision_tower.unfreeze()
        config = {"fine_tune_type": "full"}
    else:
        from mlx_vlm.trainer.peft.utils import get_peft_model

        get_peft_model(model, target_names(model, cfg.train_vision), rank=cfg.rank,
                       alpha=cfg.alpha, dropout=cfg.dropout, freeze=True, verbose=False)
        config = adapter_config(model)
    # which family the adapter belongs to, so an export onto another base fails clearly
    config["mlx_opd"] = {"base_model_type": model.config.model_type}
    return config


def trainable(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def saved_weights(model: nn.Module, adapter_config: dict) -> dict[str, mx.array]:
    """What goes into adapters.safetensors: the adapters, or every weight for a full
    fine-tune (mlx-vlm's loader reads a full fine-tune's file strictly)."""
    if adapter_config.get("fine_tune_type") == "full":
        return dict(tree_flatten(model.parameters()))
    return trainable(model)


def save_adapter(dest: Path, weights: dict[str, mx.array], adapter_config: dict,
                 files: dict[str, str] | None = None, keep: tuple[str, ...] = ()) -> Path:
    """Write an adapter folder atomically; `files`: extra text files written with it;
    `keep`: sub-folders of the folder being replaced that are carried over (the trainer's
    adapters/best)."""
    import shutil

    def write(tmp: Path):
        mx.save_safetensors(str(tmp / "adapters.safetensors"), weights)
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        for sub in keep:
            if (Path(dest) / sub).is_dir():
                shutil.copytree(Path(dest) / sub, tmp / sub)

    return write_dir_atomically(dest, write, kind="adapter", carried=keep)
