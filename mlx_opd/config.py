"""Typed configs: the single source of defaults.

Every default that a user can change lives in exactly one dataclass field here; CLI
options and (later) YAML keys map 1:1 to these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# The hint the authors append to the student's question (method.md, "Views").
AUTHORS_HINT = ("Only focus on the objects inside the red bounding box in the image to "
                "answer this question.")
# The benchmark-style answer instruction (method.md, "Evaluation protocol").
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


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

    def processor_kwargs(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class ViewConfig:
    """How the student, plain and teacher views are built from a sample."""

    draw_box: bool = True                 # student view: draw the evidence box
    box_color: tuple[int, int, int] = (255, 0, 0)
    box_width: int = 3                    # pixels; unknown in the paper, an option
    hint: str | None = AUTHORS_HINT       # appended to the student (and teacher) text
    crop_margin: float = 0.0              # teacher crop margin, fraction of box side
    zoom: float = 2.0                     # teacher crop resize factor (authors: x2)
    min_crop_side: int = 28               # pixels after zoom, so tiny boxes stay valid
    answer_instruction: str | None = ANSWER_INSTRUCTION  # appended after the options

    def __post_init__(self):
        if self.box_width < 1:
            raise ValueError(f"box_width must be >= 1, got {self.box_width}")
        if self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {self.crop_margin}")
        if self.zoom <= 0:
            raise ValueError(f"zoom must be > 0, got {self.zoom}")
        if self.min_crop_side < 1:
            raise ValueError(f"min_crop_side must be >= 1, got {self.min_crop_side}")


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
        if self.on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {self.on_bad_sample!r}")
        if self.format not in ("auto", "jsonl", "vision_opd", "parquet"):
            raise ValueError(f"format must be auto, jsonl, vision_opd or parquet, got {self.format!r}")
