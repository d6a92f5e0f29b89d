"""Rollout engines side by side, in one run: the loop before issue 32, ours, mlx-vlm's peer.

    python benchmarks/rollout.py --json runs/bench/rollout.json

Engines, each given the same prompts, rows and answer lengths:
- `before` (fixed workload only): sample_prompts as it was before issue 32, loaded from
  git (commit BEFORE) into the package, as the fixed-length workload's "today";
- `loop`: rollout.sample_prompts(leave=False), every row decodes until the last one of
  the batch stops (mlx-opd's loop before issue 32);
- `ours`: rollout.sample_prompts(), rows that stopped leave the batch at the next host
  check (every rollout.CHECK_EVERY decode steps);
- `loop@K`, `ours@K` (with --room K): at most K prompts' rows at once
  (rollout.prompt_batch = K): the loop runs groups of K one after another, ours lets a
  waiting prompt enter as rows leave;
- `batch_generate`: mlx_vlm.generate.batch_generate (its BatchGenerator: continuous
  batching, batched prefill) on the same images and questions, each prompt given n times
  (it has no "n samples of one prompt"), sampling at temperature 1.

Workloads (mlx_opd/toy/answer_lengths.py): `varying`, each row's length drawn from the stated
mix of direct and reasoned answers and forced with a logits processor (the same lengths
for every engine: the batched form for ours, the per-row form for mlx-vlm's); `fixed`,
every row runs to --max-tokens, with no processor (as `before` runs it).

Models: the ~100M random model of benchmarks/train_step.py with a 448x448 image, and a
replica with Qwen2.5-VL-3B's widths (2 decoder layers, 2 vision layers, random weights,
float32) with a 1280x960 photo. Shapes: prompts x rows (--shapes).

The rollout is timed as the step runs it: the prompts' image features are computed first
(step.roll_out computes them once per prompt for the rollout and the student's scoring),
then the engine prefills the text model and decodes. Those vision seconds are recorded
apart and also added in a second tokens/s; batch_generate runs its own vision tower inside
its prefill, once per row (it has no features to take and no n samples of one prompt).

Per run: seconds (whole rollout, prefill, decode), kept tokens (what the rows answered,
EOS included), computed tokens (positions the decode ran, per row), the useful fraction
kept / computed, whole-rollout and decode tokens/s (kept tokens per second), peak memory.
batch_generate reports its prompt and generation seconds; its computed tokens are its
kept ones (finished rows leave its batch at once). --repeats runs per cell (the fastest
run is kept, the least disturbed by anything else on the machine; every run's seconds are
listed), after a short warm-up of each model; `--skip` names cells to leave out
(model:shape:workload:engine, `*` matching anything, e.g. "3B:16x8:*:batch_generate")
and the JSON marks them skipped.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

# isort: off
import mlx_opd  # noqa: F401  (first: preloads the BLAS before mlx.core is imported)
import mlx.core as mx
# isort: on

from mlx_opd import models
from mlx_opd.method import rollout
from mlx_opd.method import step as stepping
from mlx_opd.run.config import TrainConfig, build
from mlx_opd.toy.answer_lengths import ForcedLengths, draw_lengths, fixed_lengths

LONG_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
BEFORE = "39de53d"  # the last commit with the loop that kept finished rows
ROOT = Path(__file__).resolve().parents[1]


class PromptSet:
    """One shape's prompts: (image path, question, encoded student prompt) items, and their
    input features, computed on first use, as the step computes them once for the rollout
    and the student's scoring (step.roll_out), then reused by every engine and repeat."""

    def __init__(self, items: list):
        self.items = items
        self.encs = [e for _, _, e in items]
        self._features = None

    def features(self, loaded) -> tuple[list, float]:
        """(the prompts' input features, the seconds they took)."""
        if self._features is None:
            t0 = time.perf_counter()
            feats = [models.input_features(loaded.model, e) for e in self.encs]
            mx.eval(feats)
            self._features = feats, time.perf_counter() - t0
        return self._features


