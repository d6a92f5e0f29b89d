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
- The machine: the script takes the GPU count (NPROC_PER_NODE, else nvidia-smi's, else 1)
  and vLLM (USE_VLLM, else whether vllm imports) at run time and computes the gradient
  accumulation so a step keeps prompts_per_step x n rows on 8 GPUs, 1 or none.
- The model: ms-swift loads Hugging Face checkpoints; an MLX-format model (quantized, or
  MLX-named weights) and a checkpoint whose image token is not its family's (ms-swift's
  Qwen templates hard-code it: swift/template/templates/qwen.py in ms-swift 4.6.0,
  Qwen2VLTemplate 151655, Qwen3_5Template 248056) are refused at export. A local folder
  gets `--template` from its family (ms-swift's own template names are the families').
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

from mlx_opd.data import Sample
from mlx_opd.method.views import save_pair
from mlx_opd.run.config import TrainConfig


class SwiftExportError(ValueError):
    """A run setting ms-swift cannot carry."""


# ms-swift 4.6.0's Qwen templates (swift/template/templates/qwen.py): the image token
# each hard-codes, by the family whose template it is (template names = our families).
SWIFT_IMAGE_TOKEN = {"qwen2_vl": 151655, "qwen2_5_vl": 151655, "qwen3_vl": 151655,
                     "qwen3_5": 248056}


def check_model(model: str) -> str | None:
    """The `--template` for `model` (a local Hugging Face folder's family; None for a hub
    id); refuses what ms-swift cannot train: MLX-format weights and toy checkpoints."""
    from mlx_opd.models.layouts import SUPPORTED_FAMILIES

    fix = ("pass --model the Hugging Face original (e.g. Qwen/Qwen2.5-VL-3B-Instruct), or "
           "`mlx-opd export --format hf` output, as `export --hf-source` asks")
    path = Path(model).expanduser()
    if not path.exists():
        if model.lower().startswith("mlx-community/") or "mlx" in model.lower().split("/")[-1]:
            raise SwiftExportError(f"--model {model} is an MLX-format repo, which ms-swift "
                                   f"cannot load: {fix}")
        return None
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise SwiftExportError(f"--model {model}: no config.json there; {fix}")
    config = json.loads(cfg_file.read_text())
    family = config.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        raise SwiftExportError(f"--model {model} is {family!r}; the swift export knows "
                               f"{', '.join(SUPPORTED_FAMILIES)}")
    if config.get("quantization"):
        raise SwiftExportError(f"--model {model} is quantized (MLX); {fix}")
    if _mlx_named(path):
        raise SwiftExportError(f"--model {model} has MLX-named weights (language_model.*, "
                               f"vision_tower.*); {fix}")
    token = config.get("image_token_id", config.get("image_token_index"))
    if token != SWIFT_IMAGE_TOKEN[family]:
        raise SwiftExportError(
            f"--model {model}: its image token is {token}, but ms-swift's {family} template "
            f"hard-codes {SWIFT_IMAGE_TOKEN[family]} (a toy checkpoint's vocabulary): ms-swift "
            "would fail with 'Image features and image tokens do not match'. Use the real "
            "model, or a replica (`mlx-opd tiny-model --like HUB_ID`) exported with "
            "`mlx-opd export --format hf`")
    return family


def _mlx_named(path: Path) -> bool:
    """Whether the checkpoint's weight names are mlx-vlm's (not Hugging Face's)."""
    for f in sorted(path.glob("*.safetensors"))[:1]:
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                names = json.loads(fh.read(n)).keys()
        except (OSError, ValueError, AttributeError, MemoryError):
            raise SwiftExportError(f"{f}: not a readable safetensors file") from None
        return any(k.startswith(("language_model.", "vision_tower.")) for k in names)
    return False


def swift_args(cfg: TrainConfig, model: str, dataset: str, output_dir: str,
               template: str | None = None) -> list[str]:
    """`swift rlhf` arguments for this run (argv after `swift rlhf`), without what the
    machine decides at run time (the gradient accumulation and vLLM: launch_script)."""
    L, R, opt, lo = cfg.loss, cfg.rollout, cfg.optim, cfg.lora
    if L.estimator == "sampled":
        raise SwiftExportError("ms-swift's GKD has no sampled-token estimator: set "
                               "loss.estimator to topk or full")
    beta = {"forward_kl": 0.0, "reverse_kl": 1.0}.get(L.kind, L.beta)
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
            "--dataset", dataset, "--output_dir", output_dir, "--add_version", "false",
            "--report_to", "tensorboard", "--logging_steps", "1",
            "--save_steps", str(cfg.run.save_every)]
    if template:
        args += ["--template", template]
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


