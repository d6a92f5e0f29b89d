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

`long_prompt` records: a replica with the real Qwen2.5-VL-3B widths (random weights,
--long-layers decoder layers, float32, gradient checkpointing on), 1280x960 photos at the
default pixel limits, n = 8, responses of 16 and 128 tokens: one OPD update with the
shared prefix vs the duplicated prompts (seconds, peak bytes; both computing the
student's image features inside the update, and the shared path also as the trainer runs
it, with the rollout's features), LM-head passes per response token counted in the loss, and rollout tokens/s with the step's prompts decoded
together vs one prompt at a time. One measurement each (they take minutes on a CPU).
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

from mlx_opd import models
from mlx_opd.method import rollout, trainer
from mlx_opd.method import score as scoring
from mlx_opd.method import step as stepping
from mlx_opd.method.teacher import Teacher
from mlx_opd.method.views import student_view, teacher_view
from mlx_opd.models import lora
from mlx_opd.run.config import LoraConfig, TrainConfig, build
from mlx_opd.toy.sft import response_ce
from mlx_opd.toy.synth import make_scene
from mlx_opd.toy.tiny import TinySize, build_tiny_model

SIZES = {
    "tiny": TinySize(),
    "100M": TinySize(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4,
                     intermediate_size=3072, vision_depth=2, vision_hidden_size=128,
                     vision_heads=4),
}


def timed(fn, repeats, warmup=True):
    if warmup:
        fn()
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


def opd_update(loaded, optimizer, teacher, cfg, s_enc, t_enc, responses, features=None):
    scored = scoring.score(loaded, teacher, cfg, s_enc, t_enc, responses,
                           float(sum(len(r) for r in responses)), features)
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
    teacher = Teacher(loaded.model, cfg.teacher)
    optimizer = stepping.make_optimizer(cfg.optim)  # the trainer's (PyTorch AdamW semantics)
    opd_equal, peak_equal = timed(lambda: opd_update(loaded, optimizer, teacher, cfg, enc, enc,
                                                     responses), args.repeats)
    opd_crop, peak_crop = timed(lambda: opd_update(loaded, optimizer, teacher, cfg, enc, t_enc,
                                                   responses), args.repeats)
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


# --- the long-prompt case: real Qwen2.5-VL-3B widths, one photo-sized image ---------------

LONG_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


class HeadCounter:
    """Counts the rows the LM head is applied to in the loss (loss.head_function is the
    one door every head application of the fused loss goes through)."""

    def __init__(self):
        self.rows = 0

    def __enter__(self):
        from mlx_opd.method import loss

        self._real = loss.head_function

        def counted(head):
            apply = self._real(head)

            def run(h):
                self.rows += h.shape[0]
                return apply(h)
            return run

        loss.head_function = counted
        return self

    def __exit__(self, *exc):
        from mlx_opd.method import loss

        loss.head_function = self._real


def photo_sample(workdir, seed, size=(1280, 960)):
    """A synthetic scene resized to a photo's size, with its evidence box."""
    from mlx_opd.data import make_sample

    scene = make_scene(seed)
    sx, sy = size[0] / scene.image.size[0], size[1] / scene.image.size[1]
    img = workdir / f"photo{seed}.png"
    scene.image.resize(size).save(img)
    x0, y0, x1, y1 = scene.box
    box = [int(x0 * sx), int(y0 * sy), int(x1 * sx), int(y1 * sy)]
    return make_sample({"image": str(img), "question": scene.question, "box": box,
                        "options": list(scene.options)}, workdir, "bench")


def long_prompt(args, workdir) -> list[dict]:
    """Shared prefix vs duplicated prompts (OPD update time and peak), batched-prompt vs
    per-prompt rollouts, and head passes per token, on a Qwen2.5-VL-3B-width replica."""
    from mlx_opd.models.grad_checkpoint import checkpoint_layers, restore_layers
    from mlx_opd.models.replicas import build_replica

    path = build_replica(LONG_MODEL, workdir / "replica", layers=args.long_layers,
                         vision_layers=2)
    loaded = models.load(path)
    cfg = build(TrainConfig, {"loss": {"k": 100}, "rollout": {"n": args.n},
                              "memory": {"grad_checkpoint": True}}, "bench")
    samples = [photo_sample(workdir, seed) for seed in range(args.long_prompts)]
    encs = [stepping.student_prompt(loaded, s, cfg) for s in samples]
    t_enc = stepping.teacher_prompt(loaded, samples[0], cfg)
    n = args.n
    # rollouts: the prompts decoded together vs one prompt at a time (prefill included)
    T = args.long_rollout_tokens
    keys = [mx.random.key(j) for j in range(len(encs))]
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    together = rollout.sample_prompts(loaded, encs, n, T, keys=keys)
    t_together, peak_together = time.perf_counter() - t0, mx.get_peak_memory()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    alone = [rollout.sample_prompts(loaded, [e], n, T, keys=[k])[0] for e, k in zip(encs, keys)]
    t_alone, peak_alone = time.perf_counter() - t0, mx.get_peak_memory()
    tokens = sum(r.num_tokens for r in together)
    decode_together = t_together - sum(r.prefill_seconds for r in together)
    decode_alone = t_alone - sum(r.prefill_seconds for r in alone)
    assert tokens == sum(r.num_tokens for r in alone)  # the same rows either way
    rollout_rec = {"prompts": len(encs), "rows_per_prompt": n, "max_tokens": T,
                   "rollout_tokens": tokens, "prompt_tokens": [e.prompt_len for e in encs],
                   "rollout_seconds_batched_prompts": t_together,
                   "rollout_seconds_per_prompt": t_alone,
                   "rollout_tokens_per_s_batched_prompts": tokens / t_together,
                   "rollout_tokens_per_s_per_prompt": tokens / t_alone,
                   "decode_tokens_per_s_batched_prompts": tokens / decode_together,
                   "decode_tokens_per_s_per_prompt": tokens / decode_alone,
                   "rollout_peak_bytes_batched_prompts": int(peak_together),
                   "rollout_peak_bytes_per_prompt": int(peak_alone)}
    lora.attach(loaded.model, LoraConfig())
    checkpoint_layers(loaded.model)
    teacher = Teacher(loaded.model, cfg.teacher)
    optimizer = stepping.make_optimizer(cfg.optim)
    resident = mx.get_active_memory()
    vocab = loaded.model.language_model.args.vocab_size
    rng = __import__("random").Random(0)
    out = []
    for R in args.long_response_tokens:
        responses = [[rng.randrange(1000, 100000) for _ in range(R)] for _ in range(n)]
        rec = {"model": f"{LONG_MODEL} widths, {args.long_layers} layers (replica)",
               "dtype": "float32", "grad_checkpoint": True, "n": n,
               "image_size": [1280, 960], "prompt_tokens": encs[0].prompt_len,
               "teacher_prompt_tokens": t_enc.prompt_len, "response_tokens": R,
               "vocab": vocab, "resident_bytes": int(resident)}
        for shared in (True, False):
            c = trainer.replace(cfg, score=trainer.replace(cfg.score, shared_prefix=shared))
            with HeadCounter() as heads:
                seconds, peak = timed(lambda c=c, r=responses: opd_update(
                    loaded, optimizer, teacher, c, encs[0], t_enc, r),
                                      1, warmup=False)
            tag = "shared" if shared else "duplicated"
            rec[f"opd_update_seconds_{tag}"] = seconds
            rec[f"peak_bytes_{tag}"] = int(peak)
            rec[f"head_passes_per_token_{tag}"] = heads.rows / (n * R)
            print(f"  R={R} {tag}: {seconds:.1f} s, peak {peak / 2**30:.2f} GiB", flush=True)
        # as the trainer runs it: the student's image features come from the rollout (the
        # vision tower's one run this step), so the update itself runs no vision tower
        feats = models.input_features(loaded.model, encs[0])
        seconds, peak = timed(lambda r=responses, f=feats: opd_update(
            loaded, optimizer, teacher, cfg, encs[0], t_enc, r, f), 1, warmup=False)
        rec["opd_update_seconds_shared_rollout_features"] = seconds
        rec["peak_bytes_shared_rollout_features"] = int(peak)
        print(f"  R={R} shared, rollout's features: {seconds:.1f} s, peak {peak / 2**30:.2f} GiB",
              flush=True)
        rec["speedup"] = rec["opd_update_seconds_duplicated"] / rec["opd_update_seconds_shared"]
        rec["peak_ratio"] = rec["peak_bytes_duplicated"] / rec["peak_bytes_shared"]
        rec["peak_ratio_above_resident"] = (rec["peak_bytes_duplicated"] - resident) / \
            (rec["peak_bytes_shared"] - resident)
        rec.update(rollout_rec)
        out.append(rec)
    restore_layers(loaded.model)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--models", nargs="*", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-layers", type=int, default=2,
                    help="decoder layers of the Qwen2.5-VL-3B-width replica (long_prompt)")
    ap.add_argument("--long-prompts", type=int, default=4)
    ap.add_argument("--long-rollout-tokens", type=int, default=128)
    ap.add_argument("--long-response-tokens", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--skip-long", action="store_true", help="no long_prompt records")
    args = ap.parse_args()
    results, long = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rec = bench_model(name, SIZES[name], args, Path(tmp))
            results.append(rec)
            print(json.dumps(rec, indent=2), flush=True)
        if not args.skip_long:
            long = long_prompt(args, Path(tmp))
            print(json.dumps(long, indent=2), flush=True)
    out = {"records": results, "long_prompt": long}
    for rec in results:  # the interface keys, from the largest model measured
        out.update({k: rec[k] for k in ("rollout_tokens_per_s_batched",
                                         "rollout_tokens_per_s_sequential", "opd_update_seconds",
                                         "sft_step_seconds", "peak_bytes", "model_params")})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
