"""The verl fork's own config checks, re-written torch-free (VisionOPD/Vision-OPD @ c2e345f).

Each function states a check the fork runs before or at the start of training, with the
file and line it is read from, and raises AssertionError with the fork's meaning when a
composed config (a plain dict, resolved) fails it. `check_all` runs them in the fork's
order: main_ppo.py, then validate_config (verl/utils/config.py:74-205, which builds the
actor's dataclasses and so runs their __post_init__), then the workers' normalisation.
"""

from __future__ import annotations

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                  "seq-mean-token-sum-norm")                      # actor.py:335-342
TEACHER_REGULARIZATIONS = ("ema", "trust-region", "progressive")  # actor.py:123-128
TEACHER_SOURCES = ("legacy", "current", "fixed")                  # actor.py:153-158
ROLLOUT_NAMES = ("vllm", "sglang")                                # rollout/base.py:81-84
LR_SCHEDULERS = ("constant", "cosine")                            # optimizer.py:105-113


def self_distillation(sd: dict) -> None:
    """SelfDistillationConfig.__post_init__, workers/config/actor.py:118-171."""
    assert 0.0 <= sd["alpha"] <= 1.0, "alpha must be in [0,1] (actor.py:119)"
    assert sd["gamma"] >= 0.0, "gamma must be non-negative (actor.py:121)"
    assert sd["teacher_regularization"] in TEACHER_REGULARIZATIONS, "actor.py:123-128"
    assert 0.0 <= sd["teacher_update_rate"] <= 1.0, "teacher_update_rate in [0,1] (actor.py:129)"
    if sd["teacher_update_interval"] is not None:
        assert sd["teacher_update_interval"] > 0, "actor.py:133-137"
    if sd["distillation_topk"] is not None:
        assert isinstance(sd["distillation_topk"], int) and sd["distillation_topk"] > 0, \
            "distillation_topk must be a positive integer (actor.py:138-141)"
    if sd["is_clip"] is not None:
        assert sd["is_clip"] > 0, "is_clip must be positive (actor.py:142)"
    assert sd["teacher_prompt_mode"] in (None, "answer_hint"), "actor.py:144-147"
    if sd["teacher_always_on"] and sd["teacher_prompt_mode"] != "answer_hint":
        assert sd["teacher_image_key"], "teacher_image_key is required when " \
            "teacher_always_on=True (actor.py:148-152)"
    assert sd["teacher_model_source"] in TEACHER_SOURCES, "actor.py:153-158"
    if sd["teacher_model_source"] == "fixed":
        assert sd["teacher_model_path"], "actor.py:159-160"
    if not sd["full_logit_distillation"]:
        assert sd["alpha"] == 1.0, "the token-level surrogate is reverse KL only " \
            "(core_algos.py:1162-1165)"


def actor(a: dict, train_batch_size: int) -> None:
    """ActorConfig.__post_init__ and validate, actor.py:320-364."""
    assert a["strategy"] not in (None, "???"), "actor.strategy is MISSING (actor.py:320)"
    if not a["use_dynamic_bsz"]:
        micro = a.get("ppo_micro_batch_size"), a["ppo_micro_batch_size_per_gpu"]
        assert sum(m is not None for m in micro) == 1, "set exactly one of " \
            "ppo_micro_batch_size(_per_gpu) (actor.py:322-333)"
        assert train_batch_size >= a["ppo_mini_batch_size"], "train_batch_size must be " \
            ">= ppo_mini_batch_size (actor.py:347-351)"
    assert a["loss_agg_mode"] in LOSS_AGG_MODES, "invalid loss_agg_mode (actor.py:335-342)"
    assert a["optim"]["lr_scheduler_type"] in LR_SCHEDULERS, "optimizer.py:105-113"
    assert isinstance(a["optim"]["lr_warmup_steps"], int), "int(lr_warmup_steps) " \
        "(fsdp_workers.py:576-600)"


def validate_config(cfg: dict) -> None:
    """verl/utils/config.py validate_config, lines 87-203 (the parts that apply)."""
    arr = cfg["actor_rollout_ref"]
    n_gpus = cfg["trainer"]["n_gpus_per_node"] * cfg["trainer"]["nnodes"]  # line 87
    a = arr["actor"]
    if not a["use_dynamic_bsz"]:
        assert cfg["data"]["train_batch_size"] * arr["rollout"]["n"] % n_gpus == 0, "89-113"
        for who in ("rollout", "ref"):
            mb = arr[who].get("log_prob_micro_batch_size"), \
                arr[who]["log_prob_micro_batch_size_per_gpu"]
            assert sum(m is not None for m in mb) == 1, f"{who}: set one log-prob micro " \
                "batch (config.py:154-168)"
    assert arr["rollout"]["name"] in ROLLOUT_NAMES, "rollout.name (rollout/base.py:81-97)"
    if arr["rollout"]["name"] == "vllm":
        assert arr["model"]["lora_rank"] <= 512, "config.py:202-203"
    self_distillation(a["self_distillation"])
    actor(a, cfg["data"]["train_batch_size"])


