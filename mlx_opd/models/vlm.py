"""The one place that knows mlx-vlm's calling quirks.

Everything else in mlx-opd talks to a VLM through this module:
- `load` a model + processor (hub id or folder, optional LoRA adapter), family checked;
- `encode` one (image, text) pair into prompt ids + pixel inputs, with pixel controls;
- `response_logits` / `response_hidden`: teacher-forced outputs at the positions that
  predict each response token, for a right-padded batch of (prompt, response ids);

Quirks handled here (see docs/design/mlx.md):
1. Batches are RIGHT-padded: the forward pass uses a plain causal mask and the 2-D mask
   only feeds the M-RoPE index, so left padding shifts real tokens' logits.
2. The language model caches `_position_ids` / `_rope_deltas`; we reset them before every
   teacher-forced call so a call never reuses another prompt's positions.
3. Teacher and student prompts differ in length (the crop has fewer image tokens), so
   outputs are aligned on response positions only: token t of a response is predicted at
   position prompt_len - 1 + t of its own row.
4. Image/video pad tokens must never be sampled (they would be read as image slots when
   scored later): `blocked_token_ids` gives them for a logit bias.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_opd.models.head import (  # noqa: F401  (moved to head.py)
    apply_head,
    head_as_identity,
    lm_head,
    lm_head_key,
)
from mlx_opd.models.hub import (  # noqa: F401  (moved to hub.py)
    AdapterMismatchError,
    ModelNotFoundError,
    base_identity,
    check_adapter_config,
    resolve_path,
)
from mlx_opd.models.layouts import check_family
from mlx_opd.run.config import PixelConfig

BLOCK_BIAS = -1e9  # additive logit bias that removes a token from sampling


@dataclass
class Loaded:
    """A loaded VLM: the mlx-vlm model, its processor and what we know about it."""

    model: nn.Module
    processor: Any
    family: str
    path: Path
    adapter_path: Path | None = None

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)


@dataclass
class Encoded:
    """One prompt ready for the model: ids [1, L] and its image inputs."""

    input_ids: mx.array
    pixel_values: mx.array
    image_grid_thw: mx.array
    image_size: tuple[int, int]  # (width, height) of the first image after the resize

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def num_images(self) -> int:
        return 0 if self.image_grid_thw is None else self.image_grid_thw.shape[0]


def compute_dtype(requested: str = "auto") -> mx.Dtype | None:
    """The dtype float weights are cast to after loading, or None to keep the checkpoint's.
    "auto": float32 on the CPU backend (its bf16/fp16 matmuls are ~20x slower than fp32),
    the checkpoint's own dtype on Metal and CUDA, where half precision is the fast path."""
    if requested == "auto":
        return mx.float32 if mx.default_device().type == mx.DeviceType.cpu else None
    names = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
    if requested not in names:
        raise ValueError(f"dtype must be auto, {', '.join(names)}; got {requested!r}")
    return names[requested]


def check_adapter_fits(loaded: "Loaded", adapter_path: Path, config: dict) -> None:
    """Every LoRA matrix against its layer's widths and the adapter's recorded rank (the
    loader accepts mismatched shapes and fails later, deep in a matmul)."""
    from mlx_vlm.trainer.peft.lora_layers import LoRALinear

    rank = (config.get("lora_parameters") or {}).get("rank", config.get("rank"))
    for name, m in loaded.model.named_modules():
        if not isinstance(m, LoRALinear):
            continue
        out_dims, in_dims = m.linear.weight.shape
        if isinstance(m.linear, nn.QuantizedLinear):
            in_dims = in_dims * 32 // m.linear.bits
        if m.lora_a.shape[0] != in_dims or m.lora_b.shape[1] != out_dims:
            raise AdapterMismatchError(
                f"the adapter {adapter_path} does not fit {loaded.path}: {name} is "
                f"{in_dims} -> {out_dims} in the base, {m.lora_a.shape[0]} -> "
                f"{m.lora_b.shape[1]} in the adapter; pass --model the base it was trained on")
        if rank is not None and m.lora_a.shape[1] != rank:
            raise AdapterMismatchError(
                f"the adapter {adapter_path}: {name} has rank {m.lora_a.shape[1]} but its "
                f"adapter_config.json says {rank}; the folder was edited or mixed")


