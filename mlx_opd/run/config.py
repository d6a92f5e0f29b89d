"""Typed configs: the single source of defaults.

Every default that a user can change lives in exactly one dataclass field here; CLI
options and (later) YAML keys map 1:1 to these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlx_opd.run.view_config import (  # noqa: F401  (moved to view_config.py)
    ANSWER_INSTRUCTION,
    AUTHORS_HINT,
    AUTHORS_HINT_PLURAL,
    STUDENT_VIEWS,
    TEACHER_VIEWS,
    DegradeConfig,
    PixelConfig,
    ViewConfig,
    choose,
)

# The valid values of enumerated fields (loss.py and metal/kernels.py use the same tuples).
LOSS_KINDS = ("forward_kl", "reverse_kl", "jsd")
ESTIMATORS = ("full", "topk", "sampled")
LOSS_BACKENDS = ("auto", "metal", "cuda", "mlx")
STEP_REDUCTIONS = ("token_mean", "sequence_mean")  # per step; loss.py adds "none"
TEACHER_MODES = ("ema", "frozen", "live")


BAD_SAMPLE_RULES = ("error", "skip")  # a bad row stops the read, or is skipped and counted


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from and how they are read."""

    path: str = ""
    format: str = "auto"          # auto | jsonl | vision_opd | parquet
    box_format: str = "xyxy"      # default for rows that do not declare one
    on_bad_sample: str = "error"  # error | skip
    limit: int | None = None
    # Column mapping for parquet / datasets folders: our field -> their column.
    columns: dict = field(default_factory=dict)

    def __post_init__(self):
        choose("data.on_bad_sample", self.on_bad_sample, BAD_SAMPLE_RULES)
        choose("data.format", self.format, ("auto", "jsonl", "vision_opd", "parquet"))


# --- synthetic data (`mlx-opd synth`, the demo) ---------------------------------------

