"""The three views of a sample (method.md, "Views").

- student: the full image with the evidence box drawn in red, question + the authors'
  hint (+ options and answer instruction). The student samples answers from this view.
- teacher: the box cropped (optional margin) and zoomed x2, same text as the student.
- plain: the full image, no box, no hint: the deployment setting evaluation measures.
Pure functions of (sample, image, config); no model involved (`save_pair` writes two
of them for the engine exports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .config import ViewConfig
from .data import Sample
from .errors import DataError
from .images import open_rgb

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class View:
    name: str  # plain | student | teacher
    image: Image.Image
    text: str


def question_text(sample: Sample, cfg: ViewConfig, hint: bool) -> str:
    """Question, then (if `hint`) the hint, then lettered options and the instruction."""
    if sample.prompt_complete:
        if not hint and cfg.hint:
            return " ".join(sample.question.replace(cfg.hint, "").split(" ")).strip()
        return sample.question
    parts = [sample.question.strip()]
    if hint and cfg.hint:
        parts.append(cfg.hint)
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


def plain_view(sample: Sample, cfg: ViewConfig = ViewConfig()) -> View:
    if sample.boxed_image and sample.clean_image is not None:
        return View("plain", open_rgb(sample.clean_image, sample.where),
                    question_text(sample, cfg, False))
    if sample.boxed_image:
        raise DataError("this row only has the image with the red box drawn (the authors' "
                        "layout), so there is no plain full view", sample.where,
                        "evaluate on data with clean images (JSONL with image + box)")
    return View("plain", open_rgb(sample.image, sample.where), question_text(sample, cfg, False))


def student_view(sample: Sample, cfg: ViewConfig = ViewConfig()) -> View:
    image = open_rgb(sample.image, sample.where)
    if cfg.draw_box and not sample.boxed_image:
        image = draw_box(image, sample.box, cfg)
    return View("student", image, question_text(sample, cfg, True))


def teacher_view(sample: Sample, cfg: ViewConfig = ViewConfig()) -> View:
    """Teacher text = student text (method.md). A precomputed teacher image wins."""
    if sample.teacher_image is not None:
        image = open_rgb(sample.teacher_image, sample.where)
    else:
        image = crop_box(open_rgb(sample.image, sample.where), sample.box, cfg)
    return View("teacher", image, question_text(sample, cfg, True))


def all_views(sample: Sample, cfg: ViewConfig = ViewConfig()) -> dict[str, View]:
    out = {"student": student_view(sample, cfg), "teacher": teacher_view(sample, cfg)}
    if not sample.boxed_image or sample.clean_image is not None:
        out = {"plain": plain_view(sample, cfg)} | out
    return out


def save_pair(sample: Sample, cfg: ViewConfig, out, stem: str, folders: tuple[str, str],
              root: str) -> tuple[View, View, str, str]:
    """The student and teacher views saved as out/FOLDER/STEM.png (the engine exports);
    returns both views and the two files' paths as seen from `root`, the folder `out`
    will be on the machine that trains."""
    from pathlib import Path

    views = student_view(sample, cfg), teacher_view(sample, cfg)
    for folder, view in zip(folders, views):
        (Path(out) / folder).mkdir(exist_ok=True)
        view.image.save(Path(out) / folder / f"{stem}.png")
    return (*views, *(f"{root}/{folder}/{stem}.png" for folder in folders))
