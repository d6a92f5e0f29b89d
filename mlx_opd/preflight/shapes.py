"""What a model and its data look like to the plan, from config files alone: the decoder's
widths (Shapes), exact parameter counts by part (from mlx-vlm's own model class, shapes
only), and the image tokens of each view as the processor resizes it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Shapes:
    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    patch: int
    merge: int
    linear_layers: int          # gated-delta layers (Qwen3.5)
    linear_state: int           # elements of one row's recurrent state per linear layer


def shapes_of(config: dict) -> Shapes:
    """The widths `plan` needs, from a config.json."""
    text = config.get("text_config", config)
    vis = config["vision_config"]
    family = config["model_type"]
    layers = text["num_hidden_layers"]
    heads = text["num_attention_heads"]
    hidden = text["hidden_size"]
    depth = vis["depth"]
    if family == "qwen2_vl":
        v_hidden = vis.get("embed_dim", 1280)
        v_inter = int(v_hidden * vis.get("mlp_ratio", 4))
    else:
        v_hidden, v_inter = vis["hidden_size"], vis["intermediate_size"]
    linear, state = 0, 0
    if family == "qwen3_5":
        k = text.get("full_attention_interval", 4)
        linear = sum(1 for i in range(layers) if (i + 1) % k != 0)
        state = text["linear_num_value_heads"] * text["linear_key_head_dim"] * \
            text["linear_value_head_dim"]
    return Shapes(family, hidden, layers, heads, text.get("num_key_value_heads", heads),
                  text.get("head_dim") or hidden // heads, text["intermediate_size"],
                  text["vocab_size"], bool(config.get("tie_word_embeddings",
                                                      text.get("tie_word_embeddings", False))),
                  depth, v_hidden, v_inter, vis["num_heads"], vis["patch_size"],
                  vis.get("spatial_merge_size", 2), linear, state)


def param_counts(config: dict) -> dict:
    """Exact parameter counts by part, from mlx-vlm's own model class (shapes only:
    nothing is allocated). Cached: `advice` predicts the same model a dozen times."""
    return dict(_param_counts(json.dumps(config, sort_keys=True)))


@lru_cache(maxsize=8)
def _param_counts(config_json: str) -> tuple:
    from mlx.utils import tree_flatten

    from mlx_opd.models.parts import model_from_config

    counts = {"embed": 0, "head": 0, "text_layers": 0, "vision": 0, "other": 0, "lora_fans": 0}
    model = model_from_config(json.loads(config_json))
    import mlx.nn as nn

    # LoRA goes on every linear layer of the decoder (lora.py): rank x (in + out) each
    for layer in model.language_model.model.layers:
        for _, m in layer.named_modules():
            if isinstance(m, nn.Linear):
                out_f, in_f = m.weight.shape
                counts["lora_fans"] += in_f + out_f
    for name, v in tree_flatten(model.parameters()):
        n = math.prod(v.shape)
        if "embed_tokens" in name:
            counts["embed"] += n
        elif "lm_head" in name:
            counts["head"] += n
        elif ".layers." in name:
            counts["text_layers"] += n
        elif "vision" in name or "visual" in name:
            counts["vision"] += n
        else:
            counts["other"] += n
    return tuple(counts.items())


def smart_resize(height: int, width: int, factor: int, min_pixels: int,
                 max_pixels: int) -> tuple[int, int]:
    """The Qwen processors' resize: sides rounded to `factor`, pixel count within bounds,
    aspect ratio kept."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def pixel_bounds(processor: dict, pixels) -> tuple[int, int]:
    size = processor.get("size") or {}
    lo = processor.get("min_pixels") or size.get("shortest_edge") or 56 * 56
    hi = processor.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280
    if pixels.min_pixels:
        lo = pixels.min_pixels
    if pixels.max_pixels:
        hi = pixels.max_pixels
    return lo, hi


def image_tokens(size: tuple[int, int], s: Shapes, bounds: tuple[int, int],
                 resized: tuple[int, int] | None = None) -> int:
    """Tokens the processor gives one (width, height) image."""
    factor = s.patch * s.merge
    if resized:
        h, w = (max(factor, round(x / factor) * factor) for x in resized)
    else:
        h, w = smart_resize(size[1], size[0], factor, *bounds)
    return (h // factor) * (w // factor)


def data_sizes(cfg, limit: int = 64) -> tuple[tuple[int, int], tuple[int, int]]:
    """The largest full image and the largest teacher view (its images' sizes after zoom:
    one crop, or one per box for views.teacher crops, or the full image for clean) among
    the first `limit` samples (read and validated as training reads them; sizes from the
    headers)."""
    import dataclasses

    from mlx_opd.data import read_samples, union_box
    from mlx_opd.data.images import header_size

    v = cfg.views
    samples, _ = read_samples(dataclasses.replace(cfg.data, limit=limit), v.needs_boxes())
    z = v.zoom * (1 + 2 * v.crop_margin)

    def zoomed(b):
        return (max(v.min_crop_side, round((b[2] - b[0]) * z)),
                max(v.min_crop_side, round((b[3] - b[1]) * z)))

    full, teacher = (0, 0), ((0, 0),)
    for s in samples:
        w, h = header_size(s.image)
        if w * h > full[0] * full[1]:
            full = (w, h)
        boxes = s.all_boxes
        if v.teacher == "clean" or not boxes and s.teacher_image is None:
            sizes = ((w, h),)
        elif v.teacher == "crops" and len(boxes) > 1:
            sizes = tuple(zoomed(b) for b in boxes)
        elif s.teacher_image is not None:
            sizes = (header_size(s.teacher_image),)
        else:
            sizes = (zoomed(union_box(boxes)),)
        if sum(a * b for a, b in sizes) > sum(a * b for a, b in teacher):
            teacher = sizes
    return full, (teacher[0] if len(teacher) == 1 else teacher)


def teacher_sizes(crop_size) -> list:
    """The teacher view's image sizes: `crop_size` is one (w, h) or a sequence of them."""
    return [tuple(crop_size)] if isinstance(crop_size[0], (int, float)) else \
        [tuple(c) for c in crop_size]
