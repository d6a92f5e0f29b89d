"""`mlx-opd doctor --bench MODEL`: this machine measured, beside what `plan` predicts.

Until a user's Mac has run this, every Metal figure in the docs is an estimate: the
divergence kernel has never run on Metal, and `plan`'s memory and seconds-per-step come
from a model of the step, not from a Mac. One command on the machine itself, in a few
minutes, measures:
- the divergence path `loss.backend=auto` takes here (the Metal kernel on a Mac), against
  the reference (autograd through log-softmax) at the model's vocabulary: value and
  gradient;
- rollout decode tokens/s, and one training step (seconds, peak memory), on a replica of
  MODEL at its real widths with `layers` text layers (replicas.py: real config, tokenizer
  and template, random weights), on a real-size photo (1280x960 by default);
and writes a JSON and a Markdown report with each figure beside plan's prediction for the
same run (memory everywhere; seconds on Apple chips, which plan times). A figure off by
more than `FLAG_FACTOR` either way is flagged: the report is what to paste into an issue.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPORT_FILES = ("report.json", "report.md", "photo.jpg", "data.jsonl", "train.log")
FLAG_FACTOR = 2.0  # measured / predicted outside [1/F, F]: the model of the step is off
BOX = (600, 400, 660, 450)  # a 60x50 px evidence box in a 1280x960 photo (scaled with it)


@dataclass(frozen=True)
class BenchConfig:
    model: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # a hub id of replicas.REAL_MODELS
    layers: int = 2                 # text layers of the replica (vision: 2 blocks)
    photo: tuple[int, int] = (1280, 960)
    rows: int = 2                   # rollout.n
    max_tokens: int = 16            # decode steps (replicas never stop early)
    steps: int = 2                  # training steps; the last is reported (the first warms up)

    def __post_init__(self):
        if min(self.photo) < 112 or self.layers < 1 or self.max_tokens < 1:
            raise ValueError("--photo must be at least 112 x 112 pixels, --layers and "
                             "--max-tokens at least 1")


def check(bc: BenchConfig) -> BenchConfig:
    """bc, or a ValueError naming the models a replica can be built of."""
    from mlx_opd.models.replicas import REAL_MODELS

    if bc.model not in REAL_MODELS:
        raise ValueError(f"--bench {bc.model}: choose one of {', '.join(REAL_MODELS)}")
    return bc


def judge(measured: float | None, predicted: float | None, factor: float = FLAG_FACTOR) -> dict:
    """One figure beside its prediction: ratio measured / predicted and the flag."""
    if measured is None or predicted is None or predicted <= 0:
        return {"measured": measured, "predicted": predicted, "ratio": None, "flagged": False}
    ratio = measured / predicted
    return {"measured": measured, "predicted": predicted, "ratio": ratio,
            "flagged": not (1 / factor <= ratio <= factor)}


def chip_name() -> str | None:
    """This Mac's chip as plan names it (plan.CHIPS), or None elsewhere."""
    import mlx.core as mx

    from mlx_opd.preflight.plan import CHIPS

    if not mx.metal.is_available():
        return None
    name = str(mx.device_info().get("device_name", "")).lower()  # e.g. "apple m3 max"
    key = name.replace("apple", "").strip().replace(" ", "-")
    return key if key in CHIPS else None


def kernel_check(vocab: int, rows: int = 8, k: int = 100) -> dict:
    """The auto divergence path against the reference at `vocab`: value and gradient."""
    import mlx.core as mx

    from mlx_opd.metal import kernels
    from mlx_opd.method.loss import token_divergence, token_divergence_reference

    k1, k2 = mx.random.split(mx.random.key(7))
    zs = mx.random.normal((1, rows, vocab), key=k1) * 3
    zt = mx.random.normal((1, rows, vocab), key=k2) * 3
    fast_v, fast_g = mx.value_and_grad(lambda z: token_divergence(z, zt, k=k))(zs)
    ref_v, ref_g = mx.value_and_grad(lambda z: token_divergence_reference(z, zt, k=k))(zs)
    value_err = abs(float(fast_v.item()) - float(ref_v.item()))
    grad_err = float(mx.abs(fast_g - ref_g).max().item())
    return {"path": next(iter(kernels.available()), "mlx-ops"), "vocab": vocab, "rows": rows,
            "value_err": value_err, "grad_err": grad_err,
            "ok": value_err <= 1e-4 * max(1.0, abs(float(ref_v.item()))) and grad_err <= 1e-4}


