"""Replicas of the authors' Vision-OPD-6K files, field for field, each field citing where
it was read. Sources (VisionOPD/Vision-OPD @ c2e345f unless said otherwise):

- [DL]  scripts/prepare_data.py download_dataset, lines 42-56: the dataset folder holds
        train.jsonl, images/images.tar.gz* (split parts, concatenated then extracted inside
        images/) and teacher_images/teacher_images.tar.gz (extracted inside teacher_images/).
- [BR]  scripts/prepare_data.py build_record, lines 68-90: a train.jsonl row has
        images[0] and teacher_images[0] (paths relative to the dataset folder, line 71-72),
        problem (line 73, 77), answer (line 83, 86), extra_info (line 88).
- [CQ]  scripts/prepare_data.py clean_question, lines 61-65: problem holds "<image>" and
        the hint, preceded by a blank line ("\\n\\n" + hint).
- [PQ]  scripts/prepare_data.py convert_to_parquet, lines 106-108: the prepared parquet is
        written with datasets.Dataset.from_list(records).to_parquet (done here the same
        way, with the real `datasets` package).
- [HINT] scripts/prepare_data.py REMOVE_HINT, lines 26-29.
- [BOX] the evidence box lives in extra_info (the prepared parquet's
        extra_info.source_extra_info.bbox): read from the published rows by the reporter of
        issue 19; not checkable in the fork's code, which never reads it.
- [OPT] options and instruction after the hint ("A. x" lines, "Answer with the option's
        letter ..."): the paper's description of the problem field (docs/design/method.md,
        "Training data"); the readers keep the text as it is, whatever its option style.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

HINT = "Only focus on the objects inside the red bounding box in the image to answer this question."  # [HINT]


def _scene(seed: int, size=(96, 72)) -> tuple[Image.Image, list[int]]:
    im = Image.new("RGB", size, (200 - seed * 10, 180, 160 + seed * 5))
    box = [20 + seed, 16, 44 + seed, 34]
    ImageDraw.Draw(im).rectangle(box, fill=(30, 60 + seed * 20, 200))
    return im, box


def problem_text(question: str, options: list[str]) -> str:
    letters = "ABCD"
    opts = "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(options))
    return (f"<image>\n{question}\n\n{HINT}\n\n{opts}\n"                     # [CQ] [OPT]
            "Answer with the option's letter from the given choices directly.")


def write_published(root: Path, n: int = 3) -> list[dict]:
    """The dataset folder as extracted: train.jsonl + images/ + teacher_images/ [DL][BR]."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "teacher_images").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        clean, box = _scene(i)
        boxed = clean.copy()
        ImageDraw.Draw(boxed).rectangle([box[0] - 3, box[1] - 3, box[2] + 2, box[3] + 2],
                                        outline=(255, 0, 0), width=3)
        crop = clean.crop(box).resize(((box[2] - box[0]) * 2, (box[3] - box[1]) * 2))
        boxed.save(root / "images" / f"{i:06d}.jpg", quality=95)
        crop.save(root / "teacher_images" / f"{i:06d}.jpg", quality=95)
        rows.append({
            "images": [f"images/{i:06d}.jpg"],                              # [BR] line 69
            "teacher_images": [f"teacher_images/{i:06d}.jpg"],              # [BR] line 70
            "problem": problem_text("What colour is the small square?",
                                    ["red", "blue", "green", "white"]),     # [BR] line 73
            "answer": "B",                                                  # [BR] line 83
            "extra_info": {"bbox": box, "index": i},                        # [BR] line 88, [BOX]
        })
    with open(root / "train.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def archive_published(root: Path, parts: int = 2) -> None:
    """Pack images/ into split parts images.tar.gz00.. and teacher_images/ into one
    teacher_images.tar.gz, members named as the folder's own files, as [DL] extracts
    them inside each folder; the extracted files are removed."""
    for folder, name, n_parts in (("images", "images.tar.gz", parts),
                                  ("teacher_images", "teacher_images.tar.gz", 1)):
        d = root / folder
        files = sorted(d.glob("*.jpg"))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for f in files:
                tar.add(f, arcname=f.name)
        data = buf.getvalue()
        for f in files:
            f.unlink()
        if n_parts == 1:
            (d / name).write_bytes(data)
        else:
            step = -(-len(data) // n_parts)
            for k in range(n_parts):
                (d / f"{name}{k:02d}").write_bytes(data[k * step:(k + 1) * step])


def build_record(item: dict, data_dir: Path) -> dict:
    """The prepared row for one train.jsonl item, field for field as [BR] lines 75-90."""
    return {
        "data_source": "zwz_rl_vqa_bbox_teacher",
        "prompt": [{"role": "user", "content": item["problem"]}],
        "images": [{"path": str(data_dir / item["images"][0])}],
        "bbox_images": [{"path": str(data_dir / item["teacher_images"][0])}],
        "ability": "visual_question_answering",
        "reward_model": {"style": "none", "ground_truth": item.get("answer", "")},
        "extra_info": {"answer": item.get("answer", ""),
                       "question": item["problem"].replace("<image>", "").replace(
                           f"\n\n{HINT}", "").strip(),
                       "source_extra_info": item.get("extra_info", {})},
    }


def write_prepared(root: Path) -> Path:
    """train.parquet next to train.jsonl, written with `datasets` as [PQ]."""
    import datasets

    data_dir = root.resolve()
    items = [json.loads(ln) for ln in (root / "train.jsonl").read_text().splitlines()]
    out = root / "train.parquet"
    datasets.Dataset.from_list([build_record(it, data_dir) for it in items]).to_parquet(str(out))
    return out
