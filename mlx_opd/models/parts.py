"""The parts of mlx-vlm the rest of mlx-opd uses, each behind one function: prompt
caches, the attention mask of a prefix call, its single-sequence decoder, a model class
built from a config, LoRA fusing, dequantizing and the SAM3 detector. Nothing outside
mlx_opd/models imports mlx_vlm (tests/test_layout.py checks the tree)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def make_prompt_cache(model: nn.Module) -> list:
    """mlx-vlm's own cache for each decoder layer of `model.language_model`."""
    from mlx_vlm.models import cache

    return cache.make_prompt_cache(model.language_model)


def attention_mask(N: int, window_size=None, return_array: bool = False):
    """The causal mask mlx-vlm's layers expect for an N-token call from position 0."""
    from mlx_vlm.models.base import create_attention_mask

    return create_attention_mask(mx.zeros((1, N, 1)), None, window_size, return_array)


def generate_step(*args, **kwargs):
    """mlx-vlm's single-sequence decoder (mlx_vlm.generate.generate_step)."""
    from mlx_vlm.generate import generate_step as step

    return step(*args, **kwargs)


def model_from_config(config: dict, seed: int | None = None) -> nn.Module:
    """mlx-vlm's model for a Hugging Face config dict, randomly initialised (seeded when
    `seed` is given); quantization entries are ignored."""
    import json

    from mlx_vlm.utils import get_model_and_args, update_module_configs

    cfg = json.loads(json.dumps(config))
    cfg.pop("quantization", None)
    cfg.pop("quantization_config", None)
    model_class, _ = get_model_and_args(cfg)
    cfg.setdefault("text_config", {})
    cfg.setdefault("vision_config", {})
    mcfg = update_module_configs(model_class.ModelConfig.from_dict(cfg), model_class, cfg,
                                 ["text", "vision"])
    if seed is not None:
        mx.random.seed(seed)
    return model_class.Model(mcfg)


def adapter_config(model: nn.Module) -> dict:
    """The adapter config mlx-vlm recorded on the model (model.config.lora) when it added
    or loaded LoRA layers."""
    config = model.config
    return config["lora"] if isinstance(config, dict) else config.lora


def fuse_lora(model: nn.Module, dequantize: bool) -> int:
    """Replace every LoRA linear layer by its fused Linear; returns how many were fused."""
    from mlx.utils import tree_unflatten
    from mlx_vlm.trainer.peft.lora_layers import LoRALinear

    fused = [(name, m.fuse(dequantize=dequantize)) for name, m in model.named_modules()
             if isinstance(m, LoRALinear)]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return len(fused)


def dequantize(model: nn.Module) -> int:
    """Dequantize every quantized layer in place; returns how many there were."""
    from mlx_vlm.trainer.common.model import _dequantize_model

    n = sum(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
            for _, m in model.named_modules())
    _dequantize_model(model)
    return n


def load_sam3(path: str):
    """mlx-vlm's SAM3 image predictor for the checkpoint folder `path`."""
    try:
        from mlx_vlm.models.sam3.generate import Sam3Predictor
        from mlx_vlm.models.sam3.processing_sam3 import Sam3Processor
        from mlx_vlm.utils import get_model_path, load_model
    except ImportError as e:
        raise RuntimeError(f"--detector sam3 needs mlx-vlm with SAM3 support ({e}); "
                           "pip install -U mlx-vlm") from None
    mp = get_model_path(path)
    return Sam3Predictor(load_model(mp), Sam3Processor.from_pretrained(str(mp)),
                         score_threshold=0.0)