def load(model: str | Path, adapter_path: str | Path | None = None,
         dtype: str = "auto", revision: str | None = None) -> Loaded:
    """Load a supported VLM (family checked before any weights are read); float weights
    are cast to `compute_dtype(dtype)` (quantized weights stay quantized). An adapter is
    checked against the base wherever one is loaded (family, widths, rank): a mismatch is
    one AdapterMismatchError naming both."""
    from mlx_vlm import load as vlm_load

    path = resolve_path(model, revision=revision)
    config = json.loads((path / "config.json").read_text())
    family = check_family(config.get("model_type"), where=str(path / "config.json"))
    adapter_cfg = None if adapter_path is None else check_adapter_config(path, adapter_path)
    try:
        m, processor = vlm_load(str(path), adapter_path=None if adapter_path is None
                                else str(adapter_path))
    except (ValueError, KeyError, AttributeError, IndexError) as e:
        if adapter_path is None:
            raise
        raise AdapterMismatchError(
            f"the adapter {adapter_path} does not fit {path} ({type(e).__name__}: "
            f"{str(e)[:200]}); pass --model the base it was trained on") from None
    target = compute_dtype(dtype)
    if target is not None:
        floats = [v.dtype for _, v in tree_flatten(m.parameters())
                  if mx.issubdtype(v.dtype, mx.floating)]
        if any(d != target for d in floats):
            m.set_dtype(target)
            mx.eval(m.parameters())
    loaded = Loaded(m, processor, family, path,
                    None if adapter_path is None else Path(adapter_path))
    if adapter_cfg is not None:
        check_adapter_fits(loaded, Path(adapter_path), adapter_cfg)
    return loaded


def sampling_bias(loaded: Loaded, vocab: int) -> mx.array:
    """The additive logit bias [vocab] that blocks the image/video pad ids, built once per
    loaded model."""
    cached = loaded.__dict__.get("_sampling_bias")
    if cached is None or cached.shape[0] != vocab:
        b = [0.0] * vocab
        for i in blocked_token_ids(loaded):
            if i < vocab:
                b[i] = BLOCK_BIAS
        cached = loaded.__dict__["_sampling_bias"] = mx.array(b)
    return cached


def blocked_token_ids(loaded: Loaded) -> list[int]:
    """Ids of the image/video pad tokens, which sampling must never produce."""
    cfg = loaded.model.config
    ids = {getattr(cfg, "image_token_id", None), getattr(cfg, "video_token_id", None),
           getattr(cfg, "image_token_index", None), getattr(cfg, "video_token_index", None)}
    return sorted(i for i in ids if i is not None)


