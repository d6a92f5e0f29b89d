"""Synthetic fine-detail scenes: clutter plus one small evidence object and its box.

Deterministic for a seed. The question asks for the evidence object's colour, with
lettered options; the answer is unambiguous inside the box.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 210, 40), "purple": (140, 60, 180), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    box: tuple[int, int, int, int]  # xyxy pixels
    question: str
    options: tuple[str, ...]
    answer: str                     # option letter


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, xyxy, fill) -> None:
    x1, y1, x2, y2 = xyxy
    if shape == "circle":
        d.ellipse(xyxy, fill=fill)
    elif shape == "square":
        d.rectangle(xyxy, fill=fill)
    else:
        d.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)


def make_scene(seed: int, size: tuple[int, int] = (320, 240), n_clutter: int = 25,
               evidence_side: int = 14) -> Scene:
    """A grey textured background, `n_clutter` gray shapes, and one small coloured shape."""
    rng = random.Random(seed)
    W, H = size
    img = Image.new("RGB", size, (200, 200, 200))
    d = ImageDraw.Draw(img)
    for _ in range(n_clutter):
        s = rng.randint(8, 40)
        x, y = rng.randint(0, W - s), rng.randint(0, H - s)
        g = rng.randint(60, 160)
        _draw_shape(d, rng.choice(SHAPES), (x, y, x + s, y + s), (g, g, g))
    s = evidence_side
    x, y = rng.randint(2, W - s - 2), rng.randint(2, H - s - 2)
    colour = rng.choice(sorted(COLOURS))
    shape = rng.choice(SHAPES)
    _draw_shape(d, shape, (x, y, x + s, y + s), COLOURS[colour])
    options = rng.sample(sorted(COLOURS), 4)
    if colour not in options:
        options[rng.randrange(4)] = colour
    answer = "ABCD"[options.index(colour)]
    return Scene(img, (x, y, x + s, y + s), f"What is the colour of the small {shape}?",
                 tuple(options), answer)


def write_scene(scene: Scene, out_dir: Path, name: str = "scene") -> Path:
    """Write the image and a one-line JSONL in mlx-opd's sample format; return the JSONL."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scene.image.save(out_dir / f"{name}.png")
    row = {"image": f"{name}.png", "question": scene.question, "options": list(scene.options),
           "box": list(scene.box), "answer": scene.answer}
    path = out_dir / f"{name}.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path