# The run-time part of the script: GPUs, the accumulation that keeps the step, vLLM.
_MACHINE = """\
if [ -n "${{CUDA_VISIBLE_DEVICES:-}}" ]; then  # the GPUs this process may use
  GPUS=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c . || true)
else
  GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
fi
if [ -n "${{NPROC_PER_NODE:-}}" ]; then GPUS="$NPROC_PER_NODE"; fi  # the user's count wins
NPROC_PER_NODE="${{NPROC_PER_NODE:-$GPUS}}"
[ "${{NPROC_PER_NODE:-0}}" -ge 1 ] 2>/dev/null || NPROC_PER_NODE=1
if [ "${{GPUS:-0}}" -ge 1 ] 2>/dev/null; then DEVICE=(--torch_dtype "${{DTYPE:-bfloat16}}")
else DEVICE=(--use_cpu true --torch_dtype "${{DTYPE:-float32}}"); fi  # no GPU: the CPU
ROWS={rows}  # prompts_per_step x rollout.n of the Mac run: one optimizer step
if (( ROWS % NPROC_PER_NODE )); then
  echo "run_swift_opsd.sh: $ROWS rows per step do not split over NPROC_PER_NODE=$NPROC_PER_NODE GPUs; use a GPU count that divides $ROWS" >&2
  exit 2
fi
ACCUM=$(( ROWS / NPROC_PER_NODE ))
if [ -z "${{USE_VLLM:-}}" ]; then
  if python -c "import vllm" >/dev/null 2>&1; then USE_VLLM=true; else USE_VLLM=false; fi
fi
if [ "$USE_VLLM" = true ]; then VLLM=(--use_vllm true --vllm_mode colocate); else VLLM=(--use_vllm false); fi
if [ "$NPROC_PER_NODE" -gt 1 ]; then export NPROC_PER_NODE; else unset NPROC_PER_NODE; fi
echo "ms-swift OPSD: ${{NPROC_PER_NODE:-1}} process(es) x per-device batch 1 x accumulation $ACCUM = $ROWS rows per step; vLLM $USE_VLLM; ${{DEVICE[*]}}" >&2
"""


def launch_script(cfg: TrainConfig, model: str, dataset: str, output_dir: str,
                  template: str | None = None) -> str:
    args = swift_args(cfg, "$MODEL", dataset, output_dir, template)
    quoted = ['"$MODEL"' if a == "$MODEL" else shlex.quote(a) for a in args]
    pairs = [" ".join(quoted[i:i + 2]) for i in range(0, len(quoted), 2)]
    rows = cfg.optim.prompts_per_step * cfg.rollout.n
    teacher = ("the student itself (teacher.mode=live)" if cfg.teacher.mode == "live" else
               "FROZEN: the base model (adapter disabled). ms-swift has no EMA teacher; the "
               "Mac run's EMA is replaced by the frozen teacher (the authors' ablation: "
               "frozen 75.43 vs EMA 75.70)")
    lines = ["#!/usr/bin/env bash",
             "# Vision-OPD's recipe as ms-swift (>= 4.6.0) on-policy self-distillation,",
             "# written by `mlx-opd export-data --format swift` (see mlx_opd/engines/swift.py).",
             f"# Teacher: {teacher}.",
             "# The teacher sees each row's teacher_images (the crop), the student its images.",
             "# Set before running (all optional):",
             "#   MODEL           the Hugging Face model (default below)",
             "#   NPROC_PER_NODE  GPUs to use (default: those nvidia-smi lists; 1 without one)",
             "#   USE_VLLM        true | false: roll out with vLLM, colocated (default: true",
             "#                   when vllm imports)",
             "#   DTYPE           the weights' dtype (default: bfloat16 on GPUs, float32 on a",
             "#                   machine without one, which then trains on the CPU)",
             f"# A step is {cfg.optim.prompts_per_step} prompts x {cfg.rollout.n} samples = "
             f"{rows} rows, as on the Mac: the gradient",
             "# accumulation is computed from the GPU count (rows / GPUs, per-device batch 1).",
             "# Needs, beyond ms-swift: msgspec, qwen_vl_utils, torchvision (the Qwen",
             "# processors), and vllm for USE_VLLM=true. Extra `swift rlhf` arguments go after",
             "# the script's name and win.",
             "set -euo pipefail",
             f'MODEL="${{MODEL:-{model}}}"',
             _MACHINE.format(rows=rows).rstrip("\n"),
             "swift rlhf \\"]
    lines += [f"    {p} \\" for p in pairs]
    lines += ['    --gradient_accumulation_steps "$ACCUM" "${VLLM[@]}" "${DEVICE[@]}" \\',
              '    "$@"']
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
    from mlx_opd.run.files import write_dir_atomically

    root = (image_root or str(out.resolve())).rstrip("/")
    template = check_model(model)  # refuse what ms-swift cannot load before writing
    swift_args(cfg, model, "", "")  # and what it cannot run

    def write(tmp: Path):
        with open(tmp / "train.jsonl", "w", encoding="utf-8") as f:
            for i, s in enumerate(samples):
                for row in sample_rows(i, s, cfg, tmp, root):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        script = tmp / "run_swift_opsd.sh"
        script.write_text(launch_script(cfg, model, f"{root}/train.jsonl", f"{root}/output",
                                        template))
        script.chmod(0o755)

    return write_dir_atomically(out, write, kind="export-swift")
