"""What each side sees, as configs: the image's pixel bounds per view (PixelConfig), the
student's degradations (DegradeConfig), the views and the authors' texts (ViewConfig,
AUTHORS_HINT, ANSWER_INSTRUCTION), and the one-line check of a choice (choose)."""

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
