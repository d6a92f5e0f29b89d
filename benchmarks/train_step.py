"""One training step, taken apart: rollouts, the OPD update, and a supervised step.

    python benchmarks/train_step.py --json runs/bench/train_step.json

For a tiny checkpoint and a ~100M-parameter random one (float32, both built offline):
  (a) rollout tokens/s at n = 8: the shared-prefix batched sampler vs one sample at a time
      through mlx-vlm's own decoder;
  (b) seconds of one OPD update (teacher scoring + student forward/backward through the
      fused loss + AdamW step; rollouts excluded), vs one supervised cross-entropy step on
      the same response tokens and model; measured with the teacher seeing the same image
      as the student (equal prompt lengths) and with the real crop view;
  (c) peak memory of each.
All in one run; medians of `--repeats`.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

# isort: off
import mlx_opd  # noqa: F401  (first: preloads the BLAS before mlx.core is imported)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
# isort: on

from mlx_opd import lora, models, rollout, trainer
from mlx_opd.config import LoraConfig, TrainConfig, build
from mlx_opd.sft import response_ce
from mlx_opd.synth import make_scene
from mlx_opd.teacher import Teacher
from mlx_opd.tiny import TinySize, build_tiny_model
from mlx_opd.views import student_view, teacher_view

SIZES = {
    "tiny": TinySize(),
    "100M": TinySize(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4,
                     intermediate_size=3072, vision_depth=2, vision_hidden_size=128,
                     vision_heads=4),
}


def timed(fn, repeats):
    fn()  # warm-up
    times, peak = [], 0
    for _ in range(repeats):
        mx.reset_peak_memory()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        peak = max(peak, mx.get_peak_memory())
    return statistics.median(times), peak


def sft_step(loaded, optimizer, batch):
    """Cross-entropy on the response tokens (the supervised baseline)."""
    value, grads = nn.value_and_grad(loaded.model, response_ce)(loaded.model, batch)
    optimizer.update(loaded.model, grads)
    mx.eval(value, loaded.model.trainable_parameters(), optimizer.state)


def opd_update(loaded, optimizer, teacher, cfg, s_batch, t_batch):
    scored = trainer.score(loaded, teacher, cfg, s_batch, t_batch,
                           float(s_batch.response_mask.sum().item()))
    grads, _ = optim.clip_grad_norm(scored.grads, cfg.optim.grad_clip)
    optimizer.update(loaded.model, grads)
    mx.eval(loaded.model.trainable_parameters(), optimizer.state)
    teacher.update(loaded.model)


def bench_model(name, size, args, workdir):
    path = build_tiny_model("qwen2_5_vl", workdir / name, seed=0, size=size)
    loaded = models.load(path)
    params = sum(v.size for _, v in __import__("mlx.utils").utils.tree_flatten(loaded.model.parameters()))
    cfg = build(TrainConfig, {"loss": {"k": 100}, "pixels": {"max_pixels": 224 * 224}}, "bench")
    scene = make_scene(0)
    img = workdir / f"{name}.png"
    scene.image.save(img)
    from mlx_opd.data import make_sample

    sample = make_sample({"image": str(img), "question": scene.question, "box": list(scene.box),
                          "options": list(scene.options)}, workdir, "bench")
    sv = student_view(sample, cfg.views)
    enc = models.encode(loaded, sv.image, sv.text, cfg.pixels)
    n, T = args.n, args.max_tokens

    key = mx.random.key(0)
    batched, _ = timed(lambda: rollout.sample_batch(loaded, enc, n, T, key=key), args.repeats)
    r = rollout.sample_batch(loaded, enc, n, T, key=key)
    seq_r = rollout.sample_sequential(loaded, enc, n, T, seed=0)
    sequential, _ = timed(lambda: rollout.sample_sequential(loaded, enc, n, T, seed=0), 1)
    tps_b = r.num_tokens / batched
    tps_s = seq_r.num_tokens / sequential

    lora.attach(loaded.model, LoraConfig())
    responses = r.token_ids
    s_batch = models.make_batch([enc] * n, responses)
    tv = teacher_view(sample, cfg.views)
    t_enc = models.encode(loaded, tv.image, tv.text, cfg.pixels.for_crop())
    crop_batch = models.make_batch([t_enc] * n, responses)
    teacher = Teacher(loaded.model, cfg.teacher)
    optimizer = trainer.make_optimizer(cfg.optim)  # the trainer's (PyTorch AdamW semantics)
    opd_equal, peak_equal = timed(lambda: opd_update(loaded, optimizer, teacher, cfg, s_batch,
                                                     s_batch), args.repeats)
    opd_crop, peak_crop = timed(lambda: opd_update(loaded, optimizer, teacher, cfg, s_batch,
                                                   crop_batch), args.repeats)
    sft, peak_sft = timed(lambda: sft_step(loaded, optimizer, s_batch), args.repeats)
    return {
        "model": name, "model_params": int(params), "n": n, "max_tokens": T,
        "student_prompt_tokens": enc.prompt_len, "teacher_prompt_tokens_crop": t_enc.prompt_len,
        "response_tokens": r.num_tokens,
        "rollout_tokens_per_s_batched": tps_b, "rollout_tokens_per_s_sequential": tps_s,
        "rollout_batched_speedup": tps_b / tps_s,
        "opd_update_seconds": opd_equal, "opd_update_seconds_crop": opd_crop,
        "sft_step_seconds": sft,
        "opd_over_sft": opd_equal / sft, "opd_over_sft_crop": opd_crop / sft,
        "peak_bytes": int(peak_equal), "peak_bytes_crop": int(peak_crop),
        "peak_bytes_sft": int(peak_sft),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rec = bench_model(name, SIZES[name], args, Path(tmp))
            results.append(rec)
            print(json.dumps(rec, indent=2), flush=True)
    out = {"records": results}
    for rec in results:  # the interface keys, from the largest model measured
        out.update({k: rec[k] for k in ("rollout_tokens_per_s_batched",
                                         "rollout_tokens_per_s_sequential", "opd_update_seconds",
                                         "sft_step_seconds", "peak_bytes", "model_params")})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
