"""Privileged views beyond one crop: several boxes (one crop per box, their union), the
clean full image as the teacher and a degraded student (no boxes at all). The views are
checked as pure functions; several teacher images through every family's processor and
M-RoPE positions (against an independent computation); the shared-prefix scoring against
the duplicated reference with two and three crops; plan's token counts; training through
the CLI on a multi-box and a box-free JSONL."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mlx_opd import models
from mlx_opd.cli import main
from mlx_opd.data import read_samples, union_box
from mlx_opd.method import score as scoring
from mlx_opd.method import step as stepping
from mlx_opd.method import trainer
from mlx_opd.method.views import crop_box, degrade, student_view, teacher_view
from mlx_opd.models.layouts import SUPPORTED_FAMILIES
from mlx_opd.preflight import plan as planner
from mlx_opd.run.config import (
    AUTHORS_HINT_PLURAL,
    DataConfig,
    DegradeConfig,
    ViewConfig,
    load_train_config,
)
from mlx_opd.run.errors import DataError

from .test_prefix import _setup, assert_shared_equals_duplicated

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny.yaml"
MULTI = ROOT / "examples" / "data" / "multibox.jsonl"
NOBOX = ROOT / "examples" / "data" / "nobox.jsonl"


def _multi():
    return read_samples(DataConfig(path=str(MULTI)))[0]


def _px(im):
    return np.asarray(im, dtype=np.int16)


# --- the views, as pure functions ---------------------------------------------------------

def test_crops_are_one_per_box_in_the_datas_order_and_union_crops_the_union():
    s = _multi()[1]  # three boxes
    assert len(s.all_boxes) == 3 and s.box == union_box(s.all_boxes)
    full = Image.open(s.image).convert("RGB")
    cfg = ViewConfig(teacher="crops")
    got = teacher_view(s, cfg).images
    assert len(got) == 3
    for im, b in zip(got, s.all_boxes):
        assert np.array_equal(_px(im), _px(crop_box(full, b, cfg)))
    for mode in ("union", "crop"):  # crop of several boxes: their union (as before)
        (u,) = teacher_view(s, ViewConfig(teacher=mode)).images
        assert np.array_equal(_px(u), _px(crop_box(full, union_box(s.all_boxes), cfg)))
    (clean,) = teacher_view(s, ViewConfig(teacher="clean")).images
    assert np.array_equal(_px(clean), _px(full))
    # the teacher's text is the student's, with the hint worded for several boxes
    assert teacher_view(s, cfg).text == student_view(s, cfg).text
    assert AUTHORS_HINT_PLURAL in student_view(s, cfg).text


def test_the_boxed_student_draws_every_box_and_plain_or_degraded_draw_none():
    s = _multi()[0]
    full = _px(Image.open(s.image).convert("RGB"))
    boxed = _px(student_view(s, ViewConfig()).image)
    red = (boxed[..., 0] == 255) & (boxed[..., 1] == 0) & (boxed[..., 2] == 0)
    for x1, y1, x2, _ in s.all_boxes:  # the outline just outside each box is red
        assert red[int(y1) - 1, int(x1):int(x2)].all()
    assert np.array_equal(_px(student_view(s, ViewConfig(student="plain")).image), full)
    for mode in ("plain", "degraded"):
        assert "red bounding" not in student_view(s, ViewConfig(student=mode)).text


def test_degraded_view_is_deterministic_per_sample_and_step_and_each_op_degrades():
    s = read_samples(DataConfig(path=str(NOBOX)), need_boxes=False)[0][0]
    cfg = ViewConfig(teacher="clean", student="degraded")
    a, b = student_view(s, cfg, 3).image, student_view(s, cfg, 3).image
    assert np.array_equal(_px(a), _px(b))  # the same computation twice
    assert not np.array_equal(_px(a), _px(student_view(s, cfg, 4).image))
    full = Image.open(s.image).convert("RGB")
    assert a.size == full.size
    for op in DegradeConfig().ops:  # each named op alone changes the image, at its strength
        one = degrade(full, DegradeConfig(ops=(op,)), seed=0)
        diff = float(np.abs(_px(one) - _px(full)).mean())
        assert one.size == full.size and diff > 0.5, (op, diff)
    small = degrade(full, DegradeConfig(ops=("lowres",), lowres=(4.0, 4.0)), 0)
    assert small.size == (round(full.size[0] / 4), round(full.size[1] / 4))
    # stronger downsampling loses more (mean absolute difference from the original)
    weak = degrade(full, DegradeConfig(ops=("downsample",), downsample=(1.5, 1.5)), 0)
    strong = degrade(full, DegradeConfig(ops=("downsample",), downsample=(6.0, 6.0)), 0)
    assert np.abs(_px(strong) - _px(full)).mean() > np.abs(_px(weak) - _px(full)).mean()


def test_rows_without_boxes_are_read_only_where_the_views_need_none(tmp_path):
    with pytest.raises(DataError, match=r"nobox.jsonl:1: .*missing the field 'box'"):
        read_samples(DataConfig(path=str(NOBOX)))
    assert ViewConfig(teacher="clean", student="degraded").needs_boxes() is False
    assert ViewConfig(teacher="clean", student="plain").needs_boxes() is False
    assert ViewConfig(teacher="clean").needs_boxes() is True  # the boxed student draws them
    s = read_samples(DataConfig(path=str(NOBOX)), need_boxes=False)[0][0]
    with pytest.raises(DataError, match="no evidence box, and the crop teacher view needs one"):
        teacher_view(s, ViewConfig())
    row = json.loads(MULTI.read_text().splitlines()[0])
    (tmp_path / "scene0.png").write_bytes((MULTI.parent / "scene0.png").read_bytes())
    for bad, why in (({**row, "box": [1, 2, 3, 4]}, "both 'box' and 'boxes'"),
                     ({**row, "boxes": []}, "non-empty list of boxes"),
                     ({**row, "boxes": [[1, 2, 3, 4], [5, 5, 900, 9]]}, r"boxes\[1\]")):
        f = tmp_path / "bad.jsonl"
        f.write_text(json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=why):
            read_samples(DataConfig(path=str(f)))


def test_view_config_refuses_unknown_modes_and_bad_ranges():
    with pytest.raises(ValueError, match="views.teacher must be one of"):
        ViewConfig(teacher="zoom")
    with pytest.raises(ValueError, match="low <= high"):
        DegradeConfig(blur=(3.0, 1.0))
    with pytest.raises(ValueError, match="views.degrade.ops"):
        DegradeConfig(ops=("sharpen",))


# --- several teacher images through the models ---------------------------------------------

def _mrope_reference(ids: list[int], grids: list[tuple[int, int, int]], image_token: int,
                     merge: int) -> np.ndarray:
    """Qwen2-VL's multimodal positions, written for the test: text tokens count on from
    the last position; image i's tokens sit at (0, row, col) of its merged grid, offset
    by the position its span starts at; the text after it starts past its largest."""
    pos, nxt, i, g = [], 0, 0, iter(grids)
    while i < len(ids):
        if ids[i] != image_token:
            pos.append((nxt, nxt, nxt))
            nxt += 1
            i += 1
            continue
        t, h, w = next(g)
        h, w = h // merge, w // merge
        for r in range(h):
            for c in range(w):
                pos.append((nxt, nxt + r, nxt + c))
        nxt += max(h, w)
        i += h * w
    return np.array(pos).T  # [3, L]


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_several_teacher_images_in_one_prompt_counts_and_positions(family, loaded):
    """Three crops in one prompt: three grid rows, as many image tokens as the three
    images alone, in the data's order, at the M-RoPE positions an independent computation
    gives (qwen3_vl/qwen3_5 as qwen2_5_vl for still images)."""
    L = loaded(family)
    s = _multi()[1]
    cfg = ViewConfig(teacher="crops")
    view = teacher_view(s, cfg)
    enc = models.encode(L, view.images, view.text)
    assert enc.num_images == 3
    alone = [models.image_token_count(L, models.encode(L, im, view.text)) for im in view.images]
    assert models.image_token_count(L, enc) == sum(alone)
    merge = L.model.config.vision_config.spatial_merge_size
    grids = [tuple(int(v) for v in row) for row in enc.image_grid_thw.tolist()]
    assert [t * h * w // merge // merge for t, h, w in grids] == alone  # order kept
    lm = L.model.language_model
    models.reset_rope_state(L.model)
    got, _ = lm.get_rope_index(enc.input_ids, enc.image_grid_thw,
                               attention_mask=mx.ones(enc.input_ids.shape, dtype=mx.int32))
    models.reset_rope_state(L.model)
    want = _mrope_reference(enc.input_ids[0].tolist(), grids, L.model.config.image_token_id,
                            merge)
    np.testing.assert_array_equal(np.array(got)[:, 0, :], want)


@pytest.mark.numerics
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
@pytest.mark.parametrize("k", [2, 3])
def test_shared_prefix_equals_duplicated_with_several_teacher_crops(family, k, tiny_dir,
                                                                    tmp_path):
    """A teacher prompt of k crops: loss, LoRA gradients and agreement of the prompt run
    once equal the prompt repeated per row (fp32 tolerances as the one-crop test)."""
    cfg, L, teacher = _setup(tiny_dir[family], tmp_path, **{
        "data.path": str(MULTI), "views.teacher": "crops"})
    sample = next(s for s in read_samples(cfg.data)[0] if len(s.all_boxes) == k)
    enc = stepping.student_prompt(L, sample, cfg)
    t_enc = stepping.teacher_prompt(L, sample, cfg)
    assert t_enc.num_images == k
    a = assert_shared_equals_duplicated(cfg, L, teacher, enc, t_enc)
    # the crops matter: one crop fewer gives another loss
    one = trainer.replace(cfg, views=trainer.replace(cfg.views, teacher="crop"))
    eos = models.eos_token_ids(L)[-1]
    single = scoring.score(L, teacher, one, enc, stepping.teacher_prompt(L, sample, one),
                           [[5, 6, 7, 8, 9], [10, eos], [11], [12, 13, 14, eos]], 10.0)
    assert abs(single.loss - a.loss) > 1e-6


def test_plan_counts_every_teacher_crop_as_the_processor_does(tiny_dir, loaded):
    L = loaded("qwen2_5_vl")
    config = json.loads((L.path / "config.json").read_text())
    proc = json.loads((L.path / "preprocessor_config.json").read_text())
    for mode in ("crops", "union", "clean"):
        cfg = load_train_config(str(EXAMPLE), {"model.path": str(L.path), "data.path": str(MULTI),
                                               "views.teacher": mode})
        full, crop = planner.data_sizes(cfg)
        got = planner.predict(config, proc, cfg, full, crop, "float32", "cpu")["tokens"]
        # the sample with the largest teacher view, encoded: the processor's own count
        want = max(models.image_token_count(L, stepping.teacher_prompt(L, s, cfg))
                   for s in read_samples(cfg.data)[0])
        assert got["image_crop"] == want, mode


# --- training through the CLI ---------------------------------------------------------------

@pytest.mark.parametrize("data,sets", [
    (MULTI, ["views.teacher=crops"]),
    (NOBOX, ["views.teacher=clean", "views.student=degraded"]),
], ids=["multi_box_crops", "box_free_degraded"])
def test_train_runs_through_the_cli_on_multi_box_and_box_free_data(data, sets, tiny_dir,
                                                                   tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", str(EXAMPLE), "--set", f"model.path={tiny_dir['qwen3_5']}",
            "--set", f"data.path={data}", "--set", f"run.out={out}", "--set", "optim.epochs=2"]
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "views: teacher " + sets[0].split("=")[1] in r.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if "loss/objective" in x]
    assert len(steps) == 3 and all(np.isfinite(x["loss/objective"]) for x in steps)
    assert (out / "adapters" / "adapters.safetensors").exists()


# --- exports: what each engine can run ------------------------------------------------------

def _export(tmp_path, data, views: dict, fmt: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / f"views-{fmt}.yaml"
    cfg.write_text(json.dumps({"views": views}))  # JSON is YAML
    out = tmp_path / f"out-{fmt}"
    r = CliRunner().invoke(main, ["export-data", "--data", str(data), "--out", str(out),
                                  "--format", fmt, "--config", str(cfg)])
    return r, out


def test_ms_swift_reads_several_teacher_crops_with_as_many_image_tags(tmp_path):
    """ms-swift 4.6.0's own loader and OPSD sample (the real package): the teacher gets
    the row's crops, with an image tag per crop in its message (its template asserts the
    counts match, template/base.py), the student its one image and the plain message."""
    from swift.dataset import load_dataset
    from swift.rl_core.data import GKDSample

    r, out = _export(tmp_path, MULTI, {"teacher": "crops"}, "swift")
    assert r.exit_code == 0, r.output
    train, _ = load_dataset([str(out / "train.jsonl")], split_dataset_ratio=0.0, num_proc=1)
    ks = []
    for row in train:
        sample = GKDSample.from_row(dict(row))
        assert sample.build_teacher_view() is True
        teacher, student = sample.to_teacher_template_dict(), sample.to_template_dict()
        t_text = teacher["messages"][-1]["content"]
        assert t_text.count("<image>") == len(teacher["images"])
        assert student["messages"][-1]["content"].count("<image>") == len(student["images"]) == 1
        assert t_text.replace("<image>", "") == student["messages"][-1]["content"].replace(
            "<image>", "")  # the same text for both
        ks.append(len(teacher["images"]))
    assert sorted(set(ks)) == [2, 3]


def test_the_authors_fork_refuses_several_teacher_images_and_takes_union_or_clean(tmp_path):
    r, out = _export(tmp_path, MULTI, {"teacher": "crops"}, "verl")
    assert r.exit_code != 0
    assert "multibox.jsonl:1" in r.output and "exactly one teacher image" in r.output
    assert "Traceback" not in r.output and not out.exists()
    for views, data in (({"teacher": "union"}, MULTI),
                        ({"teacher": "clean", "student": "degraded"}, NOBOX)):
        for fmt in ("verl", "swift"):
            r, out = _export(tmp_path / f"{views['teacher']}-{fmt}", data, views, fmt)
            assert r.exit_code == 0, (views, fmt, r.output)


# --- synthetic multi-object scenes -----------------------------------------------------------

@pytest.mark.parametrize("question", ["same_colour", "both"])
def test_synth_pair_scenes_have_two_far_apart_boxes_and_a_checkable_answer(question, tmp_path):
    """Two evidence shapes at least half the image apart, each alone in its box with its
    colour; the answer is 'yes' exactly when the two colours are equal (same_colour) or
    both the palette's first (both), and both answers are common."""
    from mlx_opd.run.config import COLOURS, SynthConfig
    from mlx_opd.toy.synth import write_dataset

    cfg = SynthConfig(image_size=(224, 168), evidence_size=24, clutter=8, objects=2,
                      fixed_options=True, pair_question=question)
    first = sorted(COLOURS)[0]
    paths = write_dataset(tmp_path, 40, 0, cfg, 4)
    samples = read_samples(DataConfig(path=str(paths["train"])))[0]
    answers = []
    for s in samples:
        (a, b) = s.all_boxes
        assert abs(a[0] - b[0]) >= 112 or abs(a[1] - b[1]) >= 84
        full = np.asarray(Image.open(s.image).convert("RGB"))
        colours = []
        for x1, y1, x2, y2 in (a, b):  # the box's centre pixel is the object's colour
            px = tuple(int(v) for v in full[int((y1 + y2) // 2) + 2, int((x1 + x2) // 2)])
            colours.append(next(c for c, rgb in COLOURS.items() if tuple(rgb) == px))
        yes = colours[0] == colours[1] if question == "same_colour" else \
            colours == [first, first]
        assert s.answer == ("A" if yes else "B")
        if question == "both":
            assert s.question.endswith(f"both {first}?")
        answers.append(s.answer)
    assert 10 <= answers.count("A") <= 30  # both answers, about half each


# --- the toy comparison's plumbing -----------------------------------------------------------

def test_compare_views_quick_runs_every_mode_and_writes_its_table(tmp_path):
    """`mlx-opd demo --compare-views --quick`: both modes, every teacher, the seed asked
    for; the table has a row per (mode, teacher). The figures of a 2-step run mean
    nothing: the real comparison is measured in docs/demo.md."""
    r = CliRunner().invoke(main, ["demo", "--compare-views", "--quick", "--seeds", "3",
                                  "--out", str(tmp_path / "v")])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "v" / "views.json").read_text())
    runs = {m: [(x["teacher"], x["student"], x["seed"]) for x in v["runs"]]
            for m, v in got["modes"].items()}
    assert runs == {"multi-region": [("crops", "plain", 3), ("union", "plain", 3),
                                     ("clean", "plain", 3)],
                    "box-free": [("clean", "degraded", 3)]}
    table = (tmp_path / "v" / "views.md").read_text().splitlines()
    assert len(table) == 2 + 4
    bad = CliRunner().invoke(main, ["demo", "--compare-views", "--quick", "--seeds", "a,b",
                                    "--out", str(tmp_path / "w")])
    assert bad.exit_code != 0 and "give integers" in bad.output


# --- edges: the authors' boxed rows, machine-independent degradations, the demo's key -------

def test_views_that_need_the_clean_image_refuse_boxed_only_rows_before_training(tmp_path):
    """The authors' published rows carry only the boxed image: a plain / degraded student
    or a clean teacher is refused when the data are read (the row named), or the rows
    skipped and counted, never a failure in the middle of a run."""
    from mlx_opd.method.views import usable

    from .authors_layout import write_published

    write_published(tmp_path / "d", n=2)
    samples = read_samples(DataConfig(path=str(tmp_path / "d")))[0]
    assert usable(samples, ViewConfig(), "error") == (samples, [])  # the paper's views
    for cfg in (ViewConfig(student="degraded", teacher="clean"), ViewConfig(teacher="clean"),
                ViewConfig(student="plain")):
        with pytest.raises(DataError, match=r"train.jsonl:1: views .* need the full image"):
            usable(samples, cfg, "error")
    with pytest.raises(DataError, match="no sample can be shown"):
        usable(samples, ViewConfig(student="plain"), "skip")
    args = ["train", "--config", str(EXAMPLE), "--set", f"data.path={tmp_path / 'd'}",
            "--set", "views.student=plain", "--set", f"run.out={tmp_path / 'run'}"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "need the full image" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_a_degraded_view_is_the_same_in_another_process_and_under_another_path(tmp_path):
    """The degradation's seed is the sample's id or its file name and line, never the
    path it was read by or Python's per-process hash."""
    import subprocess
    import sys

    (tmp_path / "a").mkdir()
    for f in ("nobox.jsonl", "scene0.png", "scene1.png", "scene2.png"):
        (tmp_path / "a" / f).write_bytes((NOBOX.parent / f).read_bytes())
    rows = [json.loads(x) for x in NOBOX.read_text().splitlines()]
    (tmp_path / "a" / "nobox.jsonl").write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "id"}) + "\n" for r in rows))
    code = ("import sys, hashlib, numpy as np; from mlx_opd.data import read_samples; "
            "from mlx_opd.run.config import DataConfig, ViewConfig; "
            "from mlx_opd.method.views import student_view; "
            "s = read_samples(DataConfig(path=sys.argv[1]), need_boxes=False)[0][1]; "
            "im = student_view(s, ViewConfig(teacher='clean', student='degraded'), 7).image; "
            "print(hashlib.sha256(np.asarray(im).tobytes()).hexdigest())")
    runs = [subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                           cwd=cwd, env={**__import__("os").environ, "PYTHONHASHSEED": seed})
            for path, cwd, seed in ((str(tmp_path / "a" / "nobox.jsonl"), None, "1"),
                                    ("a/nobox.jsonl", str(tmp_path), "2"),
                                    ("./a/../a/nobox.jsonl", str(tmp_path), "3"))]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-400:] for r in runs]
    digests = {r.stdout.strip() for r in runs}
    assert len(digests) == 1  # the same computation in three processes, three path spellings


