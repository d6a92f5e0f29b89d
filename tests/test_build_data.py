"""build-data: each stage's parsing on the families' documented formats and on broken
answers, the filters, COCO conformance (pycocotools), resumption, and the pipeline end
to end through mlx-vlm's real loader on tiny models."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mlx_opd.builder import grounding
from mlx_opd.builder.config import BuildConfig, MiningConfig, QuestionConfig, RegionConfig
from mlx_opd.builder.consensus import consensus
from mlx_opd.builder.detector import sam3_decision
from mlx_opd.builder.grounding import parse_grounding
from mlx_opd.builder.mining import mine, precision_recall
from mlx_opd.builder.questions import options_of, parse_question, parse_validation
from mlx_opd.builder.regions import Region, filter_regions, read_coco
from mlx_opd.builder.store import Store
from mlx_opd.run.errors import DataError

FORMATS = json.loads((Path(__file__).parent / "fixtures" / "grounding_formats.json").read_text())
PX = 1.0  # px: the cookbooks' own conversions truncate with int()


def _documented():
    for fam, spec in FORMATS["families"].items():
        for ex in spec["examples"]:
            yield pytest.param(fam, spec, ex, id=f"{fam}-{ex['name']}")


def _oracle(fam, spec, box):
    """The conversion each family's authors give (fixture: conversion_source)."""
    W, H = spec["image_size"]
    if grounding.CONVENTIONS[fam] == "abs_input":
        w, h = spec["input_size"]
        return [box[0] / w * W, box[1] / h * H, box[2] / w * W, box[3] / h * H]
    return [box[0] / 1000 * W, box[1] / 1000 * H, box[2] / 1000 * W, box[3] / 1000 * H]


@pytest.mark.parametrize("fam,spec,ex", list(_documented()))
def test_documented_grounding_answers_convert_to_original_pixels(fam, spec, ex):
    dets, problems = parse_grounding(ex["text"], fam, tuple(spec["image_size"]),
                                     tuple(spec.get("input_size") or ()) or None)
    assert [d.label for d in dets] == ex["labels"]
    for d, box in zip(dets, ex["boxes"]):
        assert d.box == pytest.approx(_oracle(fam, spec, box), abs=PX)
    if "drop" in ex:
        assert problems and ex["drop"] in problems[0]
    else:
        assert problems == []


def test_the_same_numbers_mean_different_pixels_per_family():
    text = '[{"bbox_2d": [100, 100, 300, 200], "label": "cup"}]'
    abs_, _ = parse_grounding(text, "qwen2_5_vl", (2000, 1000), (1000, 500))
    rel, _ = parse_grounding(text, "qwen3_vl", (2000, 1000))
    assert abs_[0].box == pytest.approx((200, 200, 600, 400), abs=1e-9)
    assert rel[0].box == pytest.approx((200, 100, 600, 200), abs=1e-9)


BROKEN = [
    ("qwen3_vl", '```json\n[\n\t{"bbox_2d": [10, 10, 200, 200], "label": "cup"},\n\t{"bbox_2d": [300, 3',
     ["cup"], "broken JSON"),  # truncated mid-object: the finished one is kept
    ("qwen3_vl", '```json\n[{"bbox_2d": [10, 10, 200, 200], "label": "cup"}]', ["cup"], None),
    ("qwen3_vl", "I see a cup and a plate.", [], "no JSON"),
    ("qwen3_vl", '[{"bbox_2d": [10, 10, "x", 200], "label": "cup"}]', [], "not 4 numbers"),
    ("qwen3_vl", '[{"bbox_2d": [300, 10, 200, 200], "label": "cup"}]', [], "inverted"),
    ("qwen3_vl", '[{"bbox_2d": [10, 10, 1500, 200], "label": "cup"}]', [], "outside"),
    ("qwen3_vl", '[{"bbox_2d": [10, 10, 200, 200]}]', [], "no label"),
    ("qwen3_vl", '{"bbox_2d": [10, 10, 200, 200], "label": "cup"}', ["cup"], None),
    ("qwen3_vl", '[{"label": "cup"}, 7]', [], "no bbox_2d"),
    ("qwen2_5_vl", '[{"bbox_2d": [1, 2, 3, 4], "label": "cup"}] and then some words', ["cup"], None),
    ("qwen2_vl", "<|object_ref_start|>cup<|object_ref_end|><|box_start|>(10,20),(30", [], "no <|box_start|>"),
    ("qwen2_vl", "<|box_start|>(10,20),(30,40)<|box_end|>", [], "no label"),
    ("qwen2_vl", "<|object_ref_start|>a<|object_ref_end|> and <|object_ref_start|>b"
     "<|object_ref_end|><|box_start|>(10,20),(30,40)<|box_end|>", ["b"], None),
]