def main_ppo(cfg: dict) -> None:
    """verl/trainer/main_ppo.py:130-142 and the reward-free test at 337-356."""
    a = cfg["actor_rollout_ref"]["actor"]
    sd = a["self_distillation"]
    vopd = a["policy_loss"]["loss_mode"] == "vopd"
    assert vopd, "policy_loss.loss_mode is not vopd: PPO/GRPO on rewards, no distillation"
    uses_ref = a["use_kl_loss"] or cfg["algorithm"]["use_kl_in_reward"]
    assert not (uses_ref and sd["teacher_model_source"] == "legacy"), "main_ppo.py:130-138"
    assert cfg["actor_rollout_ref"]["rollout"].get("mode", "async") != "sync", "rollout.py:225"
    reward_free = sd["teacher_always_on"] and sd["teacher_image_key"] is not None \
        and not sd["fallback_to_policy_loss_on_missing_teacher"]
    assert reward_free, "not reward-free: the reward path calls default_compute_score, which " \
        "has no scorer for our data_source (reward_score/__init__.py:111)"
    tr = cfg["trainer"]
    assert not tr["val_before_train"] and tr["test_freq"] <= 0 and not cfg["data"]["val_files"], \
        "validation would score a data source with no scorer (ray_trainer.py:2300, 2596-2602)"


def workers(cfg: dict) -> None:
    """The per-worker normalisation, fsdp_workers.py:243-265 and 622-625."""
    arr = cfg["actor_rollout_ref"]
    a = arr["actor"]
    world = cfg["trainer"]["n_gpus_per_node"] * cfg["trainer"]["nnodes"]
    sp = a.get("ulysses_sequence_parallel_size", 1)
    mini = a["ppo_mini_batch_size"] * arr["rollout"]["n"] // (world // sp)
    assert mini > 0, "ppo_mini_batch_size * n // world must be > 0 (fsdp_workers.py:244-249)"
    micro = a["ppo_micro_batch_size_per_gpu"]
    if micro is not None:
        assert mini % micro == 0 and mini >= micro, "fsdp_workers.py:257-265"
    r = arr["rollout"]
    tp = r["tensor_model_parallel_size"] * r.get("data_parallel_size", 1) * \
        r.get("pipeline_model_parallel_size", 1)
    assert world % tp == 0, "world size must divide by TP x DP x PP (fsdp_workers.py:622-625)"
    for key in ("lora_rank", "lora_alpha"):  # HFModelConfig: int fields (model.py:86-90)
        assert isinstance(arr["model"][key], int) and not isinstance(arr["model"][key], bool), \
            f"model.{key} must be an int (model.py:86-90)"


def data(cfg: dict, rows: list[dict]) -> None:
    """What the dataset and the teacher builder read: rl_dataset.py:286-344,
    ray_trainer.py:731-759 and 1279-1317."""
    key = cfg["data"]["image_key"]
    tkey = cfg["actor_rollout_ref"]["actor"]["self_distillation"]["teacher_image_key"]
    for i, row in enumerate(rows):
        assert key in row and tkey in row, f"row {i}: KeyError {key}/{tkey} (ray_trainer.py:1280)"
        content = row["prompt"][-1]["content"]
        assert isinstance(content, str), "rl_dataset.py:310-314 splits string content only"
        assert content.count("<image>") == len(row[key]), "rl_dataset.py:342"
        assert len(row[tkey]) == len(row[key]) and row[tkey], \
            "one teacher image per student image (ray_trainer.py:742, 756, 1313-1317)"
        for im in row[key] + row[tkey]:
            assert isinstance(im, dict) and (im.get("path") or im.get("bytes")), \
                "rl_dataset.py:320-332 accepts {'bytes'} or {'path'} dicts"


def check_all(cfg: dict, rows: list[dict]) -> None:
    main_ppo(cfg)
    validate_config(cfg)
    workers(cfg)
    data(cfg, rows)
