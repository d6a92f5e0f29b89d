"""The authors' Vision-OPD-6K read as published (tests/authors_layout.py cites each field)."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mlx_opd.cli import main
from mlx_opd.data import DataError, read_samples
from mlx_opd.data.archives import extract
from mlx_opd.data.images import open_rgb
from mlx_opd.method.views import all_views, plain_view, student_view, teacher_view
from mlx_opd.run.config import DataConfig

from .authors_layout import HINT, archive_published, write_prepared, write_published


def _read(path, **kw):
    return read_samples(DataConfig(path=str(path), **kw))


def _pixels(ref):
    return np.asarray(open_rgb(ref), dtype=np.int16)


@pytest.mark.parametrize("target", ["folder", "jsonl", "jsonl_forced", "parquet", "moved"])
def test_published_and_prepared_layouts_read_the_same(tmp_path, target):
    root = tmp_path / "Vision-OPD-6K"
    rows = write_published(root)
    path = {"folder": root, "jsonl": root / "train.jsonl",
            "jsonl_forced": root / "train.jsonl"}.get(target)
    fmt = "vision_opd" if target == "jsonl_forced" else "auto"
    if target in ("parquet", "moved"):
        path = write_prepared(root)
    if target == "moved":  # prepare_data.py wrote absolute paths of another machine
        moved = tmp_path / "elsewhere"
        shutil.copytree(root, moved)
        shutil.rmtree(root)
        path = moved / "train.parquet"
        root = moved
    samples, report = _read(path, format=fmt)
    assert report.read == len(rows) and not report.skipped
    for s, row in zip(samples, rows):
        assert s.prompt_complete and s.boxed_image and s.answer == "B"
        assert s.box == tuple(float(v) for v in row["extra_info"]["bbox"])
        student, teacher = student_view(s), teacher_view(s)
        # the hint is in the problem once and is not added again; no "<image>" left
        assert student.text.count(HINT) == 1 and "<image>" not in student.text
        assert teacher.text == student.text  # the authors' teacher sees the same text
        # the student image is the published boxed image as is (no second red box)
        assert np.array_equal(np.asarray(student.image, dtype=np.int16),
                              _pixels(root / row["images"][0]))
        assert np.array_equal(np.asarray(teacher.image, dtype=np.int16),
                              _pixels(root / row["teacher_images"][0]))
        with pytest.raises(DataError, match="no plain full view"):
            plain_view(s)


def test_clean_originals_give_the_plain_view(tmp_path):
    """Later dataset revisions carry original_images: the plain view exists then."""
    root = tmp_path / "d"
    rows = write_published(root, n=1)
    (root / "original_images").mkdir()
    open_rgb(root / rows[0]["images"][0]).save(root / "original_images" / "0.png")
    rows[0]["original_images"] = ["original_images/0.png"]
    (root / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    s = _read(root)[0][0]
    views = all_views(s)
    assert set(views) == {"plain", "student", "teacher"}
    assert HINT not in views["plain"].text and "What colour" in views["plain"].text


def test_unextracted_archives_stop_with_the_command_then_extract(tmp_path):
    root = tmp_path / "Vision-OPD-6K"
    write_published(root)
    archive_published(root, parts=3)
    assert sorted(p.name for p in (root / "images").iterdir()) == [
        "images.tar.gz00", "images.tar.gz01", "images.tar.gz02"]
    with pytest.raises(DataError) as e:
        _read(root, on_bad_sample="skip")  # stops at once: skipping would drop every row
    msg = str(e.value)
    assert "train.jsonl:1" in msg and "still in their archives" in msg
    assert f"mlx-opd extract-data '{root}'" in msg and "images.tar.gz00" in msg
    assert "\n" not in msg
    r = CliRunner().invoke(main, ["views", "--data", str(root), "--out", str(tmp_path / "v")])
    assert r.exit_code != 0 and "extract-data" in r.output and "Traceback" not in r.output
    seen = []
    r = CliRunner().invoke(main, ["extract-data", str(root), "--remove"])
    assert r.exit_code == 0, r.output
    assert "extracted 6 files" in r.output and "next: mlx-opd train" in r.output
    samples, _ = _read(root)
    assert len(samples) == 3 and not list(root.glob("*/*.tar.gz*"))
    # progress is reported, ending at the total
    write_published(tmp_path / "again")
    archive_published(tmp_path / "again")
    extract(tmp_path / "again", lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0


def test_extract_refuses_members_outside_the_folder(tmp_path):
    import io
    import tarfile

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../evil.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (root / "images" / "images.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="cannot extract"):
        extract(root)
    assert not (tmp_path / "evil.txt").exists()


def test_format_errors_are_one_line_data_errors(tmp_path):
    root = tmp_path / "d"
    write_published(root, n=2)
    with pytest.raises(DataError, match=r"data.format is parquet but the file is jsonl"):
        _read(root / "train.jsonl", format="parquet")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"broken.parquet: cannot read it as parquet"):
        _read(broken)
    # a row with its problem missing names file and line; skip keeps the others
    lines = (root / "train.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["problem"] = None
    (root / "train.jsonl").write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl:2: row is missing the field 'problem'"):
        _read(root)
    samples, report = _read(root, on_bad_sample="skip")
    assert len(samples) == 1 and len(report.skipped) == 1
    # a jsonl named .parquet is still read by its content
    odd = tmp_path / "rows.parquet"
    shutil.copy(root / "train.jsonl", odd)
    (tmp_path / "images").symlink_to(root / "images")
    (tmp_path / "teacher_images").symlink_to(root / "teacher_images")
    assert len(_read(odd, on_bad_sample="skip")[0]) == 1


def test_views_command_on_the_published_folder(tmp_path):
    root = tmp_path / "d"
    write_published(root, n=2)
    r = CliRunner().invoke(main, ["views", "--data", str(root), "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "v").glob("*.png"))) >= 4


@pytest.mark.parametrize("prepared", [False, True])
def test_trains_two_steps_with_only_data_and_model(tiny_dir, tmp_path, prepared):
    root = tmp_path / "Vision-OPD-6K"
    write_published(root, n=8)  # one epoch of 8 rows = 2 steps of 4 prompts (the default)
    data = write_prepared(root) if prepared else root
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--model", str(tiny_dir["qwen2_5_vl"]), "--data",
                                  str(data), "--out", str(out), "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    steps = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()
             if '"step"' in ln]
    assert max(m["step"] for m in steps) == 2
    assert (out / "adapters" / "adapters.safetensors").exists()
