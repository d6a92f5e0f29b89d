"""The views of a sample (docs/design/method.md, "Views"): what the student and the teacher see.

A choice of privilege, each view a pure function of (sample, config[, step]):
- student (samples the answers): `boxed` (the authors': the full image with every box
  drawn in red, question + hint, pluralised for several boxes), `plain` (the full image,
  no box, no hint) or `degraded` (the full image degraded, no box, no hint;
  `degrade`, deterministic per sample and step);
- teacher (scores them, privileged): `crop` (the box cropped, optional margin, zoomed x2;
  several boxes: their union), `crops` (one zoomed crop per box, several images in one
  prompt, in the data's order of the boxes), `union` (the boxes' union, zoomed) or
  `clean` (the full image as it is);
- plain: the full image, no box, no hint: the deployment setting evaluation measures.
The teacher's text is the student's (the same question, hint and options). No model is
involved (`save_pair` writes two of them for the engine exports).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mlx_opd.data import Sample, union_box
from mlx_opd.data.images import open_rgb
from mlx_opd.run.config import AUTHORS_HINT, AUTHORS_HINT_PLURAL, DegradeConfig, ViewConfig
from mlx_opd.run.errors import DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class View:
    name: str  # plain | student | teacher
    images: tuple  # PIL images, in prompt order (several only for the `crops` teacher)
    text: str

    @property
    def image(self) -> Image.Image:
        """The view's one image (a `crops` teacher has several: use `images`)."""
        if len(self.images) != 1:
            raise ValueError(f"the {self.name} view has {len(self.images)} images")
        return self.images[0]


def hint_text(sample: Sample, cfg: ViewConfig) -> str | None:
    """The hint appended to both views' text: only with the boxed student (also with
    draw_box off, as before), in the authors' wording, pluralised for several boxes."""
    if cfg.student != "boxed" or not cfg.hint:
        return None
    if cfg.hint == AUTHORS_HINT and len(sample.all_boxes) > 1:
        return AUTHORS_HINT_PLURAL
    return cfg.hint