def test_pair_scenes_refuse_objects_too_big_to_place_half_the_image_apart():
    from mlx_opd.run.config import SynthConfig

    with pytest.raises(ValueError, match="evidence_size must be at most 108 for 224x224"):
        SynthConfig(image_size=(224, 224), evidence_size=110, objects=2)
    SynthConfig(image_size=(224, 224), evidence_size=108, objects=2)


def test_the_demos_base_key_is_unchanged_by_the_new_view_and_synth_fields():
    """Bases cached by earlier versions stay valid: the fields added for other views, at
    their defaults, are left out of the key (change this only with RECIPE_VERSION)."""
    from mlx_opd.toy import demo

    assert demo.DemoRecipe().key() == "ab6db0d877d7"
    assert dataclasses_replace_key(teacher="crops") != "ab6db0d877d7"


def dataclasses_replace_key(**kw) -> str:
    import dataclasses

    from mlx_opd.toy import demo

    return dataclasses.replace(demo.DemoRecipe(), **kw).key()


def test_compare_takes_several_boxes_and_none_for_box_free_views(tiny_dir, tmp_path):
    img = str(ROOT / "examples" / "data" / "scene0.png")
    base = ["compare", "--model", str(tiny_dir["qwen2_5_vl"]), "--image", img, "--question",
            "Same colour?", "--options", "yes", "--options", "no", "--max-tokens", "2"]
    out = tmp_path / "c.json"
    r = CliRunner().invoke(main, base + ["--box", "84,14,98,28", "--box", "230,170,262,202",
                                         "--teacher-view", "crops", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert len(json.loads(out.read_text())["views"]["teacher"]["image_sizes"]) == 2
    r = CliRunner().invoke(main, base + ["--teacher-view", "clean", "--student-view",
                                         "degraded", "--json", str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, base)  # the default crop teacher needs a box
    assert r.exit_code != 0 and "missing the field 'box'" in r.output