@pytest.mark.parametrize("fam,text,labels,problem", BROKEN)
def test_broken_grounding_answers_drop_with_a_reason(fam, text, labels, problem):
    dets, problems = parse_grounding(text, fam, (1000, 800), (500, 400))
    assert [d.label for d in dets] == labels
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="--boxes"):
        parse_grounding("[]", "llava", (10, 10))


def test_region_filters_name_their_reason():
    size = (1000, 1000)
    regs = [Region("cup", (0, 0, 100, 100)), Region("big", (0, 0, 400, 400)),
            Region("dot", (500, 500, 505, 540)), Region("mug", (5, 5, 100, 100)),
            Region("sign", (600, 600, 700, 700)), Region("sign", (800, 800, 900, 900)),
            Region("pen", (200, 600, 260, 660))]
    kept, dropped = filter_regions(regs, size, RegionConfig(max_per_image=2))
    assert [r.label for r in kept] == ["cup", "pen"]
    reasons = {r.label + str(r.box[0]): why for r, why in dropped}
    assert reasons["big0"].startswith("too large: area ratio 0.16")
    assert reasons["dot500"].startswith("too small: side 5 px")
    assert reasons["mug5"].startswith("duplicate box: of 'cup'")
    assert "occurs 2 times" in reasons["sign600"] and "occurs 2 times" in reasons["sign800"]
    kept, dropped = filter_regions(regs[:1] + regs[6:], size, RegionConfig(max_per_image=1))
    assert [why for _, why in dropped] == ["over max_per_image: 1"]
    whole = [Region("photo", (0, 0, 1000, 1000))]  # max_area_ratio 1: the filter is off
    assert filter_regions(whole, size, RegionConfig(max_area_ratio=1.0))[0] == whole
    assert filter_regions(whole, size, RegionConfig(max_area_ratio=0.99))[0] == []


def _coco(tmp_path, anns, images=None):
    doc = {"images": images or [{"id": 1, "file_name": "a/x.jpg", "width": 640, "height": 480}],
           "annotations": anns, "categories": [{"id": 3, "name": "car"}, {"id": 5, "name": "dog"}]}
    p = tmp_path / "boxes.json"
    p.write_text(json.dumps(doc))
    return p


def test_coco_boxes_read_as_pycocotools_reads_them(tmp_path):
    pycoco = pytest.importorskip("pycocotools.coco")
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10.5, 20, 30, 40], "area": 1200,
             "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [100, 50, 60, 25], "area": 1500,
             "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [0, 0, 600, 400], "area": 240000,
             "iscrowd": 1}]
    p = _coco(tmp_path, anns)
    ours = read_coco(p)["a/x.jpg"]
    ref = pycoco.COCO(str(p))
    theirs = [a for a in ref.loadAnns(ref.getAnnIds(imgIds=[1])) if not a["iscrowd"]]
    assert len(ours) == len(theirs) == 2
    for r, a in zip(ours, theirs):
        x, y, w, h = a["bbox"]
        assert r.box == pytest.approx((x, y, x + w, y + h), abs=1e-9)
        assert r.label == ref.loadCats(a["category_id"])[0]["name"]


@pytest.mark.parametrize("anns,match", [
    ([{"id": 1, "image_id": 9, "category_id": 3, "bbox": [1, 1, 2, 2]}], r"annotations\[0\].*image_id"),
    ([{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 0, 2]}], r"annotations\[0\].*positive"),
])
def test_bad_coco_files_name_the_annotation(tmp_path, anns, match):
    with pytest.raises(DataError, match=match):
        read_coco(_coco(tmp_path, anns))
    (tmp_path / "x.json").write_text("{\n  oops")
    with pytest.raises(DataError, match=r"x.json:2"):
        read_coco(tmp_path / "x.json")


