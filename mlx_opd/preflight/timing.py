"""Seconds per step and per generation on an Apple chip, before anything runs: matmul FLOPs
at MFU of the chip's GPU throughput and weight reads at its memory bandwidth, decode
counted as the engine runs it (one weight read per decode step of the whole batch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mlx_opd.preflight.shapes import param_counts

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