def loop_before():
    """sample_prompts of rollout.py at BEFORE, as a module of the package; its imports
    point at today's models and prefix (mlx_opd/method/ since the package layout), whose
    functions it calls unchanged."""
    import importlib.util
    import subprocess
    import sys

    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE}:mlx_opd/rollout.py"],
                          capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("mlx_opd._rollout_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "mlx_opd.method"
    text = text.replace("from . import models, prefix",
                        "from mlx_opd import models\nfrom mlx_opd.method import prefix")
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    exec(compile(text, f"{BEFORE}:mlx_opd/rollout.py", "exec"), module.__dict__)
    return module.sample_prompts


def run_before(loaded, ps: PromptSet, n, T) -> dict:
    encs = ps.encs
    keys = [mx.random.key(p) for p in range(len(encs))]
    sample = loop_before()
    mx.reset_peak_memory()
    feats, vision = ps.features(loaded)
    t0 = time.perf_counter()
    outs = sample(loaded, encs, n, T, 1.0, keys, features=feats)
    seconds = time.perf_counter() - t0
    kept = sum(len(row) for r in outs for row in r.token_ids)
    return cell(seconds, sum(r.prefill_seconds for r in outs), kept, len(encs) * n * T,
                mx.get_peak_memory(), vision)


def build_model(name: str, workdir: Path):
    """(loaded model, image size) for `name` ("100M" or "3B")."""
    if name == "3B":
        from mlx_opd.models.replicas import build_replica

        return models.load(build_replica(LONG_MODEL, workdir / "replica", layers=2,
                                         vision_layers=2)), (1280, 960)
    from train_step import SIZES

    from mlx_opd.toy.tiny import build_tiny_model

    return models.load(build_tiny_model("qwen2_5_vl", workdir / name, seed=0,
                                        size=SIZES[name])), (448, 448)


def prompts(loaded, workdir: Path, count: int, size):
    """`count` (image path, question, encoded student prompt) from synthetic photos."""
    from train_step import photo_sample

    cfg = build(TrainConfig, {}, "bench")
    out = []
    for seed in range(count):
        s = photo_sample(workdir, seed, size)
        out.append((s.image, s.question, stepping.student_prompt(loaded, s, cfg)))
    return out


def run_ours(loaded, ps: PromptSet, n, T, lengths, leave: bool, room: int = 0) -> dict:
    encs = ps.encs
    eos = tuple(models.eos_token_ids(loaded))
    keys = [mx.random.key(p) for p in range(len(encs))]
    mx.reset_peak_memory()
    feats, vision = ps.features(loaded)
    t0 = time.perf_counter()
    # the fixed-length workload needs no processor (as `before` runs it, a random model's
    # rows hardly ever stop early); the varying one forces each row's EOS
    fixed = all(x > T for x in lengths)
    outs = rollout.sample_prompts(loaded, encs, n, T, 1.0, keys, features=feats,
                                  processor=None if fixed else ForcedLengths(lengths, eos),
                                  leave=leave, capacity=room * n)
    seconds = time.perf_counter() - t0
    kept = [len(row) for r in outs for row in r.token_ids]
    assert fixed or kept == [min(x, T) for x in lengths], "the rows did not stop where forced"
    prefill = sum(r.prefill_seconds for r in outs)
    return cell(seconds, prefill, sum(kept), sum(r.computed_tokens for r in outs),
                mx.get_peak_memory(), vision)


def run_batch_generate(loaded, items, n, T, lengths) -> dict:
    from mlx_vlm.generate import batch_generate
    from PIL import Image

    eos = tuple(models.eos_token_ids(loaded))
    forced = ForcedLengths(lengths, eos)
    images = [Image.open(img).convert("RGB") for img, _, _ in items for _ in range(n)]
    questions = [q for _, q, _ in items for _ in range(n)]
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    res = batch_generate(loaded.model, loaded.processor, images=images, prompts=questions,
                         max_tokens=T, logits_processors=[[forced.for_row(r)]
                                                          for r in range(len(images))],
                         sampler=lambda logprobs: mx.random.categorical(logprobs))
    seconds = time.perf_counter() - t0
    kept = int(res.stats.generation_tokens)
    assert kept == sum(min(x, T) for x in lengths), "the rows did not stop where forced"
    return cell(seconds, res.stats.prompt_time, kept, kept, mx.get_peak_memory())


def cell(seconds, prefill, kept, computed, peak, vision=None) -> dict:
    """One run's figures. `vision`: the seconds of the image features computed before the
    rollout (ours and the loops, as the step does; batch_generate's are inside its own
    prefill), added in rollout_tokens_per_s_with_vision."""
    decode = max(seconds - prefill, 1e-9)
    out = {"seconds": seconds, "prefill_seconds": prefill, "decode_seconds": decode,
           "tokens_kept": kept, "tokens_computed": computed,
           "useful_fraction": kept / max(computed, 1),
           "rollout_tokens_per_s": kept / seconds, "decode_tokens_per_s": kept / decode,
           "peak_bytes": int(peak)}
    if vision is not None:
        out.update({"vision_seconds": vision,
                    "rollout_tokens_per_s_with_vision": kept / (seconds + vision)})
    return out


ENGINES = ("before", "loop", "ours", "batch_generate")


def engine_checks(loaded, image) -> dict:
    """What mlx-vlm's batch engine does with n samples of one prompt (mlx-vlm 0.7.10):
    - its seeded sampler (_PositionedTargetSampler, what generate_step builds for a seed)
      keys each draw by (seed, row, position), but GenerationBatch._step and
      PromptProcessingBatch.generate pass row_ids=[0] * rows (generate/ar.py): every row
      of a prompt draws the same token at each position, so the n samples are identical;
    - unseeded, the draws come from MLX's global generator over the whole batch: a row's
      sample depends on its batch-mates, so a run resumed with a different batch (or a
      prompt decoded alone) does not sample what it sampled before."""
    from mlx_vlm.generate import batch_generate
    from mlx_vlm.generate.ar import _PositionedTargetSampler

    def texts(rows, sampler):
        mx.random.seed(0)
        return batch_generate(loaded.model, loaded.processor, images=[image] * rows,
                              prompts=["Describe the picture."] * rows, max_tokens=12,
                              sampler=sampler).texts

    seeded = texts(4, _PositionedTargetSampler(temperature=1.0, top_p=1.0, seed=0))
    plain = lambda lp: mx.random.categorical(lp)  # noqa: E731
    four, one = texts(4, plain), texts(1, plain)
    return {"seeded_sampler_rows_identical": len(set(seeded)) == 1,
            "unseeded_rows_differ": len(set(four)) > 1,
            "unseeded_row0_alone_equals_row0_in_batch": one[0] == four[0]}


def skipped(patterns, cell_id) -> bool:
    return any(all(p in ("*", c) for p, c in zip(pat.split(":"), cell_id))
               for pat in patterns)


def measure(loaded, ps: PromptSet, n, T, workload, engine, seed) -> dict:
    rows = len(ps.items) * n
    lengths = draw_lengths(rows, T, seed) if workload == "varying" else fixed_lengths(rows, T)
    if engine == "before":
        return run_before(loaded, ps, n, T)
    if engine == "batch_generate":
        return run_batch_generate(loaded, ps.items, n, T, lengths)
    name, _, room = engine.partition("@")
    return run_ours(loaded, ps, n, T, lengths, leave=name == "ours", room=int(room or 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--models", default="100M,3B")
    ap.add_argument("--shapes", default="4x8,16x8", help="prompts x rows per prompt")
    ap.add_argument("--workloads", default="varying,fixed")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="seed of the answer lengths")
    ap.add_argument("--room", type=int, default=0,
                    help="also run loop@K and ours@K, K prompts' rows at once (shapes with "
                         "more than K prompts)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per cell (the fastest kept)")
    ap.add_argument("--interleave", action="store_true",
                    help="run the engines in turn within each repeat (not each cell's "
                         "repeats back to back)")
    ap.add_argument("--skip", default="", help="cells to leave out: model:shape:engine,...")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    out = {"max_tokens": args.max_tokens, "check_every": rollout.CHECK_EVERY,
           "lengths": "answer_lengths.draw_lengths", "seed": args.seed, "records": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            work.mkdir()
            loaded, size = build_model(name, work)
            warm = prompts(loaded, work, 1, size)
            run_ours(loaded, PromptSet(warm), 2, 4, [3, 5], True)  # kernels, caches
            if "engine_checks" not in out:
                from PIL import Image

                small = Image.open(warm[0][0]).convert("RGB").resize((224, 224))
                out["engine_checks"] = engine_checks(loaded, small)
                print(json.dumps(out["engine_checks"]), flush=True)
            for shape in args.shapes.split(","):
                P, n = (int(x) for x in shape.split("x"))
                ps = PromptSet(prompts(loaded, work, P, size))
                for workload in args.workloads.split(","):
                    extra = [f"loop@{args.room}", f"ours@{args.room}"] \
                        if 0 < args.room < P else []
                    cells = []
                    for engine in list(ENGINES) + extra:
                        if engine == "before" and workload != "fixed":
                            continue  # it has no logits processor: fixed lengths only
                        rec = {"model": name, "image": list(size), "prompts": P, "rows": n,
                               "workload": workload, "engine": engine,
                               "prompt_tokens": ps.encs[0].prompt_len}
                        if skipped(skip, (name, shape, workload, engine)):
                            rec["skipped"] = "--skip"
                        cells.append(rec)
                    live = [r for r in cells if "skipped" not in r]
                    runs = {r["engine"]: [] for r in live}
                    # --interleave: engine after engine within each repeat, so that a
                    # machine's drift over the minutes falls on every engine alike
                    order = ([r for _ in range(args.repeats) for r in live] if args.interleave
                             else [r for r in live for _ in range(args.repeats)])
                    for r in order:
                        runs[r["engine"]].append(measure(loaded, ps, n, args.max_tokens,
                                                         workload, r["engine"], args.seed))
                    for rec in cells:
                        if "skipped" not in rec:
                            done = sorted(runs[rec["engine"]], key=lambda c: c["seconds"])
                            rec.update(done[0])  # the fastest: the least disturbed
                            rec["seconds_all"] = [c["seconds"] for c in runs[rec["engine"]]]
                        print(json.dumps(rec), flush=True)
                        out["records"].append(rec)
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(out, indent=1))
            del loaded
            mx.clear_cache()
    print(f"wrote {args.json}; next: python benchmarks/report.py {args.json.parent}")


if __name__ == "__main__":
    main()
