"""A Mac run handed to the authors' verl fork (VisionOPD/Vision-OPD @ c2e345f).

    mlx-opd export-data --data D --out DIR --format verl [--config FILE] [--model M]

DIR/train.parquet follows the layout of the authors' prepared parquet (their
scripts/prepare_data.py build_record, lines 68-90), so an export and Vision-OPD-6K mix
in one run (`data.train_files=[ours, theirs]`: verl concatenates them with `datasets`,
rl_dataset.py:153-164, which needs equal features; `--like THEIRS.parquet` casts ours to
their exact schema):
    prompt          [{"role": "user", "content": "<image>\\n" + the student text}]
    images          [{"path"}]  the student image (full image, red box drawn), a PNG in DIR/images
    bbox_images     [{"path"}]  the teacher image (the crop), a PNG in DIR/bbox_images; the
                                column the recipe names as self_distillation.teacher_image_key
    data_source, ability, reward_model {"style": "none", "ground_truth"},
    extra_info      {"answer", "question", "source_extra_info": {"bbox", "index"}}
DIR/run_vision_opd.sh runs `verl.trainer.main_ppo --config-name vopd` with every setting of
the Mac run under the fork's own key, in the fork's units (FORK_KEYS below says which is
which). Departures, on purpose:
1. Full fine-tune, not LoRA. The fork applies LoRA to the teacher's separate reference
   model too (fsdp_workers.py:439-468, 857-884) with its own random lora_A, and its EMA
   mixes parameters one by one (dp_actor.py:146-156): the teacher's B @ A is then not an
   average of the student's B @ A (the factors come from different initialisations), so
   a LoRA run in the fork has no meaningful EMA teacher. The authors ran full fine-tunes;
   the script does too, at the recipe's full fine-tune lr (2e-6) when the Mac run used
   LoRA (whose lr, 1e-5 by default, is for a low-rank delta from zero).
2. The batch is read from the command line: `data.train_batch_size=N` passed to the script
   re-derives warm-up steps, the per-step EMA rate, the mini-batch and the step count
   from N, so the recipe's units (per prompt seen) hold for any batch.
3. The fork's importance-sampling guards (self_distillation.is_clip 2.0 and
   rollout_correction token IS at 2.0) are the recipe's: on the Mac the rollout and the
   update are the same engine (ratio 1); on GPUs vLLM and FSDP round differently.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlx_opd.data import Sample
from mlx_opd.method.views import question_text, save_pair
from mlx_opd.run.config import TrainConfig

COLUMNS = ("data_source", "prompt", "images", "bbox_images", "ability", "reward_model",
           "extra_info")
FORK = "VisionOPD/Vision-OPD@c2e345f"
FULL_FINETUNE_LR = 2e-6  # the recipe's AdamW lr for full fine-tunes (docs/design/method.md)
TEMPLATE_FILE = "chat_template_qwen3_5_nonthinking.jinja"
LOSS_AGG = {"token_mean": "token-mean", "sequence_mean": "seq-mean-token-mean"}  # actor.py:335-342
ALPHA = {"forward_kl": 0.0, "reverse_kl": 1.0}  # core_algos.py:1141-1161; jsd: its beta


class VerlExportError(ValueError):
    """A run setting the fork cannot carry."""


def _alpha(cfg: TrainConfig) -> float:
    return ALPHA.get(cfg.loss.kind, cfg.loss.beta)


def fork_settings(cfg: TrainConfig) -> list[tuple[str, str, str]]:
    """(fork key, value, what it is) for every setting that does not depend on the batch.
    Values are Hydra override literals (integers as integers)."""
    L, R, opt = cfg.loss, cfg.rollout, cfg.optim
    if L.estimator == "sampled" and L.kind != "reverse_kl":
        raise VerlExportError("the fork's sampled-token loss is reverse KL only "
                              "(core_algos.py:1162-1165: full_logit_distillation=false "
                              "asserts alpha=1): set loss.kind=reverse_kl or another estimator")
    lr = FULL_FINETUNE_LR if cfg.lora.finetune == "lora" else opt.lr
    sd = "actor_rollout_ref.actor.self_distillation"
    out = [
        ("actor_rollout_ref.actor.policy_loss.loss_mode", "vopd", "Vision-OPD's loss (vopd.yaml:18)"),
        (f"{sd}.teacher_always_on", "True", "every sample distils from the crop teacher, no reward"),
        (f"{sd}.teacher_image_key", "bbox_images", "the crop column (ray_trainer.py:1279-1317)"),
        (f"{sd}.fallback_to_policy_loss_on_missing_teacher", "False", "reward-free (main_ppo.py:337-356)"),
        (f"{sd}.full_logit_distillation", "False" if L.estimator == "sampled" else "True",
         f"loss.estimator={L.estimator}"),
        (f"{sd}.distillation_topk", "null" if L.estimator == "full" else str(L.k),
         "top-K ids chosen by the student (dp_actor.py:1035); null = full vocabulary"),
        (f"{sd}.distillation_add_tail", str(L.tail), "tail bucket (core_algos.py:1109-1131)"),
        (f"{sd}.alpha", repr(float(_alpha(cfg))), f"loss.kind={L.kind}: 0 forward KL, 1 reverse KL"),
        (f"{sd}.is_clip", "2.0", "the recipe's IS clip (departure 3)"),
        (f"{sd}.teacher_model_source", "current" if cfg.teacher.mode == "live" else "legacy",
         f"teacher.mode={cfg.teacher.mode}"),
        (f"{sd}.teacher_regularization", "ema", "teacher <- (1 - rate) teacher + rate student"),
        (f"{sd}.include_environment_feedback", "False", "no reprompting (the authors' setting)"),
        ("actor_rollout_ref.actor.loss_agg_mode", LOSS_AGG[L.reduction], f"loss.reduction={L.reduction}"),
        ("actor_rollout_ref.actor.use_kl_loss", "False", "vopd with a legacy teacher refuses a KL ref (main_ppo.py:130-138)"),
        ("actor_rollout_ref.rollout.n", str(R.n), "samples per prompt"),
        ("actor_rollout_ref.rollout.temperature", repr(float(R.temperature)),
         "rollout temperature, also applied to both sides in the loss (dp_actor.py:981-1037)"),
        ("actor_rollout_ref.rollout.top_p", "1.0", "no nucleus truncation (as the Mac sampler)"),
        ("actor_rollout_ref.rollout.calculate_log_probs", "True", "for the IS guard"),
        ("data.max_prompt_length", str(R.max_prompt_tokens), "rollout.max_prompt_tokens"),
        ("data.max_response_length", str(R.max_tokens), "rollout.max_tokens"),
        ("actor_rollout_ref.actor.optim.lr", repr(float(lr)),
         "the recipe's full fine-tune lr (departure 1)" if cfg.lora.finetune == "lora" else "optim.lr"),
        ("actor_rollout_ref.actor.optim.lr_scheduler_type", "constant", "warm-up then constant"),
        ("actor_rollout_ref.actor.optim.weight_decay", repr(float(opt.weight_decay)), "AdamW weight decay"),
        ("actor_rollout_ref.actor.grad_clip", repr(float(opt.grad_clip)), "gradient norm clip (dp_actor.py:732-740)"),
        ("actor_rollout_ref.model.lora_rank", "0", "full fine-tune (departure 1)"),
        ("algorithm.adv_estimator", "grpo", "no critic (vopd.yaml:27)"),
        ("algorithm.use_kl_in_reward", "False", "reward-free"),
        ("algorithm.rollout_correction.rollout_is", "token", "the recipe's IS correction"),
        ("algorithm.rollout_correction.rollout_is_threshold", "2.0", "the recipe's IS threshold"),
        ("reward_model.enable", "False", "reward-free"),
        ("reward_model.use_reward_loop", "False", "reward-free"),
        ("reward_model.rollout.name", "vllm", "left ??? by the fork (dp_reward_loop.yaml:22)"),
        ("custom_reward_function.path", "null", "reward-free"),
    ]
    if cfg.teacher.mode == "frozen":
        out.append((f"{sd}.teacher_update_rate", "0.0", "teacher.mode=frozen: the EMA never moves"))
    return out


def _script_header(cfg: TrainConfig, model: str, data: Path, rows: int) -> list[str]:
    opt, R = cfg.optim, cfg.rollout
    rate = cfg.teacher.ema_rate if cfg.teacher.mode == "ema" else 0.0
    steps = "" if opt.max_steps is None else str(opt.max_steps)
    return [
        "#!/usr/bin/env bash",
        f"# Vision-OPD in the authors' verl fork ({FORK}), written by `mlx-opd export-data`.",
        "# Run from the fork's checkout (its README's environment). Extra Hydra overrides go",
        "# after the script's name and win; data.train_batch_size=N re-derives the values",
        "# that depend on the batch (warm-up, per-step EMA rate, mini-batch, steps).",
        "# Full fine-tune, not LoRA: the fork's EMA teacher cannot average a LoRA adapter",
        "# (see mlx_opd/engines/verl.py, departure 1).",
        "set -euo pipefail",
        "",
        f'MODEL="${{MODEL:-{model}}}"',
        f'DATA="${{DATA:-{data}/train.parquet}}"',
        "# GPUS: GPUs per node (default: CUDA_VISIBLE_DEVICES's, else those nvidia-smi lists);",
        "# NNODES: nodes (default 1). Set GPUS on a node that launches without GPUs of its own.",
        'if [ -z "${GPUS:-}" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then',
        '  GPUS=$(echo "$CUDA_VISIBLE_DEVICES" | tr \',\' \'\\n\' | grep -c . || true); fi',
        'GPUS="${GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c \'^GPU\' || true)}"',
        'if ! [ "${GPUS:-0}" -ge 1 ] 2>/dev/null; then',
        '  echo "run_vision_opd.sh: no GPU found here (nvidia-smi, CUDA_VISIBLE_DEVICES); set GPUS=N, the GPUs per node" >&2; exit 2',
        "fi",
        'NNODES="${NNODES:-1}"',
        'LOGGER="${LOGGER:-[\\"console\\"]}"  # e.g. LOGGER=\'["console","tensorboard"]\' (wandb needs a login)',
        f"ROWS={rows}                       # rows of train.parquet",
        f"TRAIN_BATCH_SIZE={opt.prompts_per_step}            # prompts per step (optim.prompts_per_step; authors: 96)",
        f"REFERENCE_PROMPTS={opt.reference_prompts_per_step}          # the recipe's step, in prompts",
        f"WARMUP_REFERENCE_STEPS={opt.warmup_steps:g}     # optim.warmup_steps, in steps of REFERENCE_PROMPTS",
        f"EMA_RATE_PER_REFERENCE={rate:g}   # teacher.ema_rate per REFERENCE_PROMPTS prompts",
        f"EPOCHS={opt.epochs:g}                      # optim.epochs",
        f'MAX_STEPS="{steps}"                  # optim.max_steps (empty: none)',
        "",
        'for arg in "$@"; do',
        '  case "$arg" in data.train_batch_size=*) TRAIN_BATCH_SIZE="${arg#*=}";; esac',
        "done",
        'if ! [[ "$TRAIN_BATCH_SIZE" =~ ^[1-9][0-9]*$ ]]; then',
        '  echo "data.train_batch_size must be a positive integer, got \'$TRAIN_BATCH_SIZE\'" >&2; exit 2',
        "fi",
        f'if (( TRAIN_BATCH_SIZE * {R.n} % (GPUS * NNODES) )); then',
        f'  echo "data.train_batch_size=$TRAIN_BATCH_SIZE x rollout.n={R.n} rows do not split over',
        '  GPUS=$GPUS x NNODES=$NNODES GPUs (the fork checks it): set GPUS, or the batch" >&2; exit 2',
        "fi",
        'if (( TRAIN_BATCH_SIZE > ROWS )); then',
        '  echo "data.train_batch_size=$TRAIN_BATCH_SIZE exceeds the $ROWS rows: verl drops the',
        '  incomplete batch (drop_last), so no step would run; lower it or add data" >&2; exit 2',
        "fi",
        "# per prompt seen, as on the Mac: warm-up ceil(W * R / N) steps of N prompts; EMA rate",
        "# 1 - (1 - r)^(N / R) per step (the fork updates the teacher once per step:",
        "# dp_actor.py:1203-1205); steps floor(epochs * rows / N), at most MAX_STEPS",
        'read -r WARMUP_STEPS EMA_RATE TOTAL_STEPS TOTAL_EPOCHS < <(awk -v w="$WARMUP_REFERENCE_STEPS" \\',
        '  -v r="$EMA_RATE_PER_REFERENCE" -v R="$REFERENCE_PROMPTS" -v n="$TRAIN_BATCH_SIZE" \\',
        '  -v e="$EPOCHS" -v rows="$ROWS" -v m="$MAX_STEPS" \'BEGIN {',
        "    wu = w * R / n; c = int(wu); if (c < wu) c++",
        '    rate = (r >= 1) ? 1 : 1 - exp((n / R) * log(1 - r))',
        "    s = int(e * rows / n); if (s < 1) s = 1; if (m != \"\" && m + 0 < s) s = m + 0",
        "    ep = int(e); if (ep < e) ep++",
        '    printf "%d %.12g %d %d\\n", c, rate, s, ep }\')',
        f"MAX_LEN={R.max_prompt_tokens + R.max_tokens}   # rollout.max_prompt_tokens + rollout.max_tokens",
    ]


def launch_script(cfg: TrainConfig, data_dir: Path, model: str, rows: int,
                  template: str | None = None) -> str:
    lines = _script_header(cfg, model, data_dir, rows)
    args = [
        "--config-name vopd",
        'data.train_files="[\\"$DATA\\"]"',
        'data.val_files="[]"',
        "data.image_key=images",
        "data.return_multi_modal_inputs=True",
        "data.truncation=error",
        "data.filter_overlong_prompts=False",
        "data.train_batch_size=$TRAIN_BATCH_SIZE",
        'actor_rollout_ref.model.path="$MODEL"',
        "actor_rollout_ref.model.use_remove_padding=True",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
        "actor_rollout_ref.actor.ppo_mini_batch_size=$TRAIN_BATCH_SIZE",
        "actor_rollout_ref.actor.ppo_epochs=1",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$MAX_LEN",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=$WARMUP_STEPS",
        "actor_rollout_ref.actor.self_distillation.teacher_update_rate=$EMA_RATE",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.rollout.max_model_len=$MAX_LEN",
        "actor_rollout_ref.rollout.max_num_batched_tokens=$MAX_LEN",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1",
        'critic.model.path="$MODEL"',
        "trainer.total_epochs=$TOTAL_EPOCHS",
        "trainer.total_training_steps=$TOTAL_STEPS",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        'trainer.logger="$LOGGER"',
        "trainer.n_gpus_per_node=$GPUS",
        "trainer.nnodes=$NNODES",
        "trainer.project_name=mlx-opd",
    ]
    settings = fork_settings(cfg)
    if cfg.teacher.mode == "frozen":  # rate 0 wins over the derived one
        args.remove("actor_rollout_ref.actor.self_distillation.teacher_update_rate=$EMA_RATE")
    args += [f"{k}={v}" for k, v, _ in settings]
    if template:
        args.append('actor_rollout_ref.model.custom_chat_template_file='
                    f'"$(cd "$(dirname "$0")" && pwd)/{template}"')
    lines += ["", "python3 -m verl.trainer.main_ppo \\"]
    lines += [f"    {a} \\" for a in args]
    lines += ['    "$@"', "", "# what each fixed setting is:"]
    lines += [f"#   {k}={v}: {what}" for k, v, what in settings]
    return "\n".join(lines) + "\n"


def nonthinking_template() -> str:
    """Our Qwen3.5 chat template with the generation prompt always closing an empty think
    block (the recipe ran Qwen3.5 in non-thinking mode)."""
    from mlx_opd.models.replicas import TEMPLATES

    src = (TEMPLATES / "qwen3_5.jinja").read_text()
    start = src.index("    {%- if enable_thinking is defined and enable_thinking is false %}")
    end = src.index("    {%- endif %}", start) + len("    {%- endif %}")
    return src[:start] + "    {{- '<think>\\n\\n</think>\\n\\n' }}" + src[end:]


def _family(model: str) -> str | None:
    cfg = Path(model).expanduser() / "config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("model_type")
    name = model.lower().replace("-", "").replace("_", "").replace(".", "")
    return "qwen3_5" if "qwen35" in name else None


def _conform(value, typ):
    """`value` shaped to a pyarrow type: struct fields it lacks are null, extra ones go."""
    import pyarrow as pa

    if pa.types.is_struct(typ) and isinstance(value, dict):
        return {f.name: _conform(value.get(f.name), f.type) for f in typ}
    if (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and isinstance(value, list):
        return [_conform(v, typ.value_type) for v in value]
    return value


def sample_row(i: int, sample: Sample, cfg: TrainConfig, out: Path, root: str) -> dict:
    """One prepared-layout row; writes its two PNGs under `out`, paths as seen from `root`
    (where DIR will be on the machine that trains)."""
    student, _, image, crops = save_pair(sample, cfg.views, out, f"{i:06d}",
                                         ("images", "bbox_images"), root)
    crop = crops[0]  # one: check_views refused several before anything was written
    answer = sample.answer or ""
    question = question_text(sample, cfg.views, hint=False)  # as their clean_question
    box = [int(round(v)) for v in sample.box] if sample.box else None
    return {
        "data_source": "mlx-opd",
        "prompt": [{"role": "user", "content": "<image>\n" + student.text}],
        "images": [{"path": image}],
        "bbox_images": [{"path": crop}],
        "ability": "visual_question_answering",
        "reward_model": {"style": "none", "ground_truth": answer},
        "extra_info": {"answer": answer, "question": question,
                       "source_extra_info": {"bbox": box, "index": i}},
    }


def check_views(samples: list[Sample], cfg: TrainConfig) -> None:
    """Refuse a teacher of several images: the fork swaps the student prompt's images for
    the teacher's one for one and stops on any other count (ray_trainer.py
    _swap_images_in_messages, lines 731-759, @c2e345f); the student prompt has one."""
    if cfg.views.teacher != "crops":
        return
    many = next((s for s in samples if len(s.all_boxes) > 1), None)
    if many is not None:
        raise VerlExportError(
            f"{many.where}: views.teacher=crops gives this row {len(many.all_boxes)} teacher "
            "images, and the authors' fork swaps exactly one teacher image per student image "
            "(ray_trainer.py:731-759). Use views.teacher=union (one crop of the boxes' union) "
            "or clean for this engine, or export to ms-swift (--format swift), which takes "
            "any number of teacher images")


def export_verl(samples: list[Sample], cfg: TrainConfig, out: Path, model: str,
                image_root: str | None = None, like: Path | None = None) -> Path:
    """Write DIR (atomically): train.parquet, images/, bbox_images/, run_vision_opd.sh and,
    for Qwen3.5 bases, the non-thinking chat template."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlx_opd.run.files import write_dir_atomically

    fork_settings(cfg)  # refuse what the fork cannot run before writing anything
    check_views(samples, cfg)
    schema = pq.read_schema(like).remove_metadata() if like else None
    family = _family(model)
    template = TEMPLATE_FILE if family == "qwen3_5" else None
    root = (image_root or str(out.resolve())).rstrip("/")

    def write(tmp: Path):
        rows = [sample_row(i, s, cfg, tmp, root) for i, s in enumerate(samples)]
        if schema is not None:
            rows = [{f.name: _conform(r.get(f.name), f.type) for f in schema} for r in rows]
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, tmp / "train.parquet")
        script = tmp / "run_vision_opd.sh"
        script.write_text(launch_script(cfg, Path(root), model, len(rows), template))
        script.chmod(0o755)
        if template:
            (tmp / template).write_text(nonthinking_template())

    return write_dir_atomically(out, write, kind="export-verl")

