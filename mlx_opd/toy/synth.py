"""Synthetic fine-detail VQA: cluttered scenes with one small evidence object and its box
(or two, far apart, and a question comparing them: `objects=2`).

    mlx-opd synth --out data/synth --n 400 --seed 0 --evidence-size 10 --clutter 30

Each scene: a textured grey background, `clutter` grey shapes of random size, optional
coloured distractors of other shapes, and ONE small coloured evidence shape. The question
names the evidence's shape ("the small circle"), the options are colours, and the answer
is unambiguous inside the box (the box holds one coloured shape) and still present in the
full image (nothing covers the evidence). Difficulty: a smaller evidence object relative
to the image, more clutter and coloured distractors make the full view harder; the crop
stays easy. Deterministic for a seed; the held-out split uses a disjoint seed stream.

With objects=2 the scene holds two small evidence shapes of different kinds, at least half
the image's width or height apart (their union crop is most of the image), and asks
whether they have the same colour, or (pair_question=both) whether both have the
palette's first colour (options yes / no, each half the time); the row carries both
boxes (`boxes`), in the order the question names them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from mlx_opd.run.config import COLOURS, SynthConfig

SHAPES = ("circle", "square", "triangle")
HELDOUT_SEED_OFFSET = 1_000_003  # held-out scenes come from a disjoint seed stream


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    box: tuple[int, int, int, int]  # xyxy pixels (two objects: the first one's)
    question: str
    options: tuple[str, ...]
    answer: str                     # option letter
    colour: str
    boxes: tuple = ()               # two objects: both boxes, in the question's order


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, xyxy, fill) -> None:
    x1, y1, x2, y2 = xyxy
    if shape == "circle":
        d.ellipse(xyxy, fill=fill)
    elif shape == "square":
        d.rectangle(xyxy, fill=fill)
    else:
        d.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)


def _overlaps(a, b, pad=2) -> bool:
    return not (a[2] + pad <= b[0] or b[2] + pad <= a[0] or a[3] + pad <= b[1] or b[3] + pad <= a[1])


def _background(rng: random.Random, W: int, H: int) -> Image.Image:
    img = Image.new("RGB", (W, H), (200, 200, 200))
    d = ImageDraw.Draw(img)
    for _ in range(W * H // 400):  # texture: faint grey speckles
        x, y = rng.randrange(W), rng.randrange(H)
        g = rng.randint(185, 215)
        d.point((x, y), fill=(g, g, g))
    return img


def make_pair_scene(seed: int, cfg: SynthConfig) -> Scene:
    """Two small evidence shapes far apart; are they the same colour?"""
    rng = random.Random(seed)
    W, H = cfg.image_size
    img = _background(rng, W, H)
    d = ImageDraw.Draw(img)
    s = cfg.evidence_size
    while True:  # far apart: at least half the width or half the height between them
        a = (rng.randint(2, W - s - 2), rng.randint(2, H - s - 2))
        b = (rng.randint(2, W - s - 2), rng.randint(2, H - s - 2))
        if abs(a[0] - b[0]) >= W // 2 or abs(a[1] - b[1]) >= H // 2:
            break
    boxes = tuple((x, y, x + s, y + s) for x, y in (a, b))
    for _ in range(cfg.clutter):
        side = rng.randint(8, 40)
        for _ in range(20):  # grey clutter never covers the evidence
            cx, cy = rng.randint(0, W - side), rng.randint(0, H - side)
            cand = (cx, cy, cx + side, cy + side)
            if not any(_overlaps(cand, bx) for bx in boxes):
                g = rng.randint(70, 160)
                _draw_shape(d, rng.choice(SHAPES), cand, (g, g, g))
                break
    names = sorted(COLOURS)[: cfg.n_options] if cfg.fixed_options else sorted(COLOURS)
    shapes = rng.sample(SHAPES, 2)
    yes = rng.random() < 0.5
    if cfg.pair_question == "same_colour":
        first = rng.choice(names)
        second = first if yes else rng.choice([c for c in names if c != first])
        question = f"Are the small {shapes[0]} and the small {shapes[1]} the same colour?"
    else:  # both: is each of the two the palette's first colour? (a "no" has 1 or 0 of it)
        target, others = names[0], names[1:]
        first, second = (target, target) if yes else rng.choice(
            [(target, rng.choice(others)), (rng.choice(others), target),
             (rng.choice(others), rng.choice(others))])
        question = f"Are the small {shapes[0]} and the small {shapes[1]} both {target}?"
    for shape, box, colour in zip(shapes, boxes, (first, second)):
        _draw_shape(d, shape, box, COLOURS[colour])
    return Scene(img, boxes[0], question, ("yes", "no"), "A" if yes else "B", first, boxes)


def make_scene(seed: int, cfg: SynthConfig = SynthConfig()) -> Scene:
    if cfg.objects == 2:
        return make_pair_scene(seed, cfg)
    rng = random.Random(seed)
    W, H = cfg.image_size
    img = _background(rng, W, H)
    d = ImageDraw.Draw(img)
    s = cfg.evidence_size
    x, y = rng.randint(2, W - s - 2), rng.randint(2, H - s - 2)
    box = (x, y, x + s, y + s)
    placed = [box]
    for _ in range(cfg.clutter):
        side = rng.randint(8, 40)
        for _ in range(20):  # grey clutter never covers the evidence
            cx, cy = rng.randint(0, W - side), rng.randint(0, H - side)
            cand = (cx, cy, cx + side, cy + side)
            if not _overlaps(cand, box):
                g = rng.randint(70, 160)
                _draw_shape(d, rng.choice(SHAPES), cand, (g, g, g))
                break
    names = sorted(COLOURS)
    # fixed options: the answer is one of the listed colours, each letter equally likely
    colour = rng.choice(names[: cfg.n_options] if cfg.fixed_options else names)
    shape = rng.choice(SHAPES)
    for _ in range(cfg.distractors):
        side = rng.randint(s, 3 * s)
        for _ in range(20):
            cx, cy = rng.randint(0, W - side), rng.randint(0, H - side)
            cand = (cx, cy, cx + side, cy + side)
            if not any(_overlaps(cand, p) for p in placed):
                _draw_shape(d, rng.choice([x for x in SHAPES if x != shape]), cand,
                            COLOURS[rng.choice(names)])
                placed.append(cand)
                break
    _draw_shape(d, shape, box, COLOURS[colour])
    if cfg.fixed_options:
        options = names[: cfg.n_options]
    else:
        options = rng.sample([c for c in names if c != colour], cfg.n_options - 1) + [colour]
        rng.shuffle(options)
    answer = "ABCDEF"[options.index(colour)]
    return Scene(img, box, f"What is the colour of the small {shape}?", tuple(options), answer,
                 colour)


def write_scene(scene: Scene, out_dir: Path, name: str = "scene") -> Path:
    """Write one scene as PNG + a one-line JSONL; return the JSONL."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scene.image.save(out_dir / f"{name}.png")
    path = out_dir / f"{name}.jsonl"
    path.write_text(json.dumps(_row(scene, f"{name}.png", name)) + "\n")
    return path