QUESTIONS = [
    ('{"question": "What colour is the mug?", "answer": "red", "distractors": ["blue", "green", "white"]}', ""),
    ('```json\n{"question": "What colour is the mug?", "answer": "red", "distractors": ["Red", "blue", "green"]}\n```',
     "too few distinct distractors"),
    ("[]", "declined"),
    ('{"question": "What colour is the mug?", "answer": "red", "distractors": ["blue", "gr', "unparsable"),
    ('{"question": "", "answer": "red", "distractors": ["a", "b", "c"]}', "no question text"),
    ('{"question": "What colour is the mug?", "distractors": ["a", "b", "c"]}', "no answer"),
    ("Sure! The mug is red.", "unparsable"),
]


@pytest.mark.parametrize("text,why", QUESTIONS)
def test_question_answers_parse_or_drop_with_a_reason(text, why):
    q, reason = parse_question(text, "colour")
    assert (q is None) == bool(why)
    assert why in reason
    if q is not None:
        assert (q.question, q.answer, q.distractors) == ("What colour is the mug?", "red",
                                                         ("blue", "green", "white"))


def test_options_are_shuffled_per_item_and_the_letter_names_the_answer():
    q, _ = parse_question(QUESTIONS[0][0], "colour")
    seen = set()
    for seed in range(12):
        opts, letter = options_of(q, f"s{seed}")
        assert sorted(opts) == sorted(["red", "blue", "green", "white"])
        assert opts["ABCD".index(letter)] == "red"
        assert options_of(q, f"s{seed}") == (opts, letter)
        seen.add(letter)
    assert len(seen) > 1


@pytest.mark.parametrize("text,valid,why", [
    ("The crop shows one mug.\nVALID: Yes\nREASON: clear", True, "clear"),
    ("VALID: **No**\nREASON: two mugs in the photo\n\nmore", False, "two mugs in the photo"),
    ("It looks fine to me.", False, "no VALID"),
    ("**VALID**: Yes\n**REASON**: one mug", True, ""),
])
def test_validation_verdicts(text, valid, why):
    ok, reason = parse_validation(text)
    assert ok is valid and why in reason


def test_consensus_rules():
    assert consensus(list("AAAAAABC"), "A").keep
    c = consensus(list("AAAAABBC"), "A")
    assert not c.keep and "5/8" in c.reason
    c = consensus(list("BBBBBBBA"), "A")
    assert not c.keep and "disagrees" in c.reason
    assert consensus(list("BBBBBBBA"), None).majority == "B"
    assert consensus([None] * 8, "A").reason.startswith("crop answers unreadable")
    assert consensus(list("AABB"), None, 0.5).majority == "A"  # ties: first letter


def test_mining_and_its_measure():
    assert mine(list("ABBBBBBB"), "A").keep
    m = mine(list("AAAABBBB"), "A")
    assert not m.keep and m.full_acc == 0.5
    pr = precision_recall([True, True, False, False], [True, False, True, False])
    assert (pr["tp"], pr["fp"], pr["fn"]) == (1, 1, 1)
    assert pr["precision"] == 0.5 and pr["recall"] == 0.5


def test_sam3_rule():
    r, why = sam3_decision("cup", [[1, 2, 30, 40]], [0.9])
    assert r.box == (1.0, 2.0, 30.0, 40.0) and r.source == "sam3" and why == ""
    assert "no 'cup'" in sam3_decision("cup", [[1, 2, 3, 4]], [0.5])[1]
    assert "not unique" in sam3_decision("cup", [[1, 2, 3, 4], [5, 6, 7, 8]], [0.8, 0.9])[1]