def eos_token_ids(loaded: Loaded) -> list[int]:
    eos = getattr(loaded.model.config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    tok = loaded.tokenizer
    for t in ("<|im_end|>", "<|endoftext|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    return sorted(ids)


class _DropProcessorKwargsNote:
    """transformers 5 warns on every chat template that mlx-vlm renders with its own keyword
    arguments (`processor_kwargs`); the prompt is right, the line repeats once per image."""

    def filter(self, record) -> bool:
        return "have to be in `processor_kwargs`" not in record.getMessage()


def _quiet_processor_note() -> None:
    import logging

    log = logging.getLogger("transformers.processing_utils")
    if not any(isinstance(f, _DropProcessorKwargsNote) for f in log.filters):
        log.addFilter(_DropProcessorKwargsNote())


def format_prompt(loaded: Loaded, text: str, num_images: int = 1) -> str:
    """The chat-formatted prompt for `num_images` images + `text` (the family's message
    format: the images first, in order, then the text)."""
    from mlx_vlm.prompt_utils import apply_chat_template

    _quiet_processor_note()
    return apply_chat_template(loaded.processor, loaded.model.config, text,
                               num_images=num_images)


def encode(loaded: Loaded, image, text: str, pixels: PixelConfig = PixelConfig()) -> Encoded:
    """Prompt ids and pixel inputs for a PIL image (or a sequence of them, in prompt
    order: a `crops` teacher) + question text."""
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    prompt = format_prompt(loaded, text, len(images))
    out = loaded.processor(text=[prompt], images=images, return_tensors="mlx",
                           **pixels.processor_kwargs())
    grid = mx.array(out["image_grid_thw"])
    patch = getattr(loaded.processor.image_processor, "patch_size", 14)
    t, h, w = (int(v) for v in grid[0].tolist())
    return Encoded(mx.array(out["input_ids"]), mx.array(out["pixel_values"]), grid,
                   (w * patch, h * patch))


def encode_text(loaded: Loaded, text: str) -> Encoded:
    """A text-only prompt (no image): for a judge model reading answers."""
    from mlx_vlm.prompt_utils import apply_chat_template

    prompt = apply_chat_template(loaded.processor, loaded.model.config, text, num_images=0)
    out = loaded.processor(text=[prompt], images=None, return_tensors="mlx")
    return Encoded(mx.array(out["input_ids"]), None, None, (0, 0))


def image_token_count(loaded: Loaded, enc: Encoded) -> int:
    return int((enc.input_ids == loaded.model.config.image_token_id).sum().item())


def rope_deltas(model: nn.Module):
    """The M-RoPE position delta the language model kept from its last prompt call (None
    for a family without one)."""
    return getattr(model.language_model, "_rope_deltas", None)


def reset_rope_state(model: nn.Module) -> None:
    """Forget the language model's cached M-RoPE positions (quirk 2)."""
    lm = model.language_model
    lm._position_ids = None
    lm._rope_deltas = None


@dataclass
class Batch:
    """A right-padded teacher-forcing batch: rows are prompt + response ids."""

    input_ids: mx.array       # [B, L] int32
    attention_mask: mx.array  # [B, L] 1 on real tokens
    pixel_values: mx.array    # all rows' patches, concatenated
    image_grid_thw: mx.array  # [B * images per prompt, 3]
    positions: mx.array       # [B, T] index of the position predicting response token t
    response_mask: mx.array   # [B, T] 1 where response token t exists
    response_ids: mx.array    # [B, T] (0 where padded)
    shared_prompt: bool = False  # every row has the same prompt (one image, n responses)


def pad_responses(responses: Sequence[Sequence[int]], pad_id: int = 0):
    """(ids [n, T] int32 right-padded, mask [n, T] float32, 1 on real tokens); T >= 1."""
    T = max(1, max(len(r) for r in responses))
    ids = [list(r) + [pad_id] * (T - len(r)) for r in responses]
    mask = [[1.0] * len(r) + [0.0] * (T - len(r)) for r in responses]
    return mx.array(ids, dtype=mx.int32), mx.array(mask)


def make_batch(prompts: Sequence[Encoded], responses: Sequence[Sequence[int]],
               pad_id: int = 0) -> Batch:
    """Right-pad prompt + response rows; compute response-aligned positions (quirk 3)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = [list(p.input_ids[0].tolist()) + list(r) for p, r in zip(prompts, responses)]
    L = max(len(r) for r in rows)
    rids, rmask = pad_responses(responses)
    T = rids.shape[1]
    ids, att, pos = [], [], []
    for p, row in zip(prompts, rows):
        n = len(row)
        ids.append(row + [pad_id] * (L - n))
        att.append([1] * n + [0] * (L - n))
        start = p.prompt_len - 1
        pos.append([min(start + t, L - 1) for t in range(T)])
    return Batch(
        mx.array(ids, dtype=mx.int32), mx.array(att, dtype=mx.int32),
        mx.concatenate([p.pixel_values for p in prompts], axis=0),
        mx.concatenate([p.image_grid_thw for p in prompts], axis=0),
        mx.array(pos, dtype=mx.int32), rmask, rids,
        shared_prompt=all(p is prompts[0] for p in prompts),
    )


# Families whose cached-image-feature path is exact (qwen3_vl's drops its deepstack
# features, see docs/design/mlx.md): there, a prompt shared by n rows runs the vision tower once.
SHARED_FEATURE_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_5")


def image_features(model: nn.Module, pixel_values: mx.array, grid: mx.array) -> mx.array:
    """Merged vision features of the images in `pixel_values` (one row per image token)."""
    vt = model.vision_tower
    pixel_values = pixel_values.astype(vt.patch_embed.proj.weight.dtype)
    if model.config.model_type == "qwen3_5":
        return vt(pixel_values, grid)[0]
    return vt(pixel_values, grid, output_hidden_states=False)


def _feature_kwargs(model: nn.Module, batch: Batch) -> dict:
    """Extra model arguments: a prompt shared by n rows runs the vision tower once where
    the cached-feature path is exact."""
    rows = batch.input_ids.shape[0]
    if getattr(batch, "shared_prompt", False) and rows > 1 and model.config.model_type in SHARED_FEATURE_FAMILIES:
        one = batch.pixel_values[: batch.pixel_values.shape[0] // rows]
        k = batch.image_grid_thw.shape[0] // rows  # the prompt's images (several crops)
        return {"cached_image_features": mx.concatenate(
            [image_features(model, one, batch.image_grid_thw[:k])] * rows)}
    return {}


def input_features(model: nn.Module, batch: Batch | Encoded):
    """The model's input embeddings for `batch` or one prompt (vision tower, deepstack features, M-RoPE
    positions), evaluated now. Computed outside a gradient pass when the vision tower and
    the embeddings are frozen, the values are the same and the tower's activations are
    freed at once (inside the pass qwen3_vl's deepstack evaluation kept every block's)."""
    reset_rope_state(model)
    # the same arguments Model.__call__ passes it (it keeps `mask` for the decoder)
    f = model.get_input_embeddings(batch.input_ids, batch.pixel_values,
                                   image_grid_thw=batch.image_grid_thw,
                                   **_feature_kwargs(model, batch))
    mx.eval([v for v in f.to_dict().values() if isinstance(v, mx.array)])
    reset_rope_state(model)
    return f


@contextmanager
def precomputed_inputs(model: nn.Module, features):
    """Inside, the model uses `features` (input_features) instead of computing its input
    embeddings: no vision tower in the traced computation."""
    if features is None:
        yield
        return
    object.__setattr__(model, "get_input_embeddings", lambda *a, **k: features)
    try:
        yield
    finally:
        object.__delattr__(model, "get_input_embeddings")


def _forward(model: nn.Module, batch: Batch) -> mx.array:
    reset_rope_state(model)
    out = model(batch.input_ids, pixel_values=batch.pixel_values, mask=batch.attention_mask,
                image_grid_thw=batch.image_grid_thw, **_feature_kwargs(model, batch))
    reset_rope_state(model)
    return getattr(out, "logits", out)


def _gather_positions(x: mx.array, positions: mx.array) -> mx.array:
    """x [B, L, D], positions [B, T] -> [B, T, D]."""
    return mx.take_along_axis(x, positions[..., None], axis=1)


def response_logits(model: nn.Module, batch: Batch) -> mx.array:
    """Logits [B, T, V] predicting each response token (teacher forcing); the head is
    applied at the response positions only (never [B, prompt_len, V])."""
    return apply_head(model, response_hidden(model, batch))


def response_hidden(model: nn.Module, batch: Batch) -> mx.array:
    """Final hidden states [B, T, H] at the positions predicting each response token;
    `apply_head` turns them into logits. Lets the loss apply the head chunk by chunk."""
    with head_as_identity(model):
        hidden = _forward(model, batch)
    return _gather_positions(hidden, batch.positions)


def response_logprobs(model: nn.Module, batch: Batch) -> mx.array:
    """Full-vocabulary log-probs [B, T, V] of the response positions."""
    logits = response_logits(model, batch).astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def decode(loaded: Loaded, ids: Sequence[int]) -> str:
    return loaded.tokenizer.decode(list(ids), skip_special_tokens=True)