def question_text(sample: Sample, cfg: ViewConfig, hint: bool) -> str:
    """Question, then (if `hint`) the hint, then lettered options and the instruction."""
    words = hint_text(sample, cfg) if hint else None
    if sample.prompt_complete:
        if not words and cfg.hint:
            return " ".join(sample.question.replace(cfg.hint, "").split(" ")).strip()
        return sample.question
    parts = [sample.question.strip()]
    if words:
        parts.append(words)
    if sample.options:
        parts.append("\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(sample.options)))
        if cfg.answer_instruction:
            parts.append(cfg.answer_instruction)
    return "\n".join(parts)


def draw_box(image: Image.Image, box, cfg: ViewConfig) -> Image.Image:
    """A copy of `image` with `box` (xyxy pixels) outlined; the outline grows outwards
    so it never covers the evidence."""
    out = image.copy()
    d = ImageDraw.Draw(out)
    x1, y1, x2, y2 = box
    w = cfg.box_width
    d.rectangle([x1 - w, y1 - w, x2 + w - 1, y2 + w - 1], outline=tuple(cfg.box_color), width=w)
    return out


MAX_CROP_ASPECT = 50  # well under the processors' limit of 200, after their patch rounding


def _widen(a: int, b: int, need: int, limit: int) -> tuple[int, int]:
    """[a, b) grown about its centre to at least `need` pixels, within [0, limit)."""
    if b - a >= need:
        return a, b
    grow = need - (b - a)
    a, b = a - grow // 2, b + grow - grow // 2
    shift = max(0, -a) - max(0, b - limit)
    return max(0, a + shift), min(limit, b + shift)


def _pad_to_aspect(crop: Image.Image) -> Image.Image:
    """Pad the short side (centred, edge colour) so the aspect ratio is <= MAX_CROP_ASPECT."""
    w, h = crop.size
    tw, th = max(w, math.ceil(h / MAX_CROP_ASPECT)), max(h, math.ceil(w / MAX_CROP_ASPECT))
    if (tw, th) == (w, h):
        return crop
    out = Image.new(crop.mode, (tw, th), crop.getpixel((0, 0)))
    out.paste(crop, ((tw - w) // 2, (th - h) // 2))
    return out


def crop_box(image: Image.Image, box, cfg: ViewConfig) -> Image.Image:
    """Crop `box` plus margin (fraction of the box side), clipped to the image, then zoom;
    scaled up further if needed so the short side is at least `min_crop_side`."""
    x1, y1, x2, y2 = box
    mx_, my_ = cfg.crop_margin * (x2 - x1), cfg.crop_margin * (y2 - y1)
    W, H = image.size
    left, top = max(0, math.floor(x1 - mx_)), max(0, math.floor(y1 - my_))
    right, bottom = min(W, math.ceil(x2 + mx_)), min(H, math.ceil(y2 + my_))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    # Qwen processors refuse aspect ratios >= 200: widen the short side with the image's
    # own context around the box (still evidence-centred), then pad if the image ends
    left, right = _widen(left, right, math.ceil((bottom - top) / MAX_CROP_ASPECT), W)
    top, bottom = _widen(top, bottom, math.ceil((right - left) / MAX_CROP_ASPECT), H)
    crop = _pad_to_aspect(image.crop((left, top, right, bottom)))
    scale = cfg.zoom
    short = min(crop.size) * scale
    if short < cfg.min_crop_side:
        scale *= cfg.min_crop_side / short
    size = (max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale)))
    return crop.resize(size, Image.BICUBIC) if size != crop.size else crop


def _full(sample: Sample) -> Image.Image:
    """The full image without any box drawn (the authors' layout: its clean original)."""
    if sample.boxed_image and sample.clean_image is not None:
        return open_rgb(sample.clean_image, sample.where)
    if sample.boxed_image:
        raise DataError("this row only has the image with the red box drawn (the authors' "
                        "layout), so there is no plain full view (without the box)", sample.where,
                        "use data with clean images (JSONL with image + box), or the "
                        "boxed student and a crop teacher")
    return open_rgb(sample.image, sample.where)


def _need_boxes(sample: Sample, what: str) -> tuple:
    boxes = sample.all_boxes
    if not boxes:
        raise DataError(f"this row has no evidence box, and the {what} needs one", sample.where,
                        "add \"box\" or \"boxes\", or train box-free: --set views.teacher=clean "
                        "--set views.student=degraded (or plain)")
    return boxes


def plain_view(sample: Sample, cfg: ViewConfig = ViewConfig()) -> View:
    return View("plain", (_full(sample),), question_text(sample, cfg, False))


def draw_boxes(image: Image.Image, boxes, cfg: ViewConfig) -> Image.Image:
    out = image
    for b in boxes:
        out = draw_box(out, b, cfg)
    return out


def _seed(sample: Sample, step: int, cfg: DegradeConfig) -> int:
    """A stable seed per (sample, step, seed): the same on every machine and run. A row
    without an id is named by its file's name and line (not the path it was read by)."""
    from pathlib import Path

    name = sample.id if sample.id and sample.id != sample.where else Path(sample.where).name
    key = f"{cfg.seed}|{name}|{step}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def degrade(image: Image.Image, cfg: DegradeConfig, seed: int) -> Image.Image:
    """`image` through cfg.ops in order, each at a strength drawn from its [low, high]
    range by a generator seeded `seed`."""
    rng = np.random.default_rng(seed)
    out = image
    for op in cfg.ops:
        lo, hi = getattr(cfg, op)
        v = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        W, H = out.size
        if op == "lowres":  # the student sees fewer pixels (and tokens) than the teacher
            out = out.resize((max(1, round(W / v)), max(1, round(H / v))), Image.BICUBIC)
        elif op == "downsample":
            small = (max(1, round(W / v)), max(1, round(H / v)))
            out = out.resize(small, Image.BICUBIC).resize((W, H), Image.BICUBIC)
        elif op == "blur":
            out = out.filter(ImageFilter.GaussianBlur(v))
        elif op == "jpeg":
            buf = io.BytesIO()
            out.save(buf, format="JPEG", quality=int(round(v)))
            out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        elif op == "noise":
            a = np.asarray(out, dtype=np.float64)
            a = a + rng.normal(0.0, v * 255.0, a.shape)
            out = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
    return out


def student_view(sample: Sample, cfg: ViewConfig = ViewConfig(), step: int = 0) -> View:
    """The view the student samples from (cfg.student); `step` seeds a degraded view."""
    text = question_text(sample, cfg, True)
    if cfg.student == "plain":
        return View("student", (_full(sample),), text)
    if cfg.student == "degraded":
        return View("student", (degrade(_full(sample), cfg.degrade,
                                        _seed(sample, step, cfg.degrade)),), text)
    image = open_rgb(sample.image, sample.where)
    if cfg.draw_box and not sample.boxed_image:
        image = draw_boxes(image, _need_boxes(sample, "boxed student view"), cfg)
    return View("student", (image,), text)


def teacher_images(sample: Sample, cfg: ViewConfig) -> tuple:
    """The teacher's images (cfg.teacher). A precomputed teacher image wins for `crop`
    and `union`, and for `crops` when the sample has one box."""
    if cfg.teacher == "clean":
        return (_full(sample),)
    several = cfg.teacher == "crops" and len(sample.all_boxes) > 1
    if sample.teacher_image is not None and not several:
        return (open_rgb(sample.teacher_image, sample.where),)
    boxes = _need_boxes(sample, f"{cfg.teacher} teacher view")
    source = _full(sample) if sample.boxed_image else open_rgb(sample.image, sample.where)
    if several:
        return tuple(crop_box(source, b, cfg) for b in boxes)
    return (crop_box(source, union_box(boxes), cfg),)


def teacher_view(sample: Sample, cfg: ViewConfig = ViewConfig()) -> View:
    """Teacher text = student text (docs/design/method.md)."""
    return View("teacher", teacher_images(sample, cfg), question_text(sample, cfg, True))


def has_plain(sample: Sample) -> bool:
    """Whether the sample has a full view without a box drawn."""
    return not sample.boxed_image or sample.clean_image is not None


def needs_plain(sample: Sample, cfg: ViewConfig) -> bool:
    """Whether these views need the sample's full image without a box (several crops
    are cut from it; one crop of the authors' layout is given)."""
    return cfg.student in ("plain", "degraded") or cfg.teacher == "clean" or (
        cfg.teacher == "crops" and len(sample.all_boxes) > 1)


def usable(samples: list[Sample], cfg: ViewConfig, on_bad_sample: str) -> tuple[list, list]:
    """(samples these views can be built from, a message per one skipped). A row of the
    authors' boxed layout without its clean original has no plain, degraded or clean view:
    refused before training starts (on_bad_sample=error) or skipped and counted."""
    kept, skipped = [], []
    for s in samples:
        if has_plain(s) or not needs_plain(s, cfg):
            kept.append(s)
            continue
        e = DataError(f"views (teacher {cfg.teacher}, student {cfg.student}) need the full "
                      "image without the red box, and this row of the authors' layout only "
                      "has the boxed one", s.where, "use rows with `original_images` or "
                      "clean images (JSONL with image + box), or the boxed student with a "
                      "crop teacher")
        if on_bad_sample == "error":
            raise e
        skipped.append(str(e))
    if not kept:
        raise DataError("no sample can be shown with these views", samples[0].where,
                        f"first: {skipped[0]}")
    return kept, skipped


def all_views(sample: Sample, cfg: ViewConfig = ViewConfig()) -> dict[str, View]:
    out = {"student": student_view(sample, cfg), "teacher": teacher_view(sample, cfg)}
    if has_plain(sample):
        out = {"plain": plain_view(sample, cfg)} | out
    return out


def save_pair(sample: Sample, cfg: ViewConfig, out, stem: str, folders: tuple[str, str],
              root: str) -> tuple[View, View, str, list[str]]:
    """The student and teacher views saved as out/FOLDER/STEM.png (the engine exports;
    a teacher of several images as STEM_1.png, STEM_2.png, ... in prompt order); returns
    both views, the student file's path and the teacher files' paths as seen from `root`,
    the folder `out` will be on the machine that trains. The student view is as at step
    0 (a degraded view is one fixed degradation per sample in an export)."""
    from pathlib import Path

    student, teacher = student_view(sample, cfg), teacher_view(sample, cfg)
    for folder in folders:
        (Path(out) / folder).mkdir(exist_ok=True)
    student.image.save(Path(out) / folders[0] / f"{stem}.png")
    names = [f"{stem}.png"] if len(teacher.images) == 1 else \
        [f"{stem}_{j + 1}.png" for j in range(len(teacher.images))]
    for name, im in zip(names, teacher.images):
        im.save(Path(out) / folders[1] / name)
    return (student, teacher, f"{root}/{folders[0]}/{stem}.png",
            [f"{root}/{folders[1]}/{name}" for name in names])