COLOURS = {"green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (150, 60, 190), "orange": (245, 140, 30), "cyan": (40, 200, 210)}


@dataclass(frozen=True)
class EvalConfig:
    """`mlx-opd eval --data`: greedy answers under each view (the paper's benchmarks set
    their own cap: evaluation/benchmarks/item.Benchmark.max_tokens)."""

    max_tokens: int = 8           # a letter, perhaps a full stop, then the stop token


@dataclass(frozen=True)
class CompareConfig:
    """`mlx-opd compare` and `studio`: one photo's greedy answers under each view."""

    max_tokens: int = 32          # a short phrase, not only a letter: people read these
    host: str = "127.0.0.1"       # studio: loopback only unless asked
    port: int = 7860


@dataclass(frozen=True)
class SheetConfig:
    """`mlx-opd views`: PNGs of each view for the first `limit` samples."""

    limit: int = 8


@dataclass(frozen=True)
class ExportConfig:
    """`mlx-opd export`: base + adapter as a Hugging Face checkpoint, PEFT or MLX folder."""

    format: str = "hf"            # hf | peft | mlx
    dtype: str = "bf16"           # hf: the weights' dtype (the real models ship bf16)
    max_shard_gb: float = 5.0     # hf: safetensors shard size, as transformers writes them


@dataclass(frozen=True)
class SynthConfig:
    image_size: tuple[int, int] = (320, 240)
    evidence_size: int = 12        # side of the evidence shape, pixels
    clutter: int = 25              # grey shapes
    distractors: int = 0           # coloured shapes of OTHER shapes than the evidence's
    n_options: int = 4
    fixed_options: bool = False    # options always in the same order (easier for tiny models)
    objects: int = 1               # 2: two small evidence objects far apart, and a question
                                   # about both (yes / no; pair_question)
    pair_question: str = "same_colour"  # same_colour: are they the same colour? | both:
                                   # are they both <the palette's first colour>?

    def __post_init__(self):
        w, h = self.image_size
        if self.objects not in (1, 2):
            raise ValueError(f"objects must be 1 or 2, got {self.objects}")
        choose("synth.pair_question", self.pair_question, ("same_colour", "both"))
        if self.objects == 2 and self.evidence_size > max(w - w // 2, h - h // 2) - 4:
            raise ValueError(f"objects=2 places two objects half the image apart: evidence_size "
                             f"must be at most {max(w - w // 2, h - h // 2) - 4} for {w}x{h}")
        if self.evidence_size < 2 or self.evidence_size > min(w, h) // 2:
            raise ValueError(f"evidence_size must be in [2, {min(w, h) // 2}], got {self.evidence_size}")
        if not 2 <= self.n_options <= len(COLOURS):
            raise ValueError(f"n_options must be in [2, {len(COLOURS)}]")


# --- training -------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    path: str = ""                # hub id (e.g. mlx-community/Qwen2.5-VL-3B-Instruct-4bit) or folder
    adapter: str | None = None    # start from an existing adapter folder (optional)
    # The base a run trains: a hub id's resolved commit, or a fingerprint of a local folder
    # (models.base_identity). `train` records it in RUN_DIR/config.yaml; a resume loads
    # that commit and refuses a local base that changed.
    revision: str | None = None


@dataclass(frozen=True)
class RolloutConfig:
    n: int = 8                    # samples per prompt (authors: 8)
    temperature: float = 1.0      # authors: 1.0 for rollouts, and the same T in the loss
    max_tokens: int = 256         # authors: 1024 (512 scored lower); 256 keeps a Mac step short
    block_pad_tokens: bool = True  # image/video pad ids can never be sampled
    max_prompt_tokens: int = 8192  # authors: 8192; a longer prompt stops with advice (a
                                   # 16k-token photo x n rows would exhaust memory)
    prompt_batch: int = 0          # at most this many prompts' rows (x n) decode at once;
                                   # the others wait and enter as rows finish; 0: all of a
                                   # step's prompts. Lower it to save KV-cache memory; the
                                   # samples are the same either way (per-row keys)

    def __post_init__(self):
        if self.n < 1 or self.max_tokens < 1 or self.temperature <= 0:
            raise ValueError("rollout.n and rollout.max_tokens must be >= 1, temperature > 0")
        if self.max_prompt_tokens < 1:
            raise ValueError("rollout.max_prompt_tokens must be >= 1")
        if self.prompt_batch < 0:
            raise ValueError("rollout.prompt_batch must be >= 0 (0: all of a step's prompts)")


@dataclass(frozen=True)
class LossConfig:
    kind: str = "jsd"             # forward_kl | reverse_kl | jsd (authors: JSD)
    beta: float = 0.5             # authors: 0.5
    estimator: str = "topk"       # full | topk | sampled (authors: top-100 with tail)
    k: int = 100
    tail: bool = True
    exact_tail: bool = False      # False: the authors' tail floor (~1e-7, as their code);
                                  # True: the exact tail down to 1e-38 (see loss.py)
    reduction: str = "token_mean"  # token_mean (recipe) | sequence_mean (paper's Algorithm 1)
    backend: str = "auto"         # auto | metal | cuda | mlx
    chunk_size: int = 128         # rows of [chunk, vocab] logits alive at once

    def __post_init__(self):
        choose("loss.kind", self.kind, LOSS_KINDS)
        choose("loss.estimator", self.estimator, ESTIMATORS)
        choose("loss.reduction", self.reduction, STEP_REDUCTIONS)
        choose("loss.backend", self.backend, LOSS_BACKENDS)
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"loss.beta must be in [0, 1], got {self.beta}")
        if self.k < 1 or self.chunk_size < 1:
            raise ValueError("loss.k and loss.chunk_size must be >= 1")


@dataclass(frozen=True)
class TeacherConfig:
    mode: str = "ema"             # ema (authors) | frozen | live (collapses, per the authors)
    ema_rate: float = 0.05        # teacher <- (1 - r) teacher + r student; the recipe's rate,
                                  # per optim.reference_prompts_per_step prompts (teacher.py)

    def __post_init__(self):
        choose("teacher.mode", self.mode, TEACHER_MODES)
        if not 0.0 < self.ema_rate <= 1.0:
            raise ValueError(f"teacher.ema_rate must be in (0, 1], got {self.ema_rate}")


@dataclass(frozen=True)
class LoraConfig:
    # LoRA on every linear layer of the language model (not the LM head). Rank 16 with
    # alpha 32 (update scale alpha / rank = 2, PEFT's convention) gives a small model
    # enough capacity for a skill that is about attention to a region, and keeps the
    # adapter, its EMA copy and the AdamW moments to a few MB on a 3B model.
    finetune: str = "lora"        # lora (QLoRA when the base is quantized) | full
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    train_vision: bool = False    # vision tower frozen by default (authors' focus is the LM)

    def __post_init__(self):
        choose("lora.finetune", self.finetune, ("lora", "full"))
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")


@dataclass(frozen=True)
class OptimConfig:
    # The authors' full fine-tune used AdamW lr 2e-6; LoRA updates a low-rank delta from
    # zero and needs a larger step: 1e-5 with 10 warm-up steps, then constant (as the recipe).
    lr: float = 1e-5
    warmup_steps: float = 10      # linear warm-up, in steps of reference_prompts_per_step
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    prompts_per_step: int = 4     # authors: 96 prompts x 8 samples; raise it (gradients are
                                  # accumulated prompt by prompt) to reach their batch
    epochs: float = 1.0           # authors: 1 epoch (longer drifted off the answer format)
    # The recipe's step is 96 prompts: warmup_steps and teacher.ema_rate count steps of this
    # many prompts, so any prompts_per_step follows the recipe per prompt seen (10 warm-up
    # steps = 960 prompts = 240 steps of 4). Set it to prompts_per_step for per-step units.
    reference_prompts_per_step: int = 96
    max_steps: int | None = None  # stop earlier than the epochs say

    def __post_init__(self):
        if self.lr <= 0 or self.prompts_per_step < 1 or self.epochs <= 0:
            raise ValueError("optim.lr, optim.prompts_per_step and optim.epochs must be positive")
        if self.grad_clip <= 0:
            raise ValueError(f"optim.grad_clip must be > 0, got {self.grad_clip}")
        if self.reference_prompts_per_step < 1:
            raise ValueError("optim.reference_prompts_per_step must be >= 1")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("optim.warmup_steps and optim.weight_decay must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"optim.max_steps must be >= 1 (or null), got {self.max_steps}")


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/opd"         # RUN_DIR
    seed: int = 0
    save_every: int = 10          # checkpoint every N optimizer steps (and on Ctrl-C, at the end)
    keep_last: int = 3            # checkpoints kept
    max_nonfinite: int = 5        # consecutive non-finite steps before the run stops
    distributed: bool = False     # require an mlx.launch group (else: used when launched)
    step_timeout_s: float = 1800.0  # distributed: a rank with no progress this long stops
    report_to: str = "none"       # none | tensorboard | wandb (as mlx-lm's --report-to):
                                  # every metric through the library's own writer

    def __post_init__(self):
        if self.save_every < 1 or self.keep_last < 1 or self.max_nonfinite < 0:
            raise ValueError("run.save_every and run.keep_last must be >= 1, "
                             "run.max_nonfinite >= 0")
        if self.step_timeout_s <= 0:
            raise ValueError(f"run.step_timeout_s must be > 0, got {self.step_timeout_s}")
        choose("run.report_to", self.report_to, REPORT_TO)


@dataclass(frozen=True)
class MemoryConfig:
    wired_limit_gb: float | None = None  # mx.set_wired_limit (Metal), keeps weights resident
    cache_limit_gb: float | None = None  # mx.set_cache_limit: cap MLX's buffer cache
    grad_checkpoint: bool = False        # recompute decoder layers in the backward pass


@dataclass(frozen=True)
class ScoreConfig:
    # true: each prompt runs once and its n responses continue from it (prefix.py);
    # false: the reference path, the prompt repeated in every row (same values)
    shared_prefix: bool = True


VAL_CRITERIA = ("auto", "plain_acc", "student_acc", "divergence")
REPORT_TO = ("none", "tensorboard", "wandb")


@dataclass(frozen=True)
class ValidationConfig:
    """Held-out validation during training (validation.py) and the guards that stop a run
    drifting off (the public Qwen3.5-4B reproduction left the answer format after ~110
    steps and collapsed after ~190; its best checkpoint, step 65, only tied the base)."""

    path: str | None = None       # a held-out file/folder, or:
    fraction: float = 0.0         # carve this share of the training data (fixed seed; never trained on)
    every: int = 0                # evaluate every N steps and at the end (0: only with path/fraction, at the end)
    limit: int | None = 64        # at most this many validation samples
    max_tokens: int = 16          # greedy answer length
    batch: int = 8                # prompts decoded together
    criterion: str = "auto"       # best adapter by: plain_acc | student_acc | divergence (lower
                                  # is better); auto: plain_acc with labels and a plain view,
                                  # student_acc with labels only, divergence without labels
    min_format: float = 0.0       # stop when the share of readable answers falls below this
    patience: int = 0             # stop after this many evaluations in a row worse than the
    margin: float = 0.05          # best by more than `margin` (0: never)
    max_teacher_drop: float | None = None  # a step whose answers on the teacher view (the
                                  # crop) fall below their step-0 accuracy by more than this
                                  # closed the gap by forgetting: never the best; `patience`
                                  # such steps in a row stop the run (0: only skipped). None: off

    def __post_init__(self):
        choose("validation.criterion", self.criterion, VAL_CRITERIA)
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"validation.fraction must be in [0, 1), got {self.fraction}")
        if self.every < 0 or self.patience < 0 or self.margin < 0:
            raise ValueError("validation.every, validation.patience and validation.margin "
                             "must be >= 0")
        if not 0.0 <= self.min_format <= 1.0:
            raise ValueError(f"validation.min_format must be in [0, 1], got {self.min_format}")
        if self.max_teacher_drop is not None and not 0.0 <= self.max_teacher_drop <= 1.0:
            raise ValueError("validation.max_teacher_drop must be in [0, 1] (or null: off), "
                             f"got {self.max_teacher_drop}")
        if self.max_tokens < 1 or self.batch < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("validation.max_tokens, validation.batch and validation.limit "
                             "must be >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.path) or self.fraction > 0


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    pixels: PixelConfig = field(default_factory=PixelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


# reading a config lives in config_load.py (it imports the dataclasses above)
from mlx_opd.run.config_load import (  # noqa: E402, F401
    _TYPE_WORDS,
    ALIASES,
    MODEL_KEYS,
    PATH_KEYS,
    ConfigError,
    _check_type,
    _get,
    _nearest,
    apply_overrides,
    build,
    load_train_config,
    resolve_path_value,
    resolve_paths,
    to_dict,
)
