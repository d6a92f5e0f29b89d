"""A Mac run handed to ms-swift's on-policy self-distillation (ms-swift >= 4.6.0).

    mlx-opd export-data --data D --out DIR --format swift [--config FILE] [--model M]

ms-swift runs OPSD as `swift rlhf --rlhf_type gkd` with `--teacher_model` equal to
`--model`; since 4.6.0 (PR #10015) a row's `teacher_images` are the teacher's images
while the student keeps `images` and both keep the same messages
(swift/rl_core/data.py build_teacher_view, to_teacher_template_dict). What carries over
and what does not:
- Teacher: FROZEN, not EMA. ms-swift has no EMA teacher; with LoRA and the same model
  the teacher is the base with the adapter disabled (swift/arguments/rlhf_args.py
  _check_teacher), with a full fine-tune a second, frozen copy. teacher.mode=live maps
  to ms-swift's teacher = the current student (no --teacher_model).
- Divergence: ms-swift's generalized JSD has the recipe's convention (beta 0 = forward
  KL(T||S), 1 = reverse KL, mixture beta T + (1 - beta) S), so beta = the recipe's alpha.
  Its top-K (`--gkd_logits_topk`) takes the TEACHER's top K and renormalises both sides
  over them, without a tail bucket; the Mac run's estimator (the student's top K plus a
  tail) has no ms-swift equivalent. `loss.estimator=full` maps to no top-K.
- Samples: ms-swift samples one answer per row, so each row is written rollout.n times
  (an epoch then scores each prompt n times, as Vision-OPD's), and an optimizer step
  holds prompts_per_step x n rows (per-device batch x accumulation x GPUs).
- Units: warm-up in steps of prompts_per_step prompts (the Mac run's conversion of the
  recipe's 10 steps of 96); lengths, lr, weight decay, clip, AdamW betas/eps as the Mac.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

from .config import TrainConfig
from .data import Sample
from .views import save_pair


class SwiftExportError(ValueError):
    """A run setting ms-swift cannot carry."""


def swift_args(cfg: TrainConfig, model: str, dataset: str, output_dir: str,
               gpus: int = 8) -> list[str]:
    """`swift rlhf` arguments for this run (argv after `swift rlhf`)."""
    L, R, opt, lo = cfg.loss, cfg.rollout, cfg.optim, cfg.lora
    if L.estimator == "sampled":
        raise SwiftExportError("ms-swift's GKD has no sampled-token estimator: set "
                               "loss.estimator to topk or full")
    beta = {"forward_kl": 0.0, "reverse_kl": 1.0}.get(L.kind, L.beta)
    rows_per_step = opt.prompts_per_step * R.n
    if rows_per_step % gpus:
        raise SwiftExportError(f"prompts_per_step x rollout.n = {rows_per_step} rows per step "
                               f"do not split over {gpus} GPUs: pick a multiple of {gpus}")
    warmup = math.ceil(opt.warmup_steps * opt.reference_prompts_per_step / opt.prompts_per_step)
    args = ["--rlhf_type", "gkd", "--model", model,
            "--lmbda", "1.0",                      # every batch on-policy
            "--sft_alpha", "0",                    # no SFT term: labels never read
            "--beta", repr(float(beta)),
            "--temperature", repr(float(R.temperature)),
            "--max_completion_length", str(R.max_tokens),
            "--max_length", str(R.max_prompt_tokens + R.max_tokens),
            "--learning_rate", repr(float(opt.lr)),
            "--lr_scheduler_type", "constant_with_warmup",
            "--warmup_steps", str(warmup),
            "--weight_decay", repr(float(opt.weight_decay)),
            "--max_grad_norm", repr(float(opt.grad_clip)),
            "--adam_beta1", "0.9", "--adam_beta2", "0.999", "--adam_epsilon", "1e-08",
            "--num_train_epochs", f"{opt.epochs:g}",  # a float in HF's TrainingArguments
            "--per_device_train_batch_size", "1",
            "--gradient_accumulation_steps", str(rows_per_step // gpus),
            "--dataset", dataset, "--output_dir", output_dir, "--add_version", "false",
            "--torch_dtype", "bfloat16", "--use_vllm", "true", "--vllm_mode", "colocate",
            "--report_to", "tensorboard", "--logging_steps", "1",
            "--save_steps", str(cfg.run.save_every)]
    if opt.max_steps is not None:
        args += ["--max_steps", str(opt.max_steps)]
    if L.estimator == "topk":
        args += ["--gkd_logits_topk", str(L.k)]
    if cfg.teacher.mode != "live":
        args += ["--teacher_model", model]     # same model: adapter disabled = frozen base
    if lo.finetune == "lora":
        if float(lo.alpha) != int(lo.alpha):
            raise SwiftExportError(f"lora.alpha={lo.alpha} is not a whole number")
        args += ["--tuner_type", "lora", "--lora_rank", str(lo.rank),
                 "--lora_alpha", str(int(lo.alpha)), "--lora_dropout", repr(float(lo.dropout)),
                 "--target_modules", "all-linear",
                 # all-linear on a VLM adapts the language model only while the vision
                 # tower and projector are frozen (the Mac default)
                 "--freeze_vit", "false" if lo.train_vision else "true",
                 "--freeze_aligner", "true"]
    else:
        args += ["--tuner_type", "full", "--freeze_vit", "false" if lo.train_vision else "true"]
    return args


def launch_script(cfg: TrainConfig, model: str, dataset: str, output_dir: str) -> str:
    args = swift_args(cfg, "$MODEL", dataset, output_dir)
    quoted = ['"$MODEL"' if a == "$MODEL" else shlex.quote(a) for a in args]
    pairs = [" ".join(quoted[i:i + 2]) for i in range(0, len(quoted), 2)]
    teacher = ("the student itself (teacher.mode=live)" if cfg.teacher.mode == "live" else
               "FROZEN: the base model (adapter disabled). ms-swift has no EMA teacher; the "
               "Mac run's EMA is replaced by the frozen teacher (the authors' ablation: "
               "frozen 75.43 vs EMA 75.70)")
    lines = ["#!/usr/bin/env bash",
             "# Vision-OPD's recipe as ms-swift (>= 4.6.0) on-policy self-distillation,",
             "# written by `mlx-opd export-data --format swift` (see mlx_opd/swift.py).",
             f"# Teacher: {teacher}.",
             "# The teacher sees each row's teacher_images (the crop), the student its images.",
             "# 8 GPUs (the gradient accumulation is set for 8); extra `swift rlhf` arguments",
             "# go after the script's name and win.",
             "set -euo pipefail",
             f'MODEL="${{MODEL:-{model}}}"',
             'NPROC_PER_NODE=8 swift rlhf \\']
    lines += [f"    {p} \\" for p in pairs]
    lines.append('    "$@"')
    return "\n".join(lines) + "\n"


def sample_rows(i: int, sample: Sample, cfg: TrainConfig, out: Path, root: str) -> list[dict]:
    """The row for one sample, rollout.n times (ms-swift samples once per row)."""
    student, teacher, image, crops = save_pair(sample, cfg.views, out, f"{i:06d}",
                                               ("images", "teacher_images"), root)
    row = {"messages": [{"role": "user", "content": "<image>" + student.text}],
           "images": [image], "teacher_images": crops}
    if len(crops) > 1:
        # several teacher images need as many image tags in the teacher's message (the
        # template asserts it, template/base.py); teacher_prompt replaces the last user
        # message for the teacher only (rl_core/data.py build_teacher_view)
        row["teacher_prompt"] = "<image>" * len(crops) + teacher.text
    return [row] * cfg.rollout.n


def export_swift(samples: list[Sample], cfg: TrainConfig, out: Path, model: str,
                 image_root: str | None = None) -> Path:
    """Write DIR (atomically): train.jsonl, images/, teacher_images/, run_swift_opsd.sh."""
    from .files import write_dir_atomically

    root = (image_root or str(out.resolve())).rstrip("/")
    swift_args(cfg, model, "", "")  # refuse what ms-swift cannot run before writing

    def write(tmp: Path):
        with open(tmp / "train.jsonl", "w", encoding="utf-8") as f:
            for i, s in enumerate(samples):
                for row in sample_rows(i, s, cfg, tmp, root):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        script = tmp / "run_swift_opsd.sh"
        script.write_text(launch_script(cfg, model, f"{root}/train.jsonl", f"{root}/output"))
        script.chmod(0o755)

    return write_dir_atomically(out, write, kind="export-swift")
