"""The demo's baselines: teacher options (frozen, EMA, live; JSD and reverse KL) and
off-policy SFT on the teacher's answers, each trained like the demo and compared on the
held-out split (mlx-opd demo --compare-teachers; docs/demo.md)."""

from __future__ import annotations

import json
from pathlib import Path

from mlx_opd.run.files import remove_own
from mlx_opd.toy.demo import add_crop_anchors, claim_output, train_config
from mlx_opd.toy.demo_base import (
    QUICK,
    DemoRecipe,
    _accuracies,
    build_base,
    pixels,
    views,
)


def sft_on_teacher_answers(r: DemoRecipe, base: Path, train_path: Path, out: Path) -> Path:
    """Off-policy baseline: the base's greedy answers on the CROP become labels for the
    plain full image; LoRA trained with cross-entropy for the same steps, lr and batch."""
    from mlx_opd import models
    from mlx_opd.data import read_samples
    from mlx_opd.method import rollout
    from mlx_opd.method.views import plain_view, teacher_view
    from mlx_opd.models import lora
    from mlx_opd.run.config import DataConfig, LoraConfig
    from mlx_opd.toy.sft import train_supervised

    samples, _ = read_samples(DataConfig(path=str(train_path)))
    L = models.load(base)
    examples = []
    for s in samples:  # the teacher's own answer, never the dataset's label
        t = teacher_view(s, views(r))
        answer = rollout.sample(L, models.encode(L, t.images, t.text, pixels(r)), max_tokens=3)
        p = plain_view(s, views(r))
        examples.append((models.encode(L, p.image, p.text, pixels(r)), answer.ids_with_stop))
    adapter_config = lora.attach(L.model, LoraConfig(rank=16, alpha=32))
    train_supervised(L, examples, r.opd_steps, 16, r.opd_lr, weight_decay=0.01, seed=r.seed,
                     bias_correction=True)  # the same optimizer as Vision-OPD's
    return lora.save_adapter(out / "adapters", lora.trainable(L.model), adapter_config)


# (name, teacher mode, divergence): the teacher ablation with JSD, then the divergence
# ablation with the demo's teacher (the paper: EMA >= frozen > live; JSD >= FKL, RKL)
RUNS = (("opd-frozen-jsd", "frozen", "jsd"), ("opd-ema-jsd", "ema", "jsd"),
        ("opd-live-jsd", "live", "jsd"), ("opd-frozen-forward_kl", "frozen", "forward_kl"),
        ("opd-frozen-reverse_kl", "frozen", "reverse_kl"))


def compare_teachers(out: str | Path, quick: bool = False, cache: str | Path | None = None,
                     log=print) -> dict:
    """Vision-OPD with a frozen, EMA and live teacher, with JSD, forward and reverse KL,
    and off-policy SFT on the teacher's crop answers, all from the same base and data;
    DIR/compare.json + DIR/compare.png."""
    import dataclasses

    from mlx_opd import models
    from mlx_opd.data import read_samples
    from mlx_opd.method.trainer import train
    from mlx_opd.run.config import DataConfig
    from mlx_opd.toy.synth import write_dataset

    r = QUICK if quick else DemoRecipe()
    out = claim_output(Path(out), log)
    paths = write_dataset(out / "data", r.train_scenes, r.seed, r.synth, r.heldout_scenes)
    add_crop_anchors(paths["train"], r)
    held, _ = read_samples(DataConfig(path=str(paths["heldout"])))
    base = build_base(r, Path(cache) if cache else out / "cache", log=log)
    results = {"base": _accuracies(models.load(base), held, r)}
    log(f"base: {results['base']}")
    for name, teacher_mode, kind in RUNS:
        cfg = train_config(r, base, paths["train"], out / name)
        cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, mode=teacher_mode),
                                  loss=dataclasses.replace(cfg.loss, kind=kind))
        remove_own(out / name, log, kinds=("run",))  # this command's earlier run
        train(cfg)
        results[name] = _accuracies(models.load(base, out / name / "adapters"), held, r)
        log(f"{name}: {results[name]}")
    adapter = sft_on_teacher_answers(r, base, paths["train"], out / "sft-teacher-answers")
    results["sft-teacher-answers"] = _accuracies(models.load(base, adapter), held, r)
    log(f"sft-teacher-answers: {results['sft-teacher-answers']}")
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    _compare_plot(results, out / "compare.png")
    return results


def _compare_plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.bar([i - 0.2 for i in x], [results[n]["plain_acc"] for n in names], 0.4, label="plain full image", color="#444444")
    ax.bar([i + 0.2 for i in x], [results[n]["teacher_acc"] for n in names], 0.4, label="teacher view (crop)", color="#428bca")
    ax.set_xticks(list(x), names, fontsize=7, rotation=20, ha="right")
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
