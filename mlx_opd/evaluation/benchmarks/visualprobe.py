"""VisualProbe (Easy 141, Medium 268, Hard 106; from Mini-o3). Hubs:
Mini-o3/VisualProbe_Easy, _Medium, _Hard, each a val.json (a list of {images, problem,
solution}) and its images; an image path starts with the level's folder name
("VisualProbe_Easy/..."), which the authors drop to find it in the repo
(VisionOPD/Vision-OPD eval/prepare_data.py @c2e345f lines 390-426). A local --data folder
holds the three repos as VisualProbe_Easy/, VisualProbe_Medium/, VisualProbe_Hard/, or one
of them (its val.json).

Prompt: the problem with its <image> marker removed, stripped (line 418). Answers are free
form, read by equivalence (mathruler). Headline: the mean of the three levels' accuracies
(`visualprobe_mean`, as theirs: cal_acc.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from mlx_opd.data import need
from mlx_opd.evaluation.benchmarks.item import BenchItem, Benchmark, guarded, sent
from mlx_opd.run.errors import DataError

LEVELS = ("Easy", "Medium", "Hard")
HUB_IDS = {level: f"Mini-o3/VisualProbe_{level}" for level in LEVELS}
LAYOUT = ("VisualProbe_Easy/, VisualProbe_Medium/, VisualProbe_Hard/, each with val.json, as "
          "on Mini-o3/VisualProbe_{Easy,Medium,Hard}")
FIX = f"use the published layout: {LAYOUT}"


def level_folders(root: Path) -> list[tuple[str, Path]]:
    found = [(lv, root / f"VisualProbe_{lv}") for lv in LEVELS
             if (root / f"VisualProbe_{lv}" / "val.json").exists()]
    if not found and (root / "val.json").exists():
        name = root.name.rsplit("_", 1)[-1]
        found = [(name if name in LEVELS else "all", root)]
    if not found:
        raise DataError("no VisualProbe val.json here", str(root), f"--data must hold {LAYOUT}")
    return found


def _image_path(folder: Path, level: str, rel: str) -> Path:
    prefix = f"VisualProbe_{level}/"
    return folder / (rel[len(prefix):] if rel.startswith(prefix) else rel)


def read(root: Path):
    rows = []
    for level, folder in level_folders(root):
        path = folder / "val.json"
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg})", str(path), FIX) from None
        rows += [(f"{path} item {i}", dict(r, _level=level, _folder=str(folder), _n=i))
                 for i, r in enumerate(records)]

    def make(where, row):
        images = need(row, "images", where, FIX)
        level = row["_level"]
        return BenchItem(id=f"{level}/{row['_n']}",
                         image=_image_path(Path(row["_folder"]), level, str(images[0])),
                         question=str(need(row, "problem", where, FIX)),
                         answer=str(need(row, "solution", where, FIX)).strip(),
                         category=level, where=where, kind="open")
    return len(rows), guarded(rows, make)


def prompt(item: BenchItem) -> str:
    return sent(item.question.replace("<image>\n", "").replace("<image>", ""))


BENCHMARK = Benchmark("visualprobe", "VisualProbe", "Mini-o3/VisualProbe_{Easy,Medium,Hard}",
                      "open", read, prompt, layout=LAYOUT,
                      hub_parts=tuple((f"VisualProbe_{lv}", HUB_IDS[lv]) for lv in LEVELS))
