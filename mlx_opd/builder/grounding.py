"""Boxes out of a VLM's grounding answer, in the original image's pixels.

Each family writes boxes its own way (as its authors document them; the recorded examples
and their sources: tests/fixtures/grounding_formats.json):
- qwen2_5_vl: a JSON list of {"bbox_2d": [x1, y1, x2, y2], "label": ...}, usually in a
  ```json fence, in ABSOLUTE pixels of the image the model saw (the processor's resize);
  (or, by its cookbook's system prompt, plain-text lines "x1,y1,x2,y2 label");
- qwen3_vl: the same JSON, in coordinates RELATIVE to the image, 0-1000; qwen3_5 is read
  the same way (its authors document no grounding format: an assumption, docs/build-data.md);
- qwen2_vl: <|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)
  <|box_end|>, relative 0-1000 (so its answer must be decoded with special tokens kept).
`parse_grounding` never raises on a model's text: every object it cannot use is dropped
with a reason (broken JSON, a missing or malformed box, a point instead of a box, an
inverted box, a box outside the image); a truncated answer keeps its complete objects.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# family -> how its numbers map to pixels
CONVENTIONS = {"qwen2_vl": "rel1000", "qwen2_5_vl": "abs_input", "qwen3_vl": "rel1000",
               "qwen3_vl_moe": "rel1000", "qwen3_5": "rel1000", "qwen3_5_moe": "rel1000"}
TOKEN_FAMILIES = ("qwen2_vl",)  # boxes as special tokens, not JSON

_QWEN2_BOX = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>(?:(?!<\|object_ref_).)*?)<\|object_ref_end\|>\s*)?"
    r"<\|box_start\|>\s*"
    r"\(\s*(?P<x1>-?\d+(?:\.\d+)?)\s*,\s*(?P<y1>-?\d+(?:\.\d+)?)\s*\)\s*,\s*"
    r"\(\s*(?P<x2>-?\d+(?:\.\d+)?)\s*,\s*(?P<y2>-?\d+(?:\.\d+)?)\s*\)\s*<\|box_end\|>", re.S)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.S)
# Qwen2.5-VL's plain-text boxes, one per line: "x1,y1,x2,y2 label" (cookbook system prompt)
_TEXT_BOX = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*"
                       r"(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s+(\S.*?)\s*$", re.M)
_FLAT_OBJECT = re.compile(r"\{[^{}\[\]]*(?:\[[^\[\]]*\][^{}\[\]]*)*\}", re.S)


@dataclass(frozen=True)
class Detection:
    label: str
    box: tuple[float, float, float, float]  # xyxy pixels of the ORIGINAL image


def listing_prompt(family: str, max_objects: int = 8) -> str:
    """The request for objects with boxes, in the wording each family's cookbook uses for
    grounding (JSON with bbox_2d for qwen2.5/3-VL and Qwen3.5; Qwen2-VL's box tokens)."""
    ask = (f"List up to {max_objects} distinct, clearly visible objects in the image that "
           "each appear exactly once (people, animals, things, signs, text).")
    if family in TOKEN_FAMILIES:
        return ask + " Give each object's bounding box."
    return (ask + " Outline the position of each one and output all the coordinates in "
            'JSON format: [{"bbox_2d": [x1, y1, x2, y2], "label": "name"}, ...].')


def json_candidates(text: str) -> tuple[list, list[str]]:
    """The JSON values in a model's answer: the fenced block (or the whole text) parsed
    whole, else each complete flat {...} object salvaged from it (a truncated answer keeps
    its finished objects). Returns (values, problems)."""
    m = _FENCE.search(text)
    body = (m.group(1) if m else text).strip()
    start = min([i for i in (body.find("["), body.find("{")) if i >= 0], default=-1)
    if start < 0:
        return [], ["no JSON in the answer"]
    try:
        value = json.loads(body[start:])
        return (value if isinstance(value, list) else [value]), []
    except json.JSONDecodeError:
        pass
    try:  # trailing prose after a complete value
        value, _ = json.JSONDecoder().raw_decode(body[start:])
        return (value if isinstance(value, list) else [value]), []
    except json.JSONDecodeError:
        pass
    found = []
    for obj in _FLAT_OBJECT.findall(body):
        try:
            found.append(json.loads(obj))
        except json.JSONDecodeError:
            continue
    return found, ["broken JSON: kept " + (f"{len(found)} complete object(s)" if found
                                           else "no complete object")]


def _to_pixels(xyxy, convention: str, image_size, input_size) -> tuple[float, ...]:
    W, H = image_size
    if convention == "rel1000":
        sx, sy = W / 1000.0, H / 1000.0
    else:
        if not input_size or min(input_size) <= 0:
            raise ValueError("absolute coordinates need the size of the image the model saw")
        sx, sy = W / input_size[0], H / input_size[1]
    x1, y1, x2, y2 = xyxy
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def check_box(box, image_size, tol: float = 0.02) -> tuple[tuple | None, str | None]:
    """(box clipped to the image, None) or (None, why it is unusable). A box may reach
    past the border by `tol` of the side (rounding); beyond that it is wrong."""
    W, H = image_size
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return None, f"inverted or empty box: {[round(v, 1) for v in box]}"
    if x1 < -tol * W or y1 < -tol * H or x2 > (1 + tol) * W or y2 > (1 + tol) * H:
        return None, f"box outside the image: {[round(v, 1) for v in box]} in {W}x{H}"
    return (max(0.0, x1), max(0.0, y1), min(float(W), x2), min(float(H), y2)), None


def _numbers(v) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == 4
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))


