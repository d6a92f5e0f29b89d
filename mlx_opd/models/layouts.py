"""Hugging Face <-> mlx-vlm parameter names and layouts, per supported family.

mlx-vlm renames and re-lays-out Hugging Face checkpoints on load (`Model.sanitize`).
The tiny-checkpoint builder (and later the exporter) needs the inverse: MLX names and
layouts -> the names and layouts a Hugging Face checkpoint of the same family uses.
The round trip `to_hf_weights` -> `mlx_vlm.load` is checked exactly in the tests.
"""

from __future__ import annotations

SUPPORTED_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")

# Prefix maps, MLX -> HF, first match wins.
_PREFIXES = {
    "qwen2_vl": (("vision_tower.", "visual."), ("language_model.model.", "model."),
                 ("language_model.lm_head.", "lm_head.")),
    "qwen3_vl": (("vision_tower.", "model.visual."),
                 ("language_model.model.", "model.language_model."),
                 ("language_model.lm_head.", "lm_head.")),
}
_PREFIXES["qwen2_5_vl"] = _PREFIXES["qwen2_vl"]
_PREFIXES["qwen3_5"] = _PREFIXES["qwen3_vl"]

# Qwen3.5 stores these RMSNorm weights as offsets from 1 (the model computes x * (1 + w));
# mlx-vlm adds 1 on load, so the inverse subtracts it.
_QWEN3_5_OFFSET_NORMS = (".input_layernorm.weight", ".post_attention_layernorm.weight",
                         "model.norm.weight", ".q_norm.weight", ".k_norm.weight")


class UnsupportedFamilyError(ValueError):
    """A checkpoint whose model_type mlx-opd does not support."""


def check_family(model_type: str | None, where: str = "config.json") -> str:
    """Return `model_type` if supported, else raise an error that lists the supported ones."""
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedFamilyError(
            f"{where}: model_type {model_type!r} is not supported by mlx-opd. "
            f"Supported families: {', '.join(SUPPORTED_FAMILIES)}. "
            "Use a checkpoint of one of these families (e.g. an mlx-community Qwen2.5-VL repo)."
        )
    return model_type


def hf_name(family: str, mlx_name: str) -> str:
    """The Hugging Face parameter name of an mlx-vlm parameter name."""
    for src, dst in _PREFIXES[check_family(family)]:
        if mlx_name.startswith(src):
            return dst + mlx_name[len(src):]
    raise KeyError(f"{family}: no Hugging Face name for parameter {mlx_name!r}")


def to_hf_weights(family: str, weights: dict) -> dict:
    """Map {mlx name: array} to {HF name: array} in Hugging Face layout (pure, no I/O)."""
    out = {}
    for name, value in weights.items():
        if name.endswith("patch_embed.proj.weight") and value.ndim == 5:
            value = value.transpose(0, 4, 1, 2, 3)  # MLX [O,T,H,W,C] -> torch [O,C,T,H,W]
        if family == "qwen3_5":
            if name.endswith("conv1d.weight") and value.ndim == 3:
                value = value.swapaxes(1, 2)  # MLX [C,K,1] -> torch [C,1,K]
            if (name.startswith("language_model.") and value.ndim == 1
                    and any(name.endswith(s) for s in _QWEN3_5_OFFSET_NORMS)):
                value = value - 1.0
        out[hf_name(family, name)] = value
    return out
