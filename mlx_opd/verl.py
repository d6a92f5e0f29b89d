"""Training data in the authors' Vision-OPD layout (a verl fork), plus a launch template.

    mlx-opd export-data --data D --out DIR --format verl [--config FILE]

DIR/train.parquet has one row per sample with these columns (COLUMNS):
    images          [{"bytes": PNG}]  the student image: full image, red box drawn
    teacher_images  [{"bytes": PNG}]  the teacher image: the box cropped and zoomed
    problem         "<image>" + the student text (question, hint, options, instruction)
    answer          the ground-truth letter or text ("" when the sample has none)
    prompt          verl's chat messages: [{"role": "user", "content": problem}]
    data_source     "mlx-opd"
    ability         "fine-grained-vqa"
    reward_model    {"style": "rule", "ground_truth": answer} (unused by OPD; verl expects it)
    extra_info      {"index", "id", "bbox" (xyxy pixels of the full image), "question",
                     "options", "answer", "width", "height"}
DIR/run_vision_opd.sh carries the run's hyper-parameters under verl's keys (HYPER_KEYS).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from .config import TrainConfig
from .data import Sample
from .teacher import rate_per_step
from .views import student_view, teacher_view

COLUMNS = ("images", "teacher_images", "problem", "answer", "prompt", "data_source", "ability",
           "reward_model", "extra_info")

# verl key <- (what it is, how to get it from a TrainConfig)
HYPER_KEYS = {
    "data.train_batch_size": ("prompts per step (authors: 96)", lambda c: c.optim.prompts_per_step),
    "actor_rollout_ref.rollout.n": ("samples per prompt (authors: 8)", lambda c: c.rollout.n),
    "actor_rollout_ref.rollout.temperature": ("rollout temperature", lambda c: c.rollout.temperature),
    "actor_rollout_ref.rollout.top_p": ("nucleus sampling (authors: 1)", lambda c: 1.0),
    "data.max_response_length": ("max response tokens (authors: 1024)", lambda c: c.rollout.max_tokens),
    "data.max_prompt_length": ("max prompt tokens (authors: 8192)", lambda c: 8192),
    "actor_rollout_ref.actor.optim.lr": ("learning rate (authors' full fine-tune: 2e-6)",
                                         lambda c: c.optim.lr),
    # verl counts steps of train_batch_size prompts; ours are in reference steps (96)
    "actor_rollout_ref.actor.optim.lr_warmup_steps": (
        "warm-up steps of train_batch_size prompts (authors: 10 of 96)",
        lambda c: math.ceil(c.optim.warmup_steps * c.optim.reference_prompts_per_step
                            / c.optim.prompts_per_step)),
    "actor_rollout_ref.actor.optim.weight_decay": ("AdamW weight decay", lambda c: c.optim.weight_decay),
    "actor_rollout_ref.actor.grad_clip": ("gradient clipping norm", lambda c: c.optim.grad_clip),
    "actor_rollout_ref.model.lora_rank": ("LoRA rank (0 = full fine-tune)",
                                          lambda c: 0 if c.lora.finetune == "full" else c.lora.rank),
    "actor_rollout_ref.model.lora_alpha": ("LoRA alpha", lambda c: c.lora.alpha),
    # verl loops over range(total_epochs): a whole number (fractions round up)
    "trainer.total_epochs": ("epochs, a whole number (authors: 1)",
                             lambda c: max(1, math.ceil(c.optim.epochs))),
}
# The divergence and teacher settings have no key in upstream verl: the authors' fork
# adds them. They are written as shell variables to hand to the fork's own options.
OPD_VARIABLES = {
    "OPD_DIVERGENCE": ("forward_kl | reverse_kl | jsd", lambda c: c.loss.kind),
    "OPD_ALPHA": ("JSD beta; 0 = forward KL, 1 = reverse KL (the recipe's alpha)", lambda c: c.loss.beta),
    "OPD_TOPK": ("top-K ids chosen by the student", lambda c: c.loss.k),
    "OPD_TAIL": ("tail bucket on (true) or renormalised top-K (false)", lambda c: str(c.loss.tail).lower()),
    "OPD_TEACHER": ("ema | frozen | live", lambda c: c.teacher.mode),
    "OPD_EMA_RATE": ("teacher <- (1 - rate) teacher + rate student, per step of "
                     "train_batch_size prompts (authors: 0.05 per 96)",
                     lambda c: rate_per_step(c.teacher.ema_rate, c.optim.prompts_per_step,
                                             c.optim.reference_prompts_per_step)),
    "OPD_LOSS_AGG": ("token_mean | sequence_mean", lambda c: c.loss.reduction),
}


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def sample_row(i: int, sample: Sample, cfg: TrainConfig) -> dict:
    student, teacher = student_view(sample, cfg.views), teacher_view(sample, cfg.views)
    problem = "<image>" + student.text
    answer = sample.answer or ""
    return {
        "images": [{"bytes": _png(student.image), "path": None}],
        "teacher_images": [{"bytes": _png(teacher.image), "path": None}],
        "problem": problem,
        "answer": answer,
        "prompt": [{"role": "user", "content": problem}],
        "data_source": "mlx-opd",
        "ability": "fine-grained-vqa",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"index": i, "id": sample.id, "bbox": list(sample.box or []),
                       "question": sample.question, "options": list(sample.options or []),
                       "answer": answer, "width": student.image.size[0],
                       "height": student.image.size[1]},
    }


def launch_script(cfg: TrainConfig, data_dir: Path, model: str) -> str:
    lines = ["#!/usr/bin/env bash",
             "# Vision-OPD on GPUs with verl: written by `mlx-opd export-data` from this run's config.",
             "# Every hyper-parameter mlx-opd maps is listed below with its verl key.",
             "set -euo pipefail", "",
             f'MODEL="${{MODEL:-{model}}}"  # the Hugging Face base (or `mlx-opd export --format hf`)',
             f'DATA="{data_dir}/train.parquet"', ""]
    for var, (what, get) in OPD_VARIABLES.items():
        lines.append(f'{var}="{get(cfg)}"  # {what}; pass to the Vision-OPD fork\'s option')
    lines += ["", "python3 -m verl.trainer.main_ppo \\",
              '    data.train_files="$DATA" \\', '    data.val_files="$DATA" \\',
              '    data.image_key=images \\', '    actor_rollout_ref.model.path="$MODEL" \\']
    for key, (_, get) in HYPER_KEYS.items():
        lines.append(f"    {key}={get(cfg)} \\")
    lines.append('    "$@"')
    lines += ["", "# mapping (verl key: meaning):"]
    lines += [f"#   {key}: {what}" for key, (what, _) in HYPER_KEYS.items()]
    return "\n".join(lines) + "\n"


def export_verl(samples: list[Sample], cfg: TrainConfig, out: Path, model: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .files import write_dir_atomically

    rows = [sample_row(i, s, cfg) for i, s in enumerate(samples)]

    def write(tmp: Path):
        pq.write_table(pa.Table.from_pylist(rows), tmp / "train.parquet")
        script = tmp / "run_vision_opd.sh"
        script.write_text(launch_script(cfg, out.resolve(), model))
        script.chmod(0o755)
        (tmp / "columns.json").write_text(json.dumps(list(COLUMNS)))

    return write_dir_atomically(out, write, kind="export-verl")
