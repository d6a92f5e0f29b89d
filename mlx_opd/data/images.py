"""Opening images robustly: any PIL mode in, 8-bit RGB out, errors that say where."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlx_opd.run.errors import DataError

ImageRef = Union[Path, bytes, Image.Image]


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any mode to RGB: alpha is composited on white, 16-bit/float is rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def open_rgb(ref: ImageRef, where: str = "") -> Image.Image:
    """Open an image from a path, encoded bytes or a PIL image, as RGB."""
    if isinstance(ref, Image.Image):
        return _to_rgb(ref)
    label = f"image {ref}" if isinstance(ref, Path) else "embedded image bytes"
    if isinstance(ref, Path) and not ref.exists():
        raise DataError(f"image file not found: {ref}", where,
                        "check the path; relative paths are resolved against the data file's folder")
    try:
        im = Image.open(ref if isinstance(ref, Path) else io.BytesIO(ref))
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {label}: it is not a valid image ({e})", where,
                        "re-export the image as PNG or JPEG, or drop the row") from None
    return _to_rgb(im)


def image_size(ref: ImageRef, where: str = "") -> tuple[int, int]:
    """(width, height) of an image, checking it decodes."""
    return open_rgb(ref, where).size


def header_size(ref: ImageRef) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels (for a
    reference already validated, e.g. by data.read_samples)."""
    if isinstance(ref, Image.Image):
        return ref.size
    with Image.open(ref if isinstance(ref, Path) else io.BytesIO(ref)) as im:
        return im.size