def _row(scene: Scene, image: str, sid: str) -> dict:
    where = {"boxes": [list(b) for b in scene.boxes]} if scene.boxes else {"box": list(scene.box)}
    return {"id": sid, "image": image, "question": scene.question, "options": list(scene.options),
            **where, "answer": scene.answer}


def write_split(out_dir: Path, name: str, n: int, seed: int, cfg: SynthConfig) -> Path:
    """`n` scenes from seeds seed, seed+1, ... as DIR/name/*.png + DIR/name.jsonl."""
    img_dir = out_dir / name
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        scene = make_scene(seed + i, cfg)
        scene.image.save(img_dir / f"{i:05d}.png")
        rows.append(_row(scene, f"{name}/{i:05d}.png", f"{name}-{i:05d}"))
    path = out_dir / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_dataset(out_dir: str | Path, n: int, seed: int, cfg: SynthConfig = SynthConfig(),
                  n_heldout: int | None = None) -> dict[str, Path]:
    """train.jsonl (seeds from `seed`) and heldout.jsonl (a disjoint seed stream). The
    folder is written whole and renamed into place: no stale images from an earlier,
    larger dataset survive. Callers check first that `out_dir` may be replaced."""
    from mlx_opd.run.files import write_dir_atomically

    out_dir = Path(out_dir)
    n_heldout = n if n_heldout is None else n_heldout

    def write(tmp: Path):
        write_split(tmp, "train", n, seed, cfg)
        write_split(tmp, "heldout", n_heldout, seed + HELDOUT_SEED_OFFSET, cfg)
        (tmp / "synth_config.json").write_text(json.dumps(
            {"seed": seed, "n": n, "n_heldout": n_heldout,
             **{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}, indent=2))

    write_dir_atomically(out_dir, write, kind="synth")
    return {"train": out_dir / "train.jsonl", "heldout": out_dir / "heldout.jsonl"}


def write_photo_folder(out_dir: str | Path, n: int, seed: int, cfg: SynthConfig = SynthConfig(),
                       closeup_share: float = 0.0) -> dict[str, Path]:
    """Scenes as a folder of photos for `build-data`: DIR/photos/*.png, DIR/boxes.json (the
    evidence boxes as COCO detection annotations: bbox [x, y, width, height] in pixels,
    category = the evidence's shape, as the question names it) and DIR/truth.json (each
    item's true option letter, keyed as build-data keys items: "<file>#0"). One object
    per scene (objects=1). A `closeup_share` of the photos, spread evenly, are close-ups
    instead: the evidence box's zoomed crop (the teacher's view) saved as the photo, its
    box the whole image; the full image then shows what the crop shows (no gap)."""
    if cfg.objects != 1:
        raise ValueError("write_photo_folder writes one-object scenes (objects=1)")
    out_dir = Path(out_dir)
    photos = out_dir / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    cats = {s: i + 1 for i, s in enumerate(SHAPES)}
    images, anns, truth = [], [], {}
    for i in range(n):
        scene = make_scene(seed + i, cfg)
        name = f"{i:05d}.png"
        image, (x1, y1, x2, y2) = scene.image, scene.box
        if int((i + 1) * closeup_share) > int(i * closeup_share):
            from mlx_opd.method.views import crop_box
            from mlx_opd.run.config import ViewConfig

            image = crop_box(scene.image, scene.box, ViewConfig())
            x1, y1, x2, y2 = 0, 0, *image.size
        image.save(photos / name)
        w, h = image.size
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        shape = scene.question.rsplit("small ", 1)[1].rstrip("?")
        anns.append({"id": i + 1, "image_id": i, "category_id": cats[shape],
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                     "iscrowd": 0})
        truth[f"{name}#0"] = scene.answer
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": v, "name": k} for k, v in cats.items()]}
    (out_dir / "boxes.json").write_text(json.dumps(coco))
    (out_dir / "truth.json").write_text(json.dumps(truth))
    return {"photos": photos, "boxes": out_dir / "boxes.json", "truth": out_dir / "truth.json"}