def parse_grounding(text: str, family: str, image_size: tuple[int, int],
                    input_size: tuple[int, int] | None = None
                    ) -> tuple[list[Detection], list[str]]:
    """(detections in original pixels, drop reasons). `image_size` is the original
    (width, height); `input_size` the size the model saw (needed for qwen2_5_vl)."""
    convention = CONVENTIONS.get(family)
    if convention is None:
        raise ValueError(f"no grounding format known for model family {family!r} (known: "
                         f"{', '.join(CONVENTIONS)}); use --boxes FILE or --detector sam3")
    raw, problems = [], []
    if family in TOKEN_FAMILIES:
        for m in _QWEN2_BOX.finditer(text):
            raw.append(((m.group("label") or "").strip(),
                        [float(m.group(k)) for k in ("x1", "y1", "x2", "y2")]))
        if not raw:
            problems.append("no <|box_start|>(x1,y1),(x2,y2)<|box_end|> in the answer")
    else:
        values, problems = json_candidates(text)
        if not values and family == "qwen2_5_vl":
            lines = [{"bbox_2d": [float(v) for v in m.groups()[:4]], "label": m.group(5)}
                     for m in _TEXT_BOX.finditer(text)]
            values, problems = (lines, []) if lines else (values, problems)
        for i, obj in enumerate(values):
            where = f"object {i + 1}"
            if not isinstance(obj, dict):
                problems.append(f"not an object: {where} is a {type(obj).__name__}")
                continue
            box = obj.get("bbox_2d", obj.get("bbox"))
            if box is None:
                problems.append(f"a point, not a box: {where}" if "point_2d" in obj else
                                f"no bbox_2d: {where} (keys: {', '.join(map(str, obj)) or 'none'})")
                continue
            if not _numbers(box):
                problems.append(f"bbox_2d not 4 numbers: {where}: {box!r}"[:120])
                continue
            label = obj.get("label", "")
            raw.append((label.strip() if isinstance(label, str) else "", [float(v) for v in box]))
    out = []
    for i, (label, nums) in enumerate(raw):
        if not label:
            problems.append(f"no label: box {i + 1}")
            continue
        box, why = check_box(_to_pixels(nums, convention, image_size, input_size), image_size)
        if why:
            problems.append(f"{why} ({label!r})")
            continue
        out.append(Detection(label, box))
    return out, problems