def _data(folder: Path, size: tuple[int, int]) -> Path:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, (120, 150, 180))
    d = ImageDraw.Draw(im)
    for i in range(8):  # some clutter so the photo is not one flat colour
        x, y = (i * 151) % (size[0] - 80), (i * 97) % (size[1] - 80)
        d.rectangle([x, y, x + 60, y + 40], fill=(90 + 10 * i, 110, 70))
    box = [round(v * s / ref) for v, s, ref in zip(BOX, size * 2, (1280, 960) * 2)]
    d.ellipse(box, fill=(220, 30, 30))
    im.save(folder / "photo.jpg", quality=85)
    row = {"image": "photo.jpg", "question": "What colour is the small ball?",
           "options": ["red", "blue", "green", "yellow"], "box": box, "answer": "A"}
    (folder / "data.jsonl").write_text(json.dumps(row) + "\n")
    return folder / "data.jsonl"


def _train_config(bc: BenchConfig, model: Path, data: Path, out: Path):
    from mlx_opd.run.config import load_train_config

    return load_train_config(None, {
        "model.path": str(model), "data.path": str(data), "run.out": str(out),
        "rollout.n": bc.rows, "rollout.max_tokens": bc.max_tokens,
        "optim.prompts_per_step": 1, "optim.max_steps": bc.steps, "optim.epochs": bc.steps,
        "memory.grad_checkpoint": True, "run.save_every": 1000})


def decode_speed(loaded, sample, cfg) -> dict:
    """Rollout of one prompt with cfg.rollout.n rows: prefill seconds, decode tokens/s."""
    from mlx_opd import models
    from mlx_opd.method import rollout
    from mlx_opd.method.views import student_view

    v = student_view(sample, cfg.views)
    enc = models.encode(loaded, v.image, v.text, cfg.pixels)
    rollout.sample_prompts(loaded, [enc], 1, 2)  # warm-up: kernels compiled, caches made
    t0 = time.perf_counter()
    out = rollout.sample_prompts(loaded, [enc], cfg.rollout.n, cfg.rollout.max_tokens)[0]
    total = time.perf_counter() - t0
    decode = max(total - out.prefill_seconds, 1e-9)
    return {"prefill_seconds": out.prefill_seconds, "decode_seconds": decode,
            "tokens": out.num_tokens, "decode_tokens_per_s": out.num_tokens / decode,
            "prompt_tokens": int(enc.input_ids.shape[1])}


def predicted_decode_tokens_per_s(weights_bytes: float, rows: int, chip: str | None):
    """plan's decode model: one read of the weights per decode step of the batch."""
    from mlx_opd.preflight.plan import CHIPS

    if chip is None:
        return None
    return rows / (weights_bytes / (CHIPS[chip][0] * 1e9))


def run(bc: BenchConfig, out: Path, log=print) -> dict:
    """Measure, predict, compare; write OUT/report.json and OUT/report.md."""
    import mlx.core as mx

    from mlx_opd import models
    from mlx_opd.data import read_samples
    from mlx_opd.models.replicas import REAL_MODELS, build_replica, text_section
    from mlx_opd.preflight.doctor import report as machine
    from mlx_opd.preflight.plan import plan
    from mlx_opd.run.files import keep_edited

    check(bc)
    out.mkdir(parents=True, exist_ok=True)
    keep_edited(out, REPORT_FILES, log)  # an earlier report edited since is kept, renamed
    vocab = text_section(REAL_MODELS[bc.model].config)["vocab_size"]
    log(f"[1/4] divergence path vs the reference at the vocabulary of {bc.model} ({vocab})")
    kernel = kernel_check(vocab)
    log(f"[2/4] a {bc.layers}-layer replica of {bc.model} at its real widths")
    replica = build_replica(bc.model, out / "replica", layers=bc.layers, vision_layers=2,
                            force=True)
    data = _data(out, bc.photo)
    cfg = _train_config(bc, replica, data, out / "run")
    predicted = plan(cfg, chip=chip_name())
    log(f"[3/4] rollout: {bc.rows} rows x {bc.max_tokens} tokens on a {bc.photo[0]}x"
        f"{bc.photo[1]} photo")
    loaded = models.load(replica)
    samples, _ = read_samples(cfg.data)
    decode = decode_speed(loaded, samples[0], cfg)
    del loaded
    mx.clear_cache()
    log(f"[4/4] {bc.steps} training steps (the last is reported; the trainer's own output "
        f"goes to {out / 'train.log'})")
    last = _last_step(cfg, out)
    chip = predicted.get("time", {}).get("chip")
    figures = {
        "peak_memory_bytes": judge(last["memory/peak_bytes"], predicted["peak_bytes"]),
        "step_seconds": judge(last["time/step_seconds"],
                              predicted.get("time", {}).get("seconds_per_step")),
        "decode_tokens_per_s": judge(decode["decode_tokens_per_s"],
                                     predicted_decode_tokens_per_s(
                                         predicted["phases"]["weights"], bc.rows, chip)),
    }
    return _write_report(bc, out, machine(measure=True), chip, kernel, decode, figures)


