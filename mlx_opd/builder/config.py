"""BuildConfig: the single source of `mlx-opd build-data`'s defaults (docs/build-data.md).

The thresholds are the ZwZ pipeline's where it has one (inclusionAI/Zooming-without-Zooming
data_synthesis/ @fdc0ba1): regions with area ratio >= 0.10 are dropped
(create_questions.py:66-90), the crop is answered 8 times at temperature 0.7 and kept at
>= 0.75 agreement (create_answers.py:287-320, 573-616), 3 distractors
(create_answers.py:185-280). Gap mining is ours: no public pipeline mines for the model
to be trained.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, fields

from mlx_opd.run.config import ViewConfig, choose

DETECTORS = ("model", "sam3", "boxes")  # who draws the boxes: the VLM, SAM3, the user's file
QUESTION_STYLES = ("colour", "text", "count", "material", "shape", "state")


@dataclass(frozen=True)
class RegionConfig:
    max_area_ratio: float = 0.10   # ZwZ drops box area / image area >= 0.10 (1: no filter)
    min_side: int = 12             # px of the original image: smaller boxes hold no detail
    dedup_iou: float = 0.5         # a box overlapping an earlier one this much is a duplicate
    max_per_image: int = 6         # regions kept per image, in the model's order
    min_image_side: int = 32       # px: smaller images are skipped and counted
    unique_labels: bool = True     # drop every region whose label occurs twice (ambiguous)


@dataclass(frozen=True)
class QuestionConfig:
    styles: tuple[str, ...] = QUESTION_STYLES
    # A template instead of the model's questions: "{label}" is the region's label, and
    # `options` are the choices (the answer is then the crop consensus, label-free).
    template: str | None = None
    options: tuple[str, ...] = ()
    distractors: int = 3
    validate: bool = True          # the model checks each question on crop and full image


@dataclass(frozen=True)
class ConsensusConfig:
    k: int = 8
    temperature: float = 0.7
    min_agreement: float = 0.75


@dataclass(frozen=True)
class MiningConfig:
    m: int = 16                    # full-image samples per item (8 left sampling noise at
                                   # the threshold: benchmarks/gap_mining.py, docs/build-data.md)
    temperature: float = 0.7
    max_full_acc: float = 0.5      # keep items whose full-image accuracy is below this
    enabled: bool = True


@dataclass(frozen=True)
class BuildConfig:
    images: str = ""
    model: str = ""
    out: str = ""
    mine_with: str | None = None   # the model to be trained (default: `model`)
    adapter: str | None = None     # an adapter on `mine_with`
    limit: int | None = None       # images read (sorted by name), None: all
    boxes: str | None = None       # COCO JSON of the user's own boxes
    detector: str = "model"
    detector_model: str | None = None
    regions: RegionConfig = field(default_factory=RegionConfig)
    questions: QuestionConfig = field(default_factory=QuestionConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    # the views the items are asked under: consensus on the teacher's (the crop), mining on
    # the plain full image; the training run's views should match (default: the authors')
    views: ViewConfig = field(default_factory=ViewConfig)
    heldout_share: float = 0.1     # of kept items, whole images at a time
    max_pixels: int | None = None  # the processor's bound on the full image
    batch: int = 8                 # prompts decoded together
    seed: int = 0
    list_tokens: int = 384         # the region listing's answer budget
    question_tokens: int = 160
    answer_tokens: int = 8

    def __post_init__(self):
        choose("detector", self.detector, DETECTORS)
        if self.detector == "sam3" and not self.detector_model:
            raise ValueError("--detector sam3 needs --detector-model PATH (an mlx-vlm SAM3 "
                             "checkpoint folder, e.g. from mlx-community/sam3)")
        if self.detector == "boxes" and not self.boxes:
            raise ValueError("--detector boxes needs --boxes FILE (COCO JSON)")
        for s in self.questions.styles:
            choose("questions.styles", s, QUESTION_STYLES)
        if self.questions.template is not None:
            if "{label}" not in self.questions.template and "?" not in self.questions.template:
                raise ValueError("--question must be a question (it may use {label})")
            try:
                fields_ = [(f, spec or "", conv or "") for _, f, spec, conv in
                           string.Formatter().parse(self.questions.template) if f is not None]
            except ValueError as e:
                fields_ = [(str(e), "", "")]
            if any(f != ("label", "", "") for f in fields_):
                raise ValueError(f"--question {self.questions.template!r}: only {{label}} may "
                                 "appear in braces; write a literal brace as {{ or }}")
            if len(self.questions.options) > 10:
                raise ValueError(f"--options: at most 10 choices (A-J), got "
                                 f"{len(self.questions.options)}")
            if len(self.questions.options) < 2:
                raise ValueError("a template question needs --options with at least 2 "
                                 "choices, e.g. --options red,green,blue,yellow")
        for name, v in (("consensus.min_agreement", self.consensus.min_agreement),
                        ("mining.max_full_acc", self.mining.max_full_acc),
                        ("heldout_share", self.heldout_share),
                        ("regions.max_area_ratio", self.regions.max_area_ratio)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.consensus.k < 1 or self.mining.m < 1 or self.batch < 1:
            raise ValueError("consensus.k, mining.m and batch must be >= 1")

    @property
    def miner(self) -> str:
        return self.mine_with or self.model

    def fingerprint(self) -> dict:
        """What must match for a build to resume (everything but the output folder, the
        image limit and the batch size, which do not change any item's result)."""
        d = to_dict(self)
        for k in ("out", "limit", "batch"):
            d.pop(k)
        return d


def to_dict(cfg) -> dict:
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v) if hasattr(v, "__dataclass_fields__") else (
            list(v) if isinstance(v, tuple) else v)
    return out


# the flat settings (build-data's options) each nested section reads: flat name -> field
_SECTIONS = {
    "regions": (RegionConfig, {"max_area_ratio": "max_area_ratio", "min_side": "min_side"}),
    "questions": (QuestionConfig, {"template": "template", "options": "options",
                                   "styles": "styles", "validate": "validate"}),
    "consensus": (ConsensusConfig, {"k": "k"}),
    "mining": (MiningConfig, {"m": "m", "max_full_acc": "max_full_acc",
                              "mining": "enabled"}),
}


def from_flat(settings: dict, views: ViewConfig | None = None) -> BuildConfig:
    """A BuildConfig from flat settings (build-data's options, by field name); a None
    leaves the dataclass default. Nested sections take the names in _SECTIONS."""
    given = {k: v for k, v in settings.items() if v is not None}
    nested = {name: cls(**{f: given.pop(flat) for flat, f in names.items() if flat in given})
              for name, (cls, names) in _SECTIONS.items()}
    top = {f.name for f in fields(BuildConfig)}
    unknown = sorted(set(given) - top)
    if unknown:
        raise ValueError(f"build-data: unknown settings {', '.join(unknown)}")
    return BuildConfig(**given, **nested, **({"views": views} if views is not None else {}))
