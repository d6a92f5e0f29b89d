"""Readers and validation: every bad input gets a clear error naming file and line."""

import json

import numpy as np
import pytest
from PIL import Image

from mlx_opd.data import box_to_xyxy, read_samples
from mlx_opd.data.images import open_rgb
from mlx_opd.run.config import DataConfig
from mlx_opd.run.errors import DataError


def _img(path, size=(100, 80), mode="RGB"):
    Image.new(mode, size).save(path)
    return path.name


def _jsonl(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def _row(image="a.png", **kw):
    return {"image": image, "question": "What colour?", "box": [10, 10, 40, 30], **kw}


def _read(path, **kw):
    return read_samples(DataConfig(path=str(path), **kw))


def test_reads_jsonl_with_relative_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    _img(tmp_path / "imgs" / "a.png")
    p = _jsonl(tmp_path, [_row("imgs/a.png", options=["red", "blue"], answer="A", id="s1")])
    samples, report = _read(p)
    s = samples[0]
    assert report.read == 1 and s.image == tmp_path / "imgs" / "a.png"
    assert s.box == (10.0, 10.0, 40.0, 30.0) and s.options == ("red", "blue") and s.answer == "A"
    assert s.where == f"{p}:1"


@pytest.mark.parametrize("fmt,box,expected", [
    ("xyxy", [10, 20, 30, 40], (10, 20, 30, 40)),
    ("xywh", [10, 20, 30, 40], (10, 20, 40, 60)),
    ("xyxy_norm", [0.1, 0.25, 0.5, 0.5], (10, 20, 50, 40)),
])
def test_box_formats(fmt, box, expected):
    assert box_to_xyxy(box, fmt, (100, 80), "w") == pytest.approx(expected)


@pytest.mark.parametrize("box,match", [
    ([10, 10, 140, 30], "outside the 100x80 image"),
    ([10, 10, 10, 30], "zero-area"),
    ([40, 10, 10, 30], "inverted"),
    ([-5, 10, 40, 30], "negative coordinate"),
    ([0.1, 0.1, 0.5, 0.5], "looks normalised"),
    ([1, 2, 3], "4 numbers"),
    ("1,2,3,4", "4 numbers"),
])
def test_bad_boxes_name_the_line(tmp_path, box, match):
    _img(tmp_path / "a.png")
    p = _jsonl(tmp_path, [_row(), _row(box=box)])
    with pytest.raises(DataError, match=match) as e:
        _read(p)
    assert f"{p}:2" in str(e.value) and "Fix:" in str(e.value)


def test_missing_and_corrupt_images(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match="not found") as e:
        _read(_jsonl(tmp_path, [_row("nope.png")]))
    assert "nope.png" in str(e.value) and ":1" in str(e.value)
    with pytest.raises(DataError, match="not a valid image") as e:
        _read(_jsonl(tmp_path, [_row(), _row("bad.png")]))
    assert ":2" in str(e.value)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "I;16", "CMYK"])
def test_image_modes_are_converted(tmp_path, mode):
    if mode == "I;16":
        arr = (np.arange(100 * 80, dtype=np.uint16).reshape(80, 100) * 8)
        Image.fromarray(arr).save(tmp_path / "m.png")
    else:
        _img(tmp_path / ("m.tiff" if mode == "CMYK" else "m.png"), mode=mode)
    name = "m.tiff" if mode == "CMYK" else "m.png"
    samples, _ = _read(_jsonl(tmp_path, [_row(name)]))
    im = open_rgb(samples[0].image)
    assert im.mode == "RGB" and im.size == (100, 80)
    if mode == "I;16":
        assert np.asarray(im).max() == 255  # rescaled, not clipped to black/white


def test_missing_field_empty_dataset_and_bad_json(tmp_path):
    _img(tmp_path / "a.png")
    row = _row()
    del row["box"]
    with pytest.raises(DataError, match="missing the field 'box'") as e:
        _read(_jsonl(tmp_path, [row]))
    assert ":1" in str(e.value)
    with pytest.raises(DataError, match="empty"):
        _read(_jsonl(tmp_path, []))
    with pytest.raises(DataError, match="invalid JSON") as e:
        _read(_jsonl(tmp_path, [_row(), "{not json"]))
    assert ":2" in str(e.value)
    with pytest.raises(DataError, match="not found"):
        _read(tmp_path / "missing.jsonl")


def test_skip_counts_bad_rows(tmp_path):
    _img(tmp_path / "a.png")
    p = _jsonl(tmp_path, [_row(), _row(box=[0, 0, 500, 5]), _row("gone.png"), _row()])
    samples, report = _read(p, on_bad_sample="skip")
    assert len(samples) == 2 and report.read == 2 and len(report.skipped) == 2
    assert f"{p}:2" in report.skipped[0] and f"{p}:3" in report.skipped[1]
    p2 = _jsonl(tmp_path, [_row("gone.png")], "all_bad.jsonl")
    with pytest.raises(DataError, match="every row was skipped"):
        _read(p2, on_bad_sample="skip")


def test_dataset_wide_box_format(tmp_path):
    _img(tmp_path / "a.png")
    p = _jsonl(tmp_path, [_row(box=[0.1, 0.125, 0.5, 0.5])])
    samples, _ = _read(p, box_format="xyxy_norm")
    assert samples[0].box == pytest.approx((10, 10, 50, 40))


def _png_bytes(size, color):
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_vision_opd_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{
        "images": [{"bytes": _png_bytes((120, 90), (1, 2, 3)), "path": None}],
        "teacher_images": [{"bytes": _png_bytes((40, 30), (4, 5, 6)), "path": None}],
        "problem": "<image>\nWhat colour is the cup? Only focus on the objects inside the red "
                   "bounding box in the image to answer this question.\nA. red\nB. blue\n"
                   "Answer with the option's letter from the given choices directly.",
        "answer": "B",
        "extra_info": {"index": 7, "bbox": [10, 10, 30, 25]},
    }]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    samples, report = _read(tmp_path)
    s = samples[0]
    assert report.read == 1 and s.prompt_complete and s.boxed_image and s.answer == "B"
    assert not s.question.startswith("<image>") and s.box == (10, 10, 30, 25)
    assert open_rgb(s.teacher_image).size == (40, 30)


def test_parquet_with_column_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _img(tmp_path / "a.png")
    rows = [{"img": "a.png", "q": "Which?", "bbox": [1, 2, 30, 40], "label": "C"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    cols = {"image": "img", "question": "q", "box": "bbox", "answer": "label"}
    samples, _ = read_samples(DataConfig(path=str(tmp_path / "x.parquet"), columns=cols))
    assert samples[0].question == "Which?" and samples[0].answer == "C"
    with pytest.raises(DataError, match=r"row 0.*missing the field 'box'"):
        read_samples(DataConfig(path=str(tmp_path / "x.parquet"),
                                columns={"image": "img", "question": "q"}))
