"""Typed configs: the single source of defaults.

Every default that a user can change lives in exactly one dataclass field here; CLI
options and (later) YAML keys map 1:1 to these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# The hint the authors append to the student's question (docs/design/method.md, "Views").
AUTHORS_HINT = ("Only focus on the objects inside the red bounding box in the image to "
                "answer this question.")
# The same hint for a student view with several boxes drawn (ours: the authors' data has one).
AUTHORS_HINT_PLURAL = ("Only focus on the objects inside the red bounding boxes in the image "
                       "to answer this question.")
# The benchmark-style answer instruction (docs/design/method.md, "Evaluation protocol").
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


# The valid values of enumerated fields (loss.py and metal/kernels.py use the same tuples).
LOSS_KINDS = ("forward_kl", "reverse_kl", "jsd")
ESTIMATORS = ("full", "topk", "sampled")
LOSS_BACKENDS = ("auto", "metal", "cuda", "mlx")
STEP_REDUCTIONS = ("token_mean", "sequence_mean")  # per step; loss.py adds "none"
TEACHER_MODES = ("ema", "frozen", "live")
# The privileged (teacher) and deployment-like (student) views (views.py): what each sees.
TEACHER_VIEWS = ("crop", "crops", "union", "clean")
STUDENT_VIEWS = ("boxed", "plain", "degraded")
DEGRADATIONS = ("downsample", "blur", "jpeg", "noise", "lowres")
DEFAULT_DEGRADATIONS = DEGRADATIONS[:4]


def choose(key: str, value, valid: tuple) -> None:
    """Raise a ValueError naming the valid values (nearest first) unless value is one."""
    if value in valid:
        return
    import difflib

    near = difflib.get_close_matches(str(value).replace("-", "_"), valid, n=1, cutoff=0.0)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"{key} must be one of {', '.join(valid)}, got {value!r}{hint}")


@dataclass(frozen=True)
class PixelConfig:
    """Image resolution handed to the processor. Either bounds on the pixel count
    (the processor keeps the aspect ratio) or an explicit size; None = checkpoint default."""

    min_pixels: int | None = None
    max_pixels: int | None = None
    resized_height: int | None = None
    resized_width: int | None = None

    def __post_init__(self):
        if (self.resized_height is None) != (self.resized_width is None):
            raise ValueError("resized_height and resized_width must be given together")
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and v <= 0:
                raise ValueError(f"{f.name} must be positive, got {v}")

    def for_crop(self) -> "PixelConfig":
        """The teacher's crop keeps its own shape: an explicit size is for full images
        (it would squeeze every crop to the full image's size); pixel bounds still apply."""
        return PixelConfig(self.min_pixels, self.max_pixels)

    def for_view(self, view: str) -> "PixelConfig":
        """The settings for the view named `view` (plain, student, teacher)."""
        return self.for_crop() if view == "teacher" else self

    def processor_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class DegradeConfig:
    """The student's `degraded` view: the named degradations, applied in this order, each
    with its strength drawn uniformly from [low, high] by a generator seeded from the
    sample's id, the step and `seed` (the same sample and step always look the same; eval
    and exports use step 0). Defaults are our choice of a strong degradation: S2VOPD's own
    list could not be read (docs/views.md)."""

    ops: tuple[str, ...] = DEFAULT_DEGRADATIONS
    downsample: tuple[float, float] = (3.0, 5.0)   # factor: shrink, then back up (bicubic)
    lowres: tuple[float, float] = (2.0, 3.0)       # factor: shrink and keep (fewer tokens)
    blur: tuple[float, float] = (1.0, 2.5)         # Gaussian radius, pixels (of the image
                                                   # as the ops before left it)
    jpeg: tuple[float, float] = (10.0, 30.0)       # JPEG quality (lower = stronger)
    noise: tuple[float, float] = (0.02, 0.08)      # Gaussian noise sd, fraction of 255
    seed: int = 0

    def __post_init__(self):
        for op in self.ops:
            choose("views.degrade.ops", op, DEGRADATIONS)
        for name in DEGRADATIONS:
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"views.degrade.{name} must be [low, high] with low <= high, "
                                 f"got {[lo, hi]}")
        if self.downsample[0] < 1 or self.lowres[0] < 1 or self.blur[0] < 0 or self.noise[0] < 0:
            raise ValueError("views.degrade: downsample, lowres >= 1; blur, noise >= 0")
        if not (1 <= self.jpeg[0] and self.jpeg[1] <= 95):
            raise ValueError(f"views.degrade.jpeg quality must lie in [1, 95], got "
                             f"{list(self.jpeg)}")


@dataclass(frozen=True)
class ViewConfig:
    """How the student, plain and teacher views are built from a sample. `teacher`: the
    privilege (crop: the box zoomed, several boxes' union; crops: one zoomed crop per box,
    in the data's order; union: the boxes' union zoomed; clean: the full image as it is).
    `student`: boxed (the full image with the boxes drawn when draw_box), plain (no box,
    no hint), degraded (the full image degraded, see DegradeConfig; no box, no hint)."""

    teacher: str = "crop"
    student: str = "boxed"
    degrade: DegradeConfig = field(default_factory=DegradeConfig)

    draw_box: bool = True                 # student view: draw the evidence box
    box_color: tuple[int, int, int] = (255, 0, 0)
    box_width: int = 3                    # pixels; unknown in the paper, an option
    hint: str | None = AUTHORS_HINT       # appended to the student (and teacher) text
    crop_margin: float = 0.0              # teacher crop margin, fraction of box side
    zoom: float = 2.0                     # teacher crop resize factor (authors: x2)
    min_crop_side: int = 28               # pixels after zoom, so tiny boxes stay valid
    answer_instruction: str | None = ANSWER_INSTRUCTION  # appended after the options

    def __post_init__(self):
        choose("views.teacher", self.teacher, TEACHER_VIEWS)
        choose("views.student", self.student, STUDENT_VIEWS)
        if self.box_width < 1:
            raise ValueError(f"box_width must be >= 1, got {self.box_width}")
        if self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {self.crop_margin}")
        if self.zoom <= 0:
            raise ValueError(f"zoom must be > 0, got {self.zoom}")
        if self.min_crop_side < 1:
            raise ValueError(f"min_crop_side must be >= 1, got {self.min_crop_side}")

    def needs_boxes(self) -> bool:
        """Whether a sample needs evidence boxes for these views (box-free: a clean
        teacher and a plain or degraded student)."""
        return self.teacher != "clean" or (self.student == "boxed" and self.draw_box)


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
        choose("data.on_bad_sample", self.on_bad_sample, ("error", "skip"))
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