def test_store_ignores_a_cut_short_last_line(tmp_path):
    s = Store(tmp_path, "x")
    s.add([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with open(s.path, "a") as f:
        f.write('{"id": "c", "v"')
    again = Store(tmp_path, "x")
    assert sorted(again.records) == ["a", "b"]
    again.add([{"id": "c", "v": 3}])
    assert sorted(Store(tmp_path, "x").records) == ["a", "b", "c"]


def test_config_errors_say_how_to_fix():
    with pytest.raises(ValueError, match="--options"):
        BuildConfig(questions=QuestionConfig(template="What colour is the {label}?"))
    with pytest.raises(ValueError, match="--detector-model"):
        BuildConfig(detector="sam3")
    for bad in ("What is {colour}?", "What is {label.x}?", "What is {label!r}?"):
        with pytest.raises(ValueError, match="only {label}"):
            BuildConfig(questions=QuestionConfig(template=bad, options=("a", "b")))
    with pytest.raises(ValueError, match="at most 10"):
        BuildConfig(questions=QuestionConfig(template="{label}?", options=tuple("abcdefghijk")))
    with pytest.raises(ValueError, match="--limit"):
        BuildConfig(limit=0)


def test_flat_settings_fill_the_nested_config():
    """build-data's options, flat, land in their sections; None keeps each default."""
    from mlx_opd.builder.config import ConsensusConfig, from_flat

    cfg = from_flat({"images": "p", "model": "m", "k": 5, "m": None, "mining": False,
                     "min_side": 30, "template": "Is the {label} red?",
                     "options": ("yes", "no"), "limit": None})
    assert (cfg.images, cfg.consensus.k, cfg.regions.min_side) == ("p", 5, 30)
    assert cfg.mining == MiningConfig(enabled=False) and cfg.limit is None
    assert cfg.questions.options == ("yes", "no") and cfg.regions.max_area_ratio == \
        RegionConfig.max_area_ratio and ConsensusConfig().k != 5
    with pytest.raises(ValueError, match="unknown settings colour"):
        from_flat({"colour": "red"})


# --- end to end, through mlx-vlm's real loader ------------------------------------------

def _photos(folder: Path, n: int = 3) -> Path:
    from mlx_opd.run.config import SynthConfig
    from mlx_opd.toy.synth import write_photo_folder

    paths = write_photo_folder(folder, n, 5, SynthConfig(image_size=(96, 80), evidence_size=12,
                                                         clutter=3))
    (paths["photos"] / "broken.jpg").write_bytes(b"not an image")
    Image.new("RGB", (8, 8)).save(paths["photos"] / "tiny.png")
    return paths


def _listing(root: Path) -> set:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_garbage_model_gives_an_empty_valid_dataset_with_its_reasons(tmp_path, tiny_dir,
                                                                    family):
    from mlx_opd.builder.pipeline import build_data

    paths = _photos(tmp_path / "in")
    before = _listing(tmp_path / "in")
    cfg = BuildConfig(images=str(paths["photos"]), model=str(tiny_dir[family]),
                      out=str(tmp_path / "data"), list_tokens=12, batch=2)
    rep = build_data(cfg, log=lambda m: None)
    st = rep["stages"]
    assert st["images"] == {"in": 5, "out": 3, "dropped": {"unreadable image": 1,
                                                            "tiny image": 1}}
    assert st["regions"]["out"] == 0 and sum(st["regions"]["parse_problems"].values()) == 3
    assert rep["output"] == {"train": 0, "heldout": 0}
    data = tmp_path / "data"
    assert (data / "train.jsonl").read_text() == "" and (data / "heldout.jsonl").exists()
    assert json.loads((data / "report.json").read_text())["stages"] == st
    assert "build-data" in (data / "sheet.html").read_text()
    assert _listing(tmp_path / "in") == before  # nothing written beside the photos
    # the user's boxes, questions written by the (garbage) model: dropped with the reason
    rep = build_data(BuildConfig(**{**cfg.__dict__, "boxes": str(paths["boxes"]),
                                    "out": str(tmp_path / "data2"), "question_tokens": 12}),
                     log=lambda m: None)
    q = rep["stages"]["questions"]
    assert (q["in"], q["out"]) == (3, 0) and sum(q["dropped"].values()) == 3
    assert set(q["dropped"]) <= {"unparsable question", "declined"}


@pytest.fixture(scope="module")
def letter_models(tmp_path_factory, tiny_dir):
    """letter -> a tiny qwen2_5_vl checkpoint taught (supervised, a few steps) to answer
    that option letter to any image prompt: a builder whose crop answers agree ('A') and a
    miner that never gets the full image right ('B'), to drive every stage for real."""
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_opd import models
    from mlx_opd.models.layouts import to_hf_weights
    from mlx_opd.toy.sft import train_supervised
    from tests.conftest import random_image

    out = {}
    for letter in "AB":
        L = models.load(tiny_dir["qwen2_5_vl"])
        eos = models.eos_token_ids(L)[0]
        target = L.tokenizer.encode(letter, add_special_tokens=False) + [eos]
        sizes = [(24, 24), (32, 48), (80, 96), (56, 56), (80, 64), (40, 96), (96, 80), (28, 60)]
        ex = [(models.encode(L, random_image(i, h, w), f"What colour is the small {i}?\n"
                             "A. red\nB. green\nC. blue\nD. yellow\nAnswer with the "
                             "option's letter from the given choices directly."), target)
              for i, (h, w) in enumerate(sizes)]
        L.model.unfreeze()
        train_supervised(L, ex, 60, 8, 3e-3)
        folder = tmp_path_factory.mktemp(f"says-{letter}")
        for f in Path(tiny_dir["qwen2_5_vl"]).iterdir():
            if f.name != "model.safetensors":
                shutil.copy2(f, folder / f.name)
        mx.save_safetensors(str(folder / "model.safetensors"), to_hf_weights(
            "qwen2_5_vl", dict(tree_flatten(L.model.parameters()))), metadata={"format": "pt"})
        out[letter] = folder
    return out


def _template_cfg(paths, model, out, **kw):
    from mlx_opd.builder.config import ConsensusConfig

    return BuildConfig(images=str(paths["photos"]), model=str(model), out=str(out),
                       boxes=str(paths["boxes"]), questions=QuestionConfig(
                           template="What colour is the small {label}?",
                           options=("red", "green", "blue", "yellow")),
                       consensus=ConsensusConfig(k=4), mining=MiningConfig(m=4),
                       regions=RegionConfig(max_area_ratio=1.0, min_side=1), batch=3,
                       heldout_share=0.5, **kw)


def test_every_stage_runs_and_a_cut_short_build_resumes_to_the_same_result(tmp_path,
                                                                           letter_models):
    from mlx_opd.builder.pipeline import build_data
    from mlx_opd.data import read_samples
    from mlx_opd.run.config import DataConfig

    paths = _photos(tmp_path / "in", n=4)
    cfg = _template_cfg(paths, letter_models["A"], tmp_path / "data",
                        mine_with=str(letter_models["B"]))
    rep = build_data(cfg, log=lambda m: None)
    st = rep["stages"]
    assert (st["consensus"]["in"], st["consensus"]["out"]) == (4, 4)
    assert (st["mining"]["in"], st["mining"]["out"]) == (4, 4)
    assert st["mining"]["gap_kept"] == {"n": 4, "crop": 1.0, "full": 0.0, "gap": 1.0}
    assert rep["output"]["train"] + rep["output"]["heldout"] == 4
    rows = []
    for name in ("train", "heldout"):
        p = tmp_path / "data" / f"{name}.jsonl"
        if p.read_text():
            rows += read_samples(DataConfig(path=str(p)))[0]
    assert len(rows) == 4
    for s in rows:
        assert s.answer == "A" and s.options == ("red", "green", "blue", "yellow")
        assert Path(s.image).is_relative_to(tmp_path / "data")
    # interrupted in the middle of the mining stage: the resumed build equals the whole one
    build = tmp_path / "data" / ".build"
    whole = {n: (build / f"{n}.jsonl").read_text() for n in ("consensus", "mining")}
    lines = whole["mining"].splitlines(keepends=True)
    (build / "mining.jsonl").write_text(lines[0] + lines[1][:10])
    (tmp_path / "data" / "train.jsonl").unlink()
    assert build_data(cfg, log=lambda m: None)["stages"] == st
    got = [json.loads(x) for x in (build / "mining.jsonl").read_text().splitlines()[-3:]]
    assert sorted(got, key=lambda r: r["id"]) == sorted(
        [json.loads(x) for x in lines[1:]], key=lambda r: r["id"])
    # other settings refuse to resume, and say which
    with pytest.raises(DataError, match="differ in: mine_with"):
        build_data(_template_cfg(paths, letter_models["A"], tmp_path / "data",
                                 mine_with=str(letter_models["A"])), log=lambda m: None)


def test_a_photo_lost_mid_build_drops_its_items_and_the_build_goes_on(tmp_path,
                                                                        letter_models):
    """Deleted after the images stage, or changed to another size: the stage that meets it
    drops its items with the reason, the others are kept, the sheet shows it."""
    from mlx_opd.builder.pipeline import build_data, summary_text

    paths = _photos(tmp_path / "in", n=4)
    cfg = _template_cfg(paths, letter_models["A"], tmp_path / "data",
                        mine_with=str(letter_models["B"]))
    build = tmp_path / "data" / ".build"
    assert build_data(cfg, log=lambda m: None)["stages"]["mining"]["out"] == 4
    photos = sorted(paths["photos"].glob("0*.png"))
    assert len(photos) == 4
    # gone before the consensus stage (its records dropped: as if it had stopped there)
    photos[0].unlink()
    for stage in ("consensus", "mining"):
        (build / f"{stage}.jsonl").unlink()
    rep = build_data(cfg, log=lambda m: None)
    st = rep["stages"]
    assert (st["consensus"]["in"], st["consensus"]["out"]) == (4, 3)
    assert st["consensus"]["dropped"] == {"unreadable image": 1}
    assert (st["mining"]["in"], st["mining"]["out"]) == (3, 3)
    assert rep["output"]["train"] + rep["output"]["heldout"] == 3
    assert "(photo lost)" in (tmp_path / "data" / "sheet.html").read_text()
    # and changed to another size before the regions stage: dropped there
    Image.open(photos[1]).resize((50, 40)).save(photos[1])
    for stage in ("regions", "questions", "consensus", "mining"):
        (build / f"{stage}.jsonl").unlink()
    rep = build_data(cfg, log=lambda m: None)
    assert rep["stages"]["regions"]["parse_problems"] == {"unreadable image": 1,
                                                          "changed image": 1}
    assert rep["output"]["train"] + rep["output"]["heldout"] == 2
    # and gone after mining, before the outputs (DATA's copy removed: it is copied again)
    photos[2].unlink()
    shutil.rmtree(tmp_path / "data" / "images")
    rep = build_data(cfg, log=lambda m: None)
    assert rep["stages"]["mining"]["out"] == 2  # mining kept it ...
    assert rep["output"]["train"] + rep["output"]["heldout"] == 1  # ... the output could not
    assert (rep["output"]["lost"], rep["output"]["lost_images"]) == (1, [photos[2].name])
    assert "dropped: output (1)" in (tmp_path / "data" / "sheet.html").read_text()
    assert "1 kept item(s) left out" in summary_text(rep, tmp_path / "data")


def test_a_kept_row_whose_photo_is_gone_at_output_is_left_out_and_counted(tmp_path):
    from mlx_opd.builder.output import write_rows
    from mlx_opd.builder.pipeline import open_photo

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (6, 4)).save(tmp_path / "changed.png")
    sizes = {"a.png": [4, 4], "gone.png": [4, 4], "changed.png": [4, 4]}
    rows = [{"id": f"{n}#0", "image": f"images/{n}", "provenance": {"source_image": n}}
            for n in ("a.png", "gone.png", "changed.png")]
    counts, lost = write_rows(tmp_path / "data", rows, tmp_path, 0.0, 0,
                              lambda rel: open_photo(tmp_path, rel, sizes[rel])[1])
    assert counts == {"train": 1, "heldout": 0, "lost": 2,
                      "lost_images": ["changed.png", "gone.png"]}
    assert sorted(lost) == ["changed.png#0", "gone.png#0"]
    assert lost["gone.png#0"].startswith("unreadable image: image file not found")
    assert lost["changed.png#0"].startswith("changed image: 6x4, 4x4 at the images stage")
    assert (tmp_path / "data" / "images" / "a.png").is_file()
    assert not (tmp_path / "data" / "images" / "changed.png").exists()
    assert len((tmp_path / "data" / "train.jsonl").read_text().splitlines()) == 1


def test_mining_with_the_builder_itself_drops_items_with_no_gap(tmp_path, letter_models):
    from mlx_opd.builder.pipeline import build_data

    paths = _photos(tmp_path / "in", n=3)
    rep = build_data(_template_cfg(paths, letter_models["A"], tmp_path / "data"),
                     log=lambda m: None)
    st = rep["stages"]["mining"]
    assert (st["in"], st["out"]) == (3, 0)
    assert st["dropped"] == {"no gap": 3}
    from mlx_opd.builder.pipeline import summary_text

    text = summary_text(rep, tmp_path / "data")  # an empty build recommends no training
    assert "nothing was kept" in text and "mlx-opd train" not in text
    assert st["gap_dropped"] == {"n": 3, "crop": 1.0, "full": 1.0, "gap": 0.0}


def test_cli_build_data_runs_and_says_what_next(tmp_path, letter_models):
    from click.testing import CliRunner

    from mlx_opd.cli import main

    paths = _photos(tmp_path / "in", n=2)
    out = tmp_path / "data"
    args = ["build-data", "--images", str(paths["photos"]), "--model", str(letter_models["A"]),
            "--mine-with", str(letter_models["B"]), "--boxes", str(paths["boxes"]),
            "--question", "What colour is the small {label}?", "--options",
            "red,green,blue,yellow", "--k", "2", "--m", "2", "--max-area-ratio", "1",
            "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "sheet.html" in r.output and f"--model {letter_models['B']}" in r.output
    rep = json.loads((out / "report.json").read_text())
    from tests.next_steps import run_next

    run_next(r.output)  # the training it suggests runs as printed (the miner is the model)
    assert rep["output"]["train"] + rep["output"]["heldout"] == 2
    again = CliRunner().invoke(main, args)  # a finished build resumes to the same result
    assert again.exit_code == 0 and json.loads((out / "report.json").read_text())[
        "stages"] == rep["stages"]


def test_build_data_refuses_inputs_that_would_lose_or_mix_up_photos(tmp_path, tiny_dir):
    from mlx_opd.builder.pipeline import build_data

    paths = _photos(tmp_path / "in", n=2)
    model = str(tiny_dir["qwen2_5_vl"])
    inside = BuildConfig(images=str(paths["photos"]), model=model, out=str(paths["photos"]))
    with pytest.raises(DataError, match="holds --images"):
        build_data(inside, force=True, log=lambda m: None)
    assert len(list(paths["photos"].iterdir())) == 4  # --force deleted nothing
    coco = json.loads(paths["boxes"].read_text())
    for im in coco["images"]:
        im["file_name"] = "elsewhere/" + im["file_name"] + ".jpg"
    (tmp_path / "other.json").write_text(json.dumps(coco))
    cfg = BuildConfig(images=str(paths["photos"]), model=model, out=str(tmp_path / "data"),
                      boxes=str(tmp_path / "other.json"))
    with pytest.raises(DataError, match="no photo under --images is named in --boxes"):
        build_data(cfg, log=lambda m: None)


def test_cli_build_data_errors_are_one_line(tmp_path, tiny_dir):
    from click.testing import CliRunner

    from mlx_opd.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["build-data", "--images", str(tmp_path / "photos"), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "holds files build-data did not write" in r.output
    assert "Traceback" not in r.output and (tmp_path / "out" / "mine.txt").exists()
    r = CliRunner().invoke(main, ["build-data", "--images", str(tmp_path / "empty"), "--model",
                                  str(tiny_dir["qwen2_5_vl"]), "--out", str(tmp_path / "new")])
    assert r.exit_code != 0 and "no images under" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_items_of_one_photo_share_its_vision_features_exactly(loaded, family):
    """Mining asks every item of a photo on its full view: the vision tower runs once per
    photo (ask.shared_image_features); the samples equal those of separate prompts."""
    import numpy as np

    from mlx_opd import models
    from mlx_opd.builder import ask
    from mlx_opd.method import rollout
    from tests.conftest import FP32, random_image

    L = loaded(family)
    a, b = random_image(1, 56, 84), random_image(2, 56, 56)
    prompts = [([a], "What colour is the cup?"), ([a], "What is on the sign?"),
               ([b], "What colour is the cup?")]
    encs = [models.encode(L, ims, t) for ims, t in prompts]
    keys = [ask.item_key(0, "t", str(i)) for i in range(3)]
    feats = ask.shared_image_features(L, encs, ["a", "a", "b"])
    assert feats is not None and len(feats) == 3
    alone = rollout.sample_prompts(L, encs, 3, 4, temperature=1.0, keys=keys)
    shared = rollout.sample_prompts(L, encs, 3, 4, temperature=1.0, keys=keys, features=feats)
    for x, y in zip(alone, shared):
        assert x.token_ids == y.token_ids
        for lx, ly in zip(x.logprobs, y.logprobs):
            np.testing.assert_allclose(lx, ly, **FP32)


def test_the_fixture_checker_finds_quotes_at_the_commit_and_reports_what_it_cannot(tmp_path):
    """tests/fixtures/check_grounding_formats.py on a repository of ours: quotes found in a
    notebook's cells and outputs, a changed quote and a word that must be absent caught."""
    import importlib.util
    import subprocess

    spec = importlib.util.spec_from_file_location(
        "check_grounding_formats", Path(__file__).parent / "fixtures" / "check_grounding_formats.py")
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    check = checker.check

    repo = tmp_path / "r"
    repo.mkdir()
    nb = {"cells": [{"source": ["Qwen2-VL using the relative\n", "coordinated"],
                     "outputs": [{"text": ["```json\n", "[{\"bbox_2d\": [1, 2, 3, 4]}]\n",
                                           "```"]}]}]}
    (repo / "a.ipynb").write_text(json.dumps(nb))
    (repo / "README.md").write_text("Qwen3.5 is a model.\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "x"], check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    src = {"repo": "o/r", "commit": commit, "path": "a.ipynb"}
    fixture = {"families": {"f": {
        "convention_source": {**src, "quote": "Qwen2-VL using the relative coordinated"},
        "other_source": {**src, "quote": "Qwen2-VL using the absolute"},
        "doc_source": {**src, "path": "README.md", "absent": ["bbox"]},
        "bad_source": {**src, "path": "README.md", "absent": ["model"]},
        "examples": [{"name": "e", "text": "```json\n[{\"bbox_2d\": [1, 2, 3, 4]}]\n```",
                      "source": src},
                     {"name": "elsewhere", "text": "x", "source": {"repo": "p/q", "path": "b"}}]}}}
    ok, bad, skipped = check(fixture, {"o/r": str(repo / ".git")})
    assert [x.split(":")[0] for x in ok] == ["f.convention_source", "f.doc_source",
                                             "f.examples.e"]
    assert [x.split(":")[0] for x in bad] == ["f.other_source", "f.bad_source"]
    assert "not found: 'Qwen2-VL using the absolute'" in bad[0]
    assert "present: 'model'" in bad[1]
    assert skipped == ["f.examples.elsewhere: p/q b (no snapshot given)"]


def test_coco_boxes_match_photos_by_path_else_by_a_name_unique_on_both_sides():
    from mlx_opd.builder.pipeline import coco_index

    coco = {"a/x.jpg": ["ax"], "y.jpg": ["y"], "p/z.jpg": ["pz"], "q/z.jpg": ["qz"],
            "w.jpg": ["w"]}
    photos = ["a/x.jpg", "b/y.jpg", "c/z.jpg", "d/w.jpg", "e/w.jpg", "v.jpg"]
    assert coco_index(coco, photos) == {
        "a/x.jpg": ["ax"],  # by path
        "b/y.jpg": ["y"],   # by name: one photo and one COCO image so named
        # c/z.jpg: two COCO images named z.jpg; d/ and e/w.jpg: two photos named w.jpg
    }
    assert coco_index(coco, []) == {}
