"""Optional box refinement with SAM3 through mlx-vlm (`--detector sam3 --detector-model P`).

ZwZ boxes each listed object with SAM3, text prompt = the object's name, and rejects it
when SAM3 finds none or more than one ("not unique"); it then drops boxes scored under
0.75 (inclusionAI/Zooming-without-Zooming data_synthesis/create_crops.py:173-207,
create_questions.py:398-401 @fdc0ba1). `sam3_decision` is that rule, on what mlx-vlm's
Sam3Predictor.predict returns (mlx_vlm/models/sam3/generate.py: DetectionResult with
boxes (N, 4) xyxy pixels and scores (N,)).
"""

from __future__ import annotations

from mlx_opd.builder.regions import Region

MIN_SAM3_SCORE = 0.75


def sam3_decision(label: str, boxes, scores, min_score: float = MIN_SAM3_SCORE
                  ) -> tuple[Region | None, str]:
    """(the one region SAM3 found for `label`, "") or (None, why not)."""
    found = [(tuple(float(v) for v in b), float(s)) for b, s in zip(boxes, scores)
             if float(s) >= min_score]
    if not found:
        return None, f"SAM3 found none: no {label!r} scored >= {min_score}"
    if len(found) > 1:
        return None, f"SAM3 not unique: {len(found)} {label!r}"
    box, score = found[0]
    return Region(label, box, "sam3", score), ""


def load_sam3(path: str):
    """mlx-vlm's SAM3 image predictor for the checkpoint folder `path`."""
    from mlx_opd.models.parts import load_sam3 as load

    return load(path)


def refine(predictor, image, regions: list[Region], min_score: float = MIN_SAM3_SCORE
           ) -> tuple[list[Region], list[tuple]]:
    """SAM3's box for each region's label: (kept, [(region, reason), ...])."""
    kept, dropped = [], []
    for r in regions:
        res = predictor.predict(image, r.label)
        region, why = sam3_decision(r.label, res.boxes, res.scores, min_score)
        if region is None:
            dropped.append((r, why))
        else:
            kept.append(region)
    return kept, dropped
