"""Gap mining: keep the items where the crop teacher has something to teach this model.

The model to be trained (`--mine-with`, default the builder's model) answers each item m
times from the plain full image (no box, no hint: the deployment setting); its accuracy
is measured against the crop consensus answer (no label is read). An item is kept when
its crop consensus held (consensus.py) and its full-image accuracy is below
max_full_acc: the crop is right and the full view is not. This is ZwZ's difficulty filter
turned to the model at hand (ZwZ drops items a small model answers >= 2 of 4 times from
the boxed image, create_answers.py:323-372 @fdc0ba1); the report gives the crop-vs-full
gap on kept and dropped items.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mined:
    full_acc: float
    keep: bool
    reason: str


def full_accuracy(letters: list[str | None], answer: str) -> float:
    """Share of the full-image answers that are `answer` (unparsed count as wrong)."""
    return sum(x == answer for x in letters) / len(letters) if letters else 0.0


def mine(letters: list[str | None], answer: str, max_full_acc: float = 0.5) -> Mined:
    acc = full_accuracy(letters, answer)
    if acc >= max_full_acc - 1e-12:
        return Mined(acc, False, f"no gap: full-image accuracy {acc:.2f} >= {max_full_acc}")
    return Mined(acc, True, "")


def gap_summary(items: list[dict]) -> dict:
    """Crop agreement, full-image accuracy and their gap, on the items given (each with
    'crop_agreement' and 'full_acc')."""
    if not items:
        return {"n": 0, "crop": None, "full": None, "gap": None}
    crop = sum(i["crop_agreement"] for i in items) / len(items)
    full = sum(i["full_acc"] for i in items) / len(items)
    return {"n": len(items), "crop": crop, "full": full, "gap": crop - full}


def precision_recall(predicted: list[bool], truth: list[bool]) -> dict:
    """Precision and recall of `predicted` positives against `truth` (for the mining
    measurement against known answers)."""
    tp = sum(p and t for p, t in zip(predicted, truth))
    fp = sum(p and not t for p, t in zip(predicted, truth))
    fn = sum(t and not p for p, t in zip(predicted, truth))
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None}