def _last_step(cfg, out: Path) -> dict:
    """Train the replica (its output to OUT/train.log); the last step's metrics. The
    replica and the run (about 1 GB) are removed afterwards."""
    import contextlib

    from mlx_opd.method.trainer import train
    from mlx_opd.run.files import remove_own

    remove_own(out / "run", kinds=("run",))
    with open(out / "train.log", "w") as f, contextlib.redirect_stdout(f):
        train(cfg)
    steps = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    for folder, kind in (("replica", "replica"), ("run", "run")):  # ~1 GB: nothing to keep
        remove_own(out / folder, kinds=(kind,))
    return [s for s in steps if "time/step_seconds" in s][-1]


def _write_report(bc: BenchConfig, out: Path, info: dict, chip, kernel, decode,
                  figures) -> dict:
    """OUT/report.json and OUT/report.md, sealed; returns the report."""
    from mlx_opd.run.files import seal

    report = {"kind": "mlx-opd doctor --bench", "config": asdict(bc),
              "machine": {k: info[k] for k in ("platform", "versions", "backend", "blas",
                                               "memory", "device_info")}
              | {"chip": chip, "matmul_gflops_fp32": info.get("matmul_gflops_fp32"),
                 "host": platform.node()},
              "kernel": kernel, "rollout": decode, "figures": figures,
              "flag_factor": FLAG_FACTOR,
              "flagged": sorted(k for k, f in figures.items() if f["flagged"])}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown(report))
    seal(out, "doctor-bench", only=REPORT_FILES)
    return report


def markdown(r: dict) -> str:
    """The report as a Markdown block to paste into an issue."""
    m, c, k = r["machine"], r["config"], r["kernel"]
    unit = {"peak_memory_bytes": (2 ** 30, "GiB"), "step_seconds": (1, "s"),
            "decode_tokens_per_s": (1, "tok/s")}
    lines = [f"### mlx-opd doctor --bench {c['model']}",
             "",
             f"{m['platform']}, backend {m['backend']}"
             + (f" ({m['chip']})" if m["chip"] else "")
             + f", mlx {m['versions'].get('mlx')}, mlx-vlm {m['versions'].get('mlx-vlm')}, "
             f"mlx-opd {m['versions'].get('mlx-opd')}",
             f"replica: {c['layers']} text layers at the real widths; photo "
             f"{c['photo'][0]}x{c['photo'][1]}; {c['rows']} rows x {c['max_tokens']} tokens",
             "",
             f"divergence ({k['path']}) vs reference at vocab {k['vocab']}: value err "
             f"{k['value_err']:.1e}, grad err {k['grad_err']:.1e} -> "
             + ("ok" if k["ok"] else "MISMATCH"),
             "",
             "| figure | measured | plan predicts | ratio | |",
             "|---|---|---|---|---|"]
    for name, f in r["figures"].items():
        scale, u = unit[name]
        fmt = lambda v, s=scale, u=u: "-" if v is None else f"{v / s:.2f} {u}"  # noqa: E731
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}"
        lines.append(f"| {name} | {fmt(f['measured'])} | {fmt(f['predicted'])} | {ratio} | "
                     + (f"**off by more than {r['flag_factor']:g}x**" if f["flagged"] else "")
                     + " |")
    if not m["chip"]:
        lines += ["", "plan times Apple chips only: no seconds predicted on this machine."]
    return "\n".join(lines) + "\n"
