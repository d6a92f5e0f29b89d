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
from pathlib import Path

from mlx_opd.preflight.shapes import (  # noqa: F401  (moved to shapes.py)
    Shapes,
    _param_counts,
    data_sizes,
    image_tokens,
    param_counts,
    pixel_bounds,
    shapes_of,
    smart_resize,
    teacher_sizes,
)
from mlx_opd.preflight.timing import (  # noqa: F401  (moved to timing.py)
    CHIPS,
    MFU,
    answer_lengths,
    generation_time,
    step_time,
)

GIB = 1 << 30
TEXT_TOKENS = 110   # chat template + question + hint + options + instruction, measured
HEAD_SHARE = 0.35   # of the LM head's bytes alive in the shared-prefix student pass (fitted)


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
