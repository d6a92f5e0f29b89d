"""Will a run fit? Peak memory of each phase of one Vision-OPD step, and its time on a
named Apple chip, predicted from the model's config, the pixel limits and the data's image
sizes, before any weights are loaded.

    mlx-opd plan --config run.yaml [--memory-gb 16] [--chip m3-pro] [--json plan.json]

The step's phases (step.train_step) and what each holds besides the resident weights:
- rollout: each prompt's prefill (batch 1: vision tower, every layer's transient
  activations, the head on the last position), then the KV cache (or recurrent state) of
  the step's prompts x n rows, decoded together;
- teacher: a no-gradient forward of the crop prompt once and n responses continuing from
  it (score.shared_prefix; the reference path: n rows x (crop prompt + response));
- student: the forward/backward of the full prompt once and n responses (the reference:
  n rows x (full prompt + response)) through the fused loss; with gradient checkpointing
  each decoder layer keeps only its input (and the prompt's keys/values) and one layer at
  a time is recomputed; without it every layer keeps its activations.
Resident: the weights (in the compute dtype: float32 on the CPU backend, whose half
precision matmuls are slow; the checkpoint's dtype on Metal; 4/8-bit stay quantized), the
LoRA parameters, their AdamW moments, the gradient and the teacher's adapter copy.
Attention scores are materialised ([rows, heads, L, L]) on the CPU backend; Metal's fused
attention does not materialise them. Each figure is the phase's own high-water mark,
comparable to `memory/<phase>_peak_bytes` in metrics.jsonl; `peak_bytes` is the largest.
The constants (how many arrays of each shape are alive at once) were calibrated against
`benchmarks/real_shapes.py` on the replicas (docs/benchmarks.md: predicted vs measured).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GIB = 1 << 30
TEXT_TOKENS = 110   # chat template + question + hint + options + instruction, measured
HEAD_SHARE = 0.35   # of the LM head's bytes alive in the shared-prefix student pass (fitted)
# Apple chips: unified-memory bandwidth (GB/s) and fp16 GPU throughput (TFLOP/s), the
# vendor's memory bandwidth and a commonly quoted GPU figure; time estimates assume 40% of
# peak FLOPs on the big matmuls and one weight read per decode step.
CHIPS = {
    "m1": (68, 2.6), "m1-pro": (200, 5.2), "m1-max": (400, 10.4), "m1-ultra": (800, 21.0),
    "m2": (100, 3.6), "m2-pro": (200, 6.8), "m2-max": (400, 13.6), "m2-ultra": (800, 27.2),
    "m3": (100, 4.1), "m3-pro": (150, 7.4), "m3-max": (400, 16.4),
    "m4": (120, 4.3), "m4-pro": (273, 9.2), "m4-max": (546, 18.4),
}
MFU = 0.4


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


# Arrays of the [heads, L, L] score shape alive at once in an attention (CPU fallback:
# the scores and part of their softmax), calibrated on the replicas.
SCORE_COPIES = 1.35


def _vision_transient(s: Shapes, patches: int, a: int, scores: bool) -> float:
    """Bytes alive at once inside one vision block over `patches` patches (every family
    has full-attention blocks over all of an image's patches)."""
    attn = SCORE_COPIES * 4 * s.vision_heads * patches * patches if scores else 0
    mlp = 3 * patches * s.vision_intermediate * a
    return max(attn, mlp) + 6 * patches * s.vision_hidden * a


def _layer_transient(s: Shapes, rows: int, length: int, a: int, scores: bool,
                     keys: int | None = None) -> float:
    """Bytes alive at once inside one decoder layer's forward over rows x length tokens
    (attending to `keys` positions: length, or a shared prefix + length)."""
    attn = SCORE_COPIES * 4 * rows * s.heads * length * (keys or length) if scores else 0
    mlp = 3 * rows * length * s.intermediate * a
    return max(attn, mlp) + 6 * rows * length * s.hidden * a


def _layer_saved(s: Shapes, rows: int, length: int, a: int, scores: bool,
                 keys: int | None = None) -> float:
    """Bytes one decoder layer keeps for its backward pass (and its recompute peak)."""
    tokens = rows * length
    attn = 3 * 4 * rows * s.heads * length * (keys or length) if scores else 0
    qkv = tokens * (s.heads + 2 * s.kv_heads) * s.head_dim * a * 2
    return attn + qkv + 5 * tokens * s.intermediate * a + 8 * tokens * s.hidden * a


def predict(config: dict, processor: dict, cfg, full_size, crop_size, dtype: str,
            backend: str, quant_bits: int | None = None) -> dict:
    """Phase peaks (bytes), resident bytes and token counts for one step of `cfg`."""
    s = shapes_of(config)
    counts = param_counts(config)
    a = 4 if dtype == "float32" else 2                     # activation bytes
    scores = backend == "cpu"                              # materialised attention scores
    wbytes = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    q = (quant_bits / 8 + 4 / 64) if quant_bits else None  # bits + fp16 scale/bias per 64
    text_w = counts["embed"] + counts["head"] + counts["text_layers"] + counts["other"]
    weights = (text_w * q if q else text_w * wbytes) + counts["vision"] * wbytes
    lora_params = _lora_params(counts, cfg)
    resident = weights + lora_params * 4 * 5  # params, 2 AdamW moments, grad, teacher copy
    bounds = pixel_bounds(processor, cfg.pixels)
    resized = (cfg.pixels.resized_height, cfg.pixels.resized_width) \
        if cfg.pixels.resized_height else None
    t_img = image_tokens(full_size, s, bounds, resized)
    # a several-image teacher (views.teacher crops): its images' tokens add up; the
    # vision transient is taken over all their patches at once (an upper bound)
    t_crop = sum(image_tokens(c, s, bounds) for c in teacher_sizes(crop_size))
    extra = 2 * (len(teacher_sizes(crop_size)) - 1)  # each further image's start/end tokens
    n, R = cfg.rollout.n, cfg.rollout.max_tokens
    P, Pc = t_img + TEXT_TOKENS, t_crop + TEXT_TOKENS + extra
    patches = t_img * s.merge * s.merge
    kv = s.layers - s.linear_layers
    kv_token = kv * 2 * s.kv_heads * s.head_dim * a  # one token's keys/values, all layers
    # rollout: each prompt prefilled alone (vision, one layer's transient, its KV; the
    # head on the last position only), then every prompt's n rows decode together
    prompts = min(cfg.optim.prompts_per_step, cfg.rollout.prompt_batch or 1 << 30)
    rows = prompts * n
    vision = _vision_transient(s, patches, a, scores)
    prefill = max(vision, _layer_transient(s, 1, P, a, scores)) + prompts * P * kv_token
    decode = rows * ((P + R) * kv_token + s.linear_layers * s.linear_state * 4) \
        + prompts * P * kv_token + rows * s.vocab * 4 * 4
    rollout = resident + max(prefill, decode)
    if cfg.score.shared_prefix:
        # teacher: the crop prompt once, then n rows of R continuing from its KV
        teacher = resident + Pc * kv_token + max(
            _vision_transient(s, t_crop * s.merge * s.merge, a, scores),
            _layer_transient(s, 1, Pc, a, scores),
            _layer_transient(s, n, R, a, scores, Pc + R) + n * (Pc + R) * kv_token / kv) \
            + 2 * (Pc + n * R) * s.hidden * a
        # student: the prompt once (batch 1) and n rows of R, with the gradient
        if cfg.memory.grad_checkpoint:
            keep = s.layers * (P + n * R) * s.hidden * a + P * kv_token + max(
                _layer_saved(s, 1, P, a, scores), _layer_saved(s, n, R, a, scores, P + R))
        else:
            keep = s.layers * (_layer_saved(s, 1, P, a, scores)
                               + _layer_saved(s, n, R, a, scores, P + R))
        # with frozen inputs the student reuses the rollout's image features: no tower here
        frozen = cfg.lora.finetune != "full" and not cfg.lora.train_vision
        vis_rows, out_rows = (0 if frozen else 1), P + n * R
    else:  # the reference path: n rows of prompt + response, both passes
        teacher = resident + max(_vision_transient(s, t_crop * s.merge * s.merge, a, scores),
                                 _layer_transient(s, n, Pc + R, a, scores)) \
            + 2 * n * (Pc + R) * s.hidden * a
        L = P + R
        if cfg.memory.grad_checkpoint:
            keep = s.layers * n * L * s.hidden * a + _layer_saved(s, n, L, a, scores)
        else:
            keep = s.layers * _layer_saved(s, n, L, a, scores)
        vis_rows = n if s.family == "qwen3_vl" else 1  # qwen3_vl runs the tower per row
        out_rows = n * L
    # the loss pass's head matmuls: a transposed copy of the head in the duplicated path;
    # with the shared prefix's smaller graph only part of it is alive at the student's
    # peak (HEAD_SHARE, fitted on the 14 replica runs: 0.16-0.6 of the head, mean 0.4)
    head_copy = s.vocab * s.hidden * a * (HEAD_SHARE if cfg.score.shared_prefix else 1.0)
    student = resident + max(vis_rows * _vision_transient(s, patches, a, scores),
                             keep + out_rows * s.hidden * a * 2 + head_copy)
    phases = {"weights": weights, "resident": resident, "rollout": rollout,
              "teacher": teacher, "student": student}
    return {"phases": phases, "peak_bytes": max(rollout, teacher, student),
            "tokens": {"image_full": t_img, "image_crop": t_crop, "prompt_student": P,
                       "prompt_teacher": Pc, "response_max": R, "rows": n},
            "params": counts, "lora_params": lora_params}


def _lora_params(counts: dict, cfg) -> int:
    return 0 if cfg.lora.finetune == "full" else cfg.lora.rank * counts["lora_fans"]

def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def plan(cfg, memory_gb: float | None = None, chip: str | None = None,
         dtype: str = "auto", backend: str | None = None, answers: dict | None = None) -> dict:
    """The prediction for a training config, with the fit verdict and advice. Reads the
    model's config files (a hub model's *.json are fetched alone, no weights) and the
    first samples of the data."""
    from mlx_opd.models import resolve_path

    path = resolve_path(cfg.model.path, allow_patterns=["*.json"])
    config = _read_json(path / "config.json")
    processor = _read_json(path / "preprocessor_config.json")
    import mlx.core as mx

    backend = backend or ("cpu" if mx.default_device().type == mx.DeviceType.cpu else "gpu")
    stored = (config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
              or "bfloat16")
    if dtype == "auto":
        dtype = "float32" if backend == "cpu" else ("float32" if stored == "float32" else "bfloat16")
    quant = (config.get("quantization") or config.get("quantization_config") or {}).get("bits")
    full, crop = data_sizes(cfg)
    out = predict(config, processor, cfg, full, crop, dtype, backend, quant)
    total = memory_gb * GIB if memory_gb else available_memory()
    out.update({"model": str(cfg.model.path), "dtype": dtype, "backend": backend,
                "quantized_bits": quant, "image_size": list(full),
                "crop_size": [list(c) for c in teacher_sizes(crop)] if len(teacher_sizes(crop)) > 1
                else list(crop),
                "memory_bytes": total, "fits": out["peak_bytes"] <= FIT_FRACTION * total})
    if chip:
        out["time"] = step_time(config, out, cfg, chip, answers)
    if not out["fits"]:
        out["advice"] = advice(config, processor, cfg, full, crop, dtype, backend, quant, total)
    return out


# Keep a margin for the OS, the Python process and MLX's buffer cache.
FIT_FRACTION = 0.8


def available_memory() -> int:
    """This machine's memory in bytes (Metal: the recommended working set)."""
    import mlx.core as mx

    try:
        if mx.metal.is_available():
            return int(mx.metal.device_info()["max_recommended_working_set_size"])
    except Exception:  # older mlx: fall through to the OS figure
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def advice(config, processor, cfg, full, crop, dtype, backend, quant, total) -> list[dict]:
    """Settings that bring the predicted peak under the memory, cheapest change first;
    each with the peak it gives (applied one at a time, then together)."""
    import dataclasses

    def peak(c, d=dtype, q=quant):
        return predict(config, processor, c, full, crop, d, backend, q)["peak_bytes"]

    limit = FIT_FRACTION * total
    tries = []
    if not cfg.memory.grad_checkpoint:
        tries.append(("memory.grad_checkpoint=true", dataclasses.replace(
            cfg, memory=dataclasses.replace(cfg.memory, grad_checkpoint=True))))
    s = shapes_of(config)
    factor = s.patch * s.merge
    now_pixels = image_tokens(full, s, pixel_bounds(processor, cfg.pixels)) * factor * factor
    lo = pixel_bounds(processor, cfg.pixels)[0]
    for div in (2, 4, 8):  # fewer image tokens: the biggest lever on image-heavy steps
        mp = max(lo, now_pixels // div // (factor * factor) * factor * factor)
        c = dataclasses.replace(cfg, pixels=dataclasses.replace(cfg.pixels, max_pixels=mp,
                                                                resized_height=None,
                                                                resized_width=None))
        tries.append((f"pixels.max_pixels={mp}", c))
    together = min(cfg.optim.prompts_per_step, cfg.rollout.prompt_batch or 1 << 30)
    if together > 1:  # decode fewer prompts at once: less KV cache, the same samples
        tries.append(("rollout.prompt_batch=1", dataclasses.replace(
            cfg, rollout=dataclasses.replace(cfg.rollout, prompt_batch=1))))
    for div in (2, 4):
        n = max(1, cfg.rollout.n // div)
        if n < cfg.rollout.n:
            tries.append((f"rollout.n={n}", dataclasses.replace(
                cfg, rollout=dataclasses.replace(cfg.rollout, n=n))))
    for div in (2, 4):
        m = max(16, cfg.rollout.max_tokens // div)
        if m < cfg.rollout.max_tokens:
            tries.append((f"rollout.max_tokens={m}", dataclasses.replace(
                cfg, rollout=dataclasses.replace(cfg.rollout, max_tokens=m))))
    out = [{"set": k, "peak_bytes": (p := peak(c)), "fits": p <= limit} for k, c in tries]
    quant_dtype = "bfloat16" if backend != "cpu" else dtype
    if not quant:
        p = peak(cfg, quant_dtype, 4)
        out.append({"set": "a 4-bit base (mlx-community ...-4bit)", "peak_bytes": p,
                    "fits": p <= limit})
    # combined: the settings above together, until it fits; then a 4-bit base with them
    combined, c, p = {}, cfg, peak(cfg)
    for k, ci in tries:  # later values of a key replace earlier ones (max_pixels steps)
        combined[k.split("=")[0]] = k
        c = _merge(c, ci, cfg)
        if (p := peak(c)) <= limit:
            break
    text = " ".join(f"--set {k}" for k in combined.values())
    if p > limit and not quant:
        p = peak(c, quant_dtype, 4)
        text += " with a 4-bit base (mlx-community ...-4bit)"
    out.append({"set": text, "peak_bytes": p, "fits": p <= limit, "combined": True})
    return out

def _merge(acc, changed, base):
    """acc with whatever `changed` changed relative to `base`."""
    import dataclasses

    for section in ("memory", "pixels", "rollout"):
        if getattr(changed, section) != getattr(base, section):
            acc = dataclasses.replace(acc, **{section: getattr(changed, section)})
    return acc


def answer_lengths(run_dir: str | Path) -> dict | None:
    """A finished run's answer lengths from its metrics.jsonl: the mean over its steps of
    the mean and of the longest response (tokens, EOS included); None when it has none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    means, longest = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if "rollout/mean_response_len" in rec:
            means.append(rec["rollout/mean_response_len"])
            longest.append(rec.get("rollout/max_response_len", rec["rollout/mean_response_len"]))
    if not means:
        return None
    return {"mean": sum(means) / len(means), "longest": sum(longest) / len(longest),
            "steps": len(means), "run": str(run_dir)}


def step_time(config, pred, cfg, chip: str, answers: dict | None = None) -> dict:
    """Seconds per step on `chip` (CHIPS), by phase, as the engine runs it:
    - prefill: each prompt alone (rollout.py), its FLOPs at MFU of the GPU's throughput;
    - decode: the rows of rollout.prompt_batch prompts (all: 0) decode together, so each
      decode step reads the weights once for the whole batch, for as many steps as the
      batch's longest answer (finished rows leave the batch, so they cost FLOPs only for
      the tokens they answered);
    - scoring: the teacher and the student pass (forward + backward) over the answers.
    Answer lengths are max_tokens unless `answers` (answer_lengths of a finished run)
    gives the mean and the longest answer per step."""
    if chip not in CHIPS:
        raise ValueError(f"--chip must be one of {', '.join(CHIPS)}; got {chip!r}")
    bw, tflops = CHIPS[chip]
    counts = pred["params"]
    tok = pred["tokens"]
    n, R = tok["rows"], tok["response_max"]
    mean = min(R, answers["mean"]) if answers else R
    longest = min(R, answers["longest"]) if answers else R
    lm = counts["text_layers"]
    head = counts["head"] or counts["embed"]
    vis = counts["vision"]
    rate = MFU * tflops * 1e12
    prompts = cfg.optim.prompts_per_step
    together = min(prompts, cfg.rollout.prompt_batch or prompts)
    prefill = prompts * (2 * lm * tok["prompt_student"] + 2 * vis * tok["image_full"] * 4
                         + 2 * head) / rate
    decode = (math.ceil(prompts / together) * longest * pred["phases"]["weights"] / (bw * 1e9)
              + prompts * n * mean * 2 * (lm + head) / rate)
    # scoring: each prompt once and n responses (shared prefix), or n x (prompt + answer)
    rows = 1 if cfg.score.shared_prefix else n
    flops = 2 * lm * (rows * tok["prompt_teacher"] + n * mean)                    # teacher
    flops += 4 * 2 * lm * (rows * tok["prompt_student"] + n * mean)               # student
    flops += 3 * 2 * head * n * mean                                              # 3 heads
    scoring = prompts * flops / rate
    return {"chip": chip, "bandwidth_GBps": bw, "fp16_TFLOPs": tflops, "mfu": MFU,
            "answer_tokens_mean": mean, "answer_tokens_longest": longest,
            "answers_from": answers["run"] if answers else "rollout.max_tokens",
            "prefill_seconds": prefill, "decode_seconds": decode, "scoring_seconds": scoring,
            "seconds_per_step": prefill + decode + scoring}


def generation_time(config: dict, chip: str, prompts: int, prompt_tokens: int,
                    image_tokens: int, new_tokens: int, rows: int = 1, batch: int = 8,
                    bits: int | None = None) -> float:
    """Seconds on `chip` to answer `prompts` prompts of `prompt_tokens` tokens (of which
    `image_tokens` are image tokens) with `rows` samples of `new_tokens` tokens each,
    `batch` prompts decoded together (build-data's stages): prefill FLOPs (text layers over
    the prompt, the vision tower over 4 patches per image token) and decode FLOPs at MFU,
    plus one read of the decoder's weights per decode step of each batch, at the chip's
    bandwidth (bf16, or `bits`-bit weights with a scale per 64)."""
    if chip not in CHIPS:
        raise ValueError(f"--chip must be one of {', '.join(CHIPS)}; got {chip!r}")
    bw, tflops = CHIPS[chip]
    c = param_counts(config)
    lm, vis, head = c["text_layers"], c["vision"], c["head"] or c["embed"]
    flops = prompts * (2 * lm * prompt_tokens + 2 * vis * image_tokens * 4 + 2 * head)
    flops += prompts * rows * new_tokens * 2 * (lm + head)
    bytes_per = 2.0 if bits is None else bits / 8 + 4 / 64  # bf16 scale + bias per group
    reads = math.ceil(prompts / batch) * new_tokens * (lm + head) * bytes_per
    return flops / (MFU * tflops * 1e12) + reads / (bw * 1e9)


def extrapolate(runs: list[dict], cfg=None, full_size=(1280, 960), crop_size=(120, 100)) -> dict:
    """Per model: the per-layer slope of the measured peak between two depths, the peak
    extrapolated linearly to the full depth (this backend, float32), and plan's full-depth
    predictions: float32 on CPU (the same accounting, to compare) and bf16 / 4-bit on Metal."""
    from mlx_opd.models.replicas import REAL_MODELS, text_section

    out, by_model = {}, {}
    for r in runs:
        if "error_pct" in r:
            by_model.setdefault(r["model"], []).append(r)
    for model, rs in by_model.items():
        rs.sort(key=lambda r: r["layers"])
        if len(rs) < 2:
            continue
        a, b = rs[0], rs[-1]
        slope = (b["measured"]["memory/peak_bytes"] - a["measured"]["memory/peak_bytes"]) / \
            (b["layers"] - a["layers"])
        full = text_section(REAL_MODELS[model].config)["num_hidden_layers"]
        row = {"slope_bytes_per_layer": slope, "full_layers": full,
               "extrapolated_peak_bytes": b["measured"]["memory/peak_bytes"]
               + slope * (full - b["layers"])}
        if cfg is not None:
            for key, dtype, backend, bits in (("plan_cpu_float32", "float32", "cpu", None),
                                              ("plan_metal_bf16", "bfloat16", "gpu", None),
                                              ("plan_metal_4bit", "bfloat16", "gpu", 4)):
                row[key] = predict_real(model, cfg, full_size, crop_size, dtype, backend,
                                        bits)["peak_bytes"]
        out[model] = row
    return out

def format_plan(p: dict) -> str:
    """The plan as a few lines a user reads before starting a run."""
    g = lambda b: f"{b / GIB:.1f} GiB"  # noqa: E731
    ph, tok = p["phases"], p["tokens"]
    lines = [f"{p['model']} ({p['dtype']}{', %d-bit' % p['quantized_bits'] if p['quantized_bits'] else ''}"
             f", {p['backend']}): image {p['image_size'][0]}x{p['image_size'][1]} -> "
             f"{tok['image_full']} image tokens (crop {tok['image_crop']}); {tok['rows']} rows x "
             f"up to {tok['response_max']} response tokens",
             f"  weights {g(ph['weights'])}, resident {g(ph['resident'])}; peak per phase: rollout "
             f"{g(ph['rollout'])}, teacher {g(ph['teacher'])}, student {g(ph['student'])}",
             f"  predicted peak {g(p['peak_bytes'])} of {g(p['memory_bytes'])} -> "
             + ("fits" if p["fits"] else "does NOT fit (keep 20% free)")]
    if "time" in p:
        t = p["time"]
        lines.append(f"  about {t['seconds_per_step']:.0f} s per step on {t['chip']}: prefill "
                     f"{t['prefill_seconds']:.0f} s, decode {t['decode_seconds']:.0f} s, "
                     f"scoring {t['scoring_seconds']:.0f} s (answers of "
                     f"{t['answer_tokens_mean']:.0f} tokens on average, the longest "
                     f"{t['answer_tokens_longest']:.0f}: {t['answers_from']})")
    for a in p.get("advice", []):
        lines.append(f"  {'combined: ' if a.get('combined') else 'try '}{a['set']} -> "
                     f"{g(a['peak_bytes'])}{' (fits)' if a['fits'] else ''}")
    return "\n".join(lines)


def predict_real(hub_id: str, cfg, full_size, crop_size, dtype: str, backend: str,
                 quant_bits: int | None = None) -> dict:
    """The prediction for the full-depth real model `hub_id` (replicas.REAL_MODELS)."""
    from mlx_opd.models.replicas import REAL_MODELS, preprocessor_config

    real = REAL_MODELS[hub_id]
    return predict(real.config, preprocessor_config(real), cfg, full_size, crop_size, dtype,
                   backend, quant_bits)


def fit_table(cfg, full_size=(1280, 960), crop_size=(120, 100),
              memories=(8, 16, 24, 32, 64)) -> list[dict]:
    """Per real model, bf16 and 4-bit on a Mac (Metal): the predicted peak and whether it
    fits each memory size (with the FIT_FRACTION margin)."""
    from mlx_opd.models.replicas import REAL_MODELS

    rows = []
    for hub_id in REAL_MODELS:
        for bits in (None, 4):
            p = predict_real(hub_id, cfg, full_size, crop_size, "bfloat16", "gpu", bits)
            rows.append({"model": hub_id, "bits": bits or 16, "peak_bytes": p["peak_bytes"],
                         "phases": p["phases"], "tokens": p["tokens"],
                         "fits": {m: p["peak_bytes"] <= FIT_FRACTION * m * GIB for m in memories}})
    return rows
