"""`mlx-opd demo`: the method, end to end, offline, in minutes on a laptop CPU.

    synth data -> tiny base with a real regional-to-global gap (cached) -> eval (gap before)
    -> Vision-OPD training on the train split (labels never read) -> eval on the held-out
    split (gap after) -> DIR/summary.json + DIR/summary.png

The tiny base: a tiny qwen2_5_vl checkpoint (`tiny.py`) taught perception by supervised
training on CROPS only (the teacher view), so it reads a colour well when the evidence
fills the image and poorly when the same evidence is a small object in a cluttered full
image: a gap of focus, the information is still in the full view at the model's
resolution (the evidence covers about a fifth of an image patch). Its training scenes
come from their own seed stream, disjoint from the demo's train and held-out splits.

Departures from the authors' set-up, deliberately (a 1M-parameter model, minutes of CPU):
1. The student view is the plain full image (no red box, no hint): the tiny model has no
   notion of a drawn box to transfer from; the teacher is the crop, as in the paper.
2. LoRA also on the vision tower; a few hundred steps at lr 1e-3; options in a fixed order.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import PixelConfig, ViewConfig
from .synth import SynthConfig

SFT_SEED_OFFSET = 7_000_001  # the base's own scenes: disjoint from train / held-out
RECIPE_VERSION = 2           # bump when the base recipe's code changes (invalidates caches)


@dataclass(frozen=True)
class DemoRecipe:
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(evidence_size=16, clutter=25,
                                                                   fixed_options=True))
    hidden_size: int = 128
    num_layers: int = 4
    vision_depth: int = 2
    vision_hidden_size: int = 64
    max_pixels: int = 224 * 224
    sft_scenes: int = 600
    sft_steps: int = 200
    sft_batch: int = 16
    sft_lr: float = 1e-3
    train_scenes: int = 200
    heldout_scenes: int = 100
    opd_steps: int = 150
    seed: int = 0

    def key(self) -> str:
        d = asdict(self)
        for k in ("train_scenes", "heldout_scenes", "opd_steps"):
            d.pop(k)
        d["version"] = RECIPE_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:12]


QUICK = DemoRecipe(sft_scenes=64, sft_steps=20, train_scenes=8, heldout_scenes=8, opd_steps=2)


def views() -> ViewConfig:
    return ViewConfig(hint=None, draw_box=False)


def pixels(r: DemoRecipe) -> PixelConfig:
    return PixelConfig(max_pixels=r.max_pixels)


def build_base(r: DemoRecipe, cache: Path, log=print) -> Path:
    """The tiny base with perception, trained on crops; cached under cache/<recipe key>."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    from . import models
    from .config import DataConfig
    from .data import read_samples
    from .hf_layout import to_hf_weights
    from .lora import write_dir_atomically
    from .synth import write_split
    from .tiny import TinySize, build_tiny_model
    from .views import teacher_view

    out = Path(cache) / f"tiny-base-{r.key()}"
    if (out / "base_recipe.json").exists():
        log(f"tiny base: cached in {out}")
        return out
    t0 = time.time()
    work = Path(cache) / f".build-{r.key()}"
    shutil.rmtree(work, ignore_errors=True)
    size = TinySize(hidden_size=r.hidden_size, num_layers=r.num_layers, num_heads=4,
                    num_kv_heads=2, intermediate_size=2 * r.hidden_size,
                    vision_depth=r.vision_depth, vision_hidden_size=r.vision_hidden_size,
                    vision_heads=2)
    init = build_tiny_model("qwen2_5_vl", work / "init", seed=r.seed, size=size)
    data = write_split(work, "sft", r.sft_scenes, r.seed + SFT_SEED_OFFSET, r.synth)
    samples, _ = read_samples(DataConfig(path=str(data)))
    L = models.load(init)
    eos = models.eos_token_ids(L)[0]
    examples = []
    for s in samples:  # crops only: the model learns to read the evidence when it is big
        v = teacher_view(s, views())
        examples.append((models.encode(L, v.image, v.text, pixels(r)),
                         L.tokenizer.encode(s.answer, add_special_tokens=False) + [eos]))
    L.model.unfreeze()
    opt = optim.AdamW(learning_rate=r.sft_lr, weight_decay=0.0)

    def loss_fn(m, batch):
        logits = models.apply_head(m, models.response_hidden(m, batch))
        ce = nn.losses.cross_entropy(logits, batch.response_ids, reduction="none")
        return (ce * batch.response_mask).sum() / batch.response_mask.sum()

    step_fn = nn.value_and_grad(L.model, loss_fn)
    rng = random.Random(r.seed)
    for step in range(r.sft_steps):
        pick = rng.sample(range(len(examples)), min(r.sft_batch, len(examples)))
        batch = models.make_batch([examples[i][0] for i in pick], [examples[i][1] for i in pick])
        loss, grads = step_fn(L.model, batch)
        opt.update(L.model, grads)
        mx.eval(L.model.parameters(), opt.state)
        if step % 50 == 0 or step == r.sft_steps - 1:
            log(f"tiny base: supervised step {step + 1}/{r.sft_steps}, loss {float(loss.item()):.4f}")

    def write(tmp: Path):
        for f in init.iterdir():
            if f.name != "model.safetensors":
                shutil.copy2(f, tmp / f.name)
        weights = to_hf_weights("qwen2_5_vl", dict(tree_flatten(L.model.parameters())))
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "pt"})
        (tmp / "base_recipe.json").write_text(json.dumps(
            {**asdict(r), "built_seconds": time.time() - t0}, indent=2, default=list))

    write_dir_atomically(out, write)
    shutil.rmtree(work, ignore_errors=True)
    log(f"tiny base: built in {time.time() - t0:.0f} s -> {out}")
    return out
