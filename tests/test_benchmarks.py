"""The paper's benchmarks: fixtures in each published layout, prompts equal to what the
authors' own harness sends for the same files (recorded from their code), answers read as
their rules read them (and where they misread), scores against direct counts and a float64
oracle, and `eval --benchmark` end to end with resume, the gap and the hub cache."""

import base64
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from mlx_opd.cli import main
from mlx_opd.evaluation.benchmarks import answers, registry, scores
from mlx_opd.evaluation.benchmarks.cache import open_cache
from mlx_opd.evaluation.benchmarks.item import Unreadable
from mlx_opd.evaluation.benchmarks.judge import read_verdict
from mlx_opd.evaluation.benchmarks.names import BENCHMARK_NAMES, VARIANTS
from mlx_opd.evaluation.benchmarks.report import compare, load_eval
from mlx_opd.evaluation.benchmarks.vstar import rotate_correct_first
from mlx_opd.run.files import OutputExistsError

from .answer_table import TABLE

FIX = Path(__file__).parent / "fixtures"
AUTHORS = json.loads((FIX / "authors_prompts.json").read_text())
READINGS = json.loads((FIX / "authors_readings.json").read_text())["readings"]
FOLDERS = {"mme-realworld/en": "mme-realworld", "mme-realworld/lite": "mme-realworld",
           "mme-realworld/cn": "mme-realworld-cn"}
ALL = sorted(AUTHORS["benchmarks"])


def fixture_dir(key):
    return FIX / FOLDERS.get(key, key)


def read_items(key):
    name, _, variant = key.partition("/")
    bench = registry.get(name, variant or None)
    total, items = bench.read(fixture_dir(key))
    return bench, total, list(items)


def test_benchmark_names_match_registry():
    assert tuple(registry.BENCHMARKS) == BENCHMARK_NAMES
    for n, variants in VARIANTS.items():
        assert tuple(registry.BENCHMARKS[n]) == variants
    with pytest.raises(ValueError, match="did you mean 'pope'"):
        registry.get("popee")
    assert registry.get("mme-realworld", "CN").title == "MME-RealWorld (CN)"
    # `mme-realworld` is the full English set, as the authors' harness names it
    assert registry.get("mme-realworld").hub_id == "yifanzhang114/MME-RealWorld-Lmms-eval"
    with pytest.raises(ValueError, match="must be one of en, lite, cn"):
        registry.get("mme-realworld", "zh")


@pytest.mark.parametrize("key", ALL)
def test_benchmark_prompt_is_what_the_authors_harness_sends(key):
    """The authors' eval/prepare_data.py run on these same fixture files
    (tests/fixtures/record_authors_prompts.py) gives, row for row, our prompt and gold."""
    bench, total, items = read_items(key)
    theirs = AUTHORS["benchmarks"][key]
    assert not [i for i in items if isinstance(i, Unreadable)]
    assert total == len(items) == len(theirs)  # POPE: the default config's rows, once
    for item, t in zip(items, theirs):
        assert bench.prompt(item) == t["sent"]  # character for character
        kind = item.kind or bench.answer_kind
        gold = t["response"].strip().strip("()").upper() if kind == "letter" else t["response"]
        assert item.answer == gold


def test_benchmark_ids_are_unique_and_pope_reads_the_default_config_once():
    for key in ALL:
        _, _, items = read_items(key)
        ids = [i.id for i in items]
        assert len(ids) == len(set(ids)), key
    _, total, items = read_items("pope")
    raw = pq.read_table(FIX / "pope/data/test-00000-of-00001.parquet")
    assert total == raw.num_rows == 5  # Full/ holds the same 5 again and is not read
    assert len({r["question_id"] for r in raw.to_pylist()}) < raw.num_rows  # ids repeat


def test_benchmark_options_are_split_as_written():
    """Options matter beyond the prompt: answers are also matched by option text."""
    _, _, items = read_items("mmstar")
    assert [i.options for i in items] == [
        ("a red ball", "a blue box", "a green tree", "nothing, the corner is empty"),
        ("Yes", "No"),                      # newline-separated
        ("1", "2", "3"),                    # MathVista's Hint/Question/Choices layout
        ("yes", "no"),                      # `nan` padding dropped
        ("a ball", "a box", "a tree")]
    _, _, items = read_items("mmvp")
    assert items[0].options == ("Yes", "No")
    _, _, items = read_items("mme-realworld/cn")
    assert items[0].options == ("绿色", "红色", "蓝色", "黄色", "图像中没有")
    _, _, items = read_items("hrbench4k")
    assert items[0].options == ("blue", "green", "white", "")  # D empty: left out of the prompt


def test_benchmark_fixtures_keep_the_published_layouts():
    """Column names, types and image encodings (tests/fixtures/make_benchmarks.py cites
    where each was read)."""
    hr = pq.read_table(FIX / "hrbench4k/hr_bench_4k.parquet")
    assert hr.schema.names == ["index", "question", "answer", "category", "A", "B", "C", "D",
                               "cycle_category", "image"]
    assert str(hr.schema.field("index").type) == "int64"
    assert str(hr.schema.field("image").type) == "string"  # base64 JPEG
    Image.open(io.BytesIO(base64.b64decode(hr.column("image")[0].as_py()))).verify()
    mme = pq.read_table(next((FIX / "mme-realworld/data").glob("*.parquet")))
    assert {"index", "question", "multi-choice options", "answer", "category", "l2-category",
            "bytes"} <= set(mme.schema.names)
    assert str(mme.schema.field("index").type) == "int64"
    assert str(mme.schema.field("multi-choice options").type) == "list<element: string>"
    assert str(pq.read_schema(FIX / "mmstar/mmstar.parquet").field("image").type) == "binary"
    for folder in ("cvbench", "pope", "zoombench"):
        t = pq.read_table(next((FIX / folder).glob("**/*.parquet")))
        assert str(t.schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert {"id", "query", "response", "image", "crop_image"} <= set(
        pq.read_schema(FIX / "zoombench/data/test.parquet").names)
    cv = pq.read_table(FIX / "cvbench/test_2d.parquet")
    assert {"idx", "type", "task", "question", "choices", "answer", "prompt", "source"} <= set(
        cv.schema.names) and cv.column("answer")[0].as_py().startswith("(")
    with open(FIX / "mmvp/Questions.csv", newline="") as f:
        assert next(csv.reader(f)) == ["Index", "Question", "Options", "Correct Answer"]
    assert (FIX / "mmvp/MMVP Images/1.jpg").exists()
    q = json.loads((FIX / "vstar/test_questions.jsonl").read_text().splitlines()[0])
    assert set(q) == {"image", "text", "category", "question_id", "label"}
    ann = json.loads((FIX / "vstar" / q["image"]).with_suffix(".json").read_text())
    assert set(ann) == {"target_object", "bbox", "question", "options"}
    vp = json.loads((FIX / "visualprobe/VisualProbe_Easy/val.json").read_text())
    assert set(vp[0]) == {"images", "problem", "solution"}
    assert vp[0]["images"][0].startswith("VisualProbe_Easy/")


def test_benchmark_vstar_boxes_and_folder_only_layout(tmp_path):
    bench = registry.get("vstar")
    _, items = bench.read(FIX / "vstar")
    items = list(items)
    assert all(i.box is not None for i in items)
    ann = json.loads((FIX / "vstar/relative_position/sa_201.json").read_text())
    (x, y, w, h), (x2, y2, w2, h2) = ann["bbox"]
    rp = next(i for i in items if i.extra["image"].endswith("sa_201.jpg"))
    assert rp.box == (min(x, x2), min(y, y2), max(x + w, x2 + w2), max(y + h, y2 + h2))
    # lmms-lab's parquet (the authors' source) has the same text and no boxes
    _, lm = bench.read(FIX / "vstar-lmms")
    lm = list(lm)
    assert [bench.prompt(i) for i in lm] == [bench.prompt(i) for i in items]
    assert all(i.box is None and not i.has_crop_view for i in lm)
    # without test_questions.jsonl: options from NAME.json, correct one moved off "A" by hash
    shutil.copytree(FIX / "vstar", tmp_path / "v")
    (tmp_path / "v/test_questions.jsonl").unlink()
    _, items2 = bench.read(tmp_path / "v")
    for it in items2:
        raw = json.loads((tmp_path / "v" / it.extra["image"]).with_suffix(".json").read_text())
        assert sorted(it.options) == sorted(raw["options"])
        assert it.options["ABCD".index(it.answer)] == raw["options"][0]
    letters = {rotate_correct_first(f"x/{i}", ["a", "b", "c", "d"])[1] for i in range(40)}
    assert letters == set("ABCD")


@pytest.mark.parametrize("row", TABLE, ids=[f"{i}:{r[0][:24]}" for i, r in enumerate(TABLE)])
def test_benchmark_answer_table(row):
    reply, kind, options, lower, gold, want, want_correct, _source = row
    parsed, correct = answers.grade(kind, reply, gold, options, lower)
    assert parsed == want and correct == want_correct


def test_benchmark_answer_table_against_the_authors_rules():
    """Where the authors' own rules (their code, recorded) score a reply right, ours do too,
    except replies naming two options; where theirs raise or hand the reply to their LLM
    judge, ours read what a person reads."""
    assert len(TABLE) >= 30 and [r["reply"] for r in READINGS] == [t[0] for t in TABLE]
    for (reply, kind, options, lower, gold, *_), theirs in zip(TABLE, READINGS):
        _, ours = answers.grade(kind, reply, gold, options, lower)
        if theirs["authors"] == "correct" and reply != "B and C":
            assert ours, reply
    assert sum(r["authors"] != "correct" for r in READINGS) >= 10  # the cases ours read more


def test_benchmark_equivalence_is_mathrulers():
    """Open answers: the authors' grader itself (mathruler) on the cleaned reply."""
    from mathruler.grader import grade_answer

    for said, gold in (("0.5", "1/2"), ("Red", "red"), ("12", "twelve"), ("3 apples", "3")):
        assert answers.equivalent(said, gold) == grade_answer(said, gold)
    assert answers.equivalent("The answer is 0.5.", "1/2") and not grade_answer(
        "The answer is 0.5.", "1/2")


def test_benchmark_unreadable_row_is_counted_not_fatal(tiny_dir, tmp_path):
    """A row the adapter cannot read is reported by id and counted; the run completes."""
    import pyarrow as pa

    t = pq.read_table(FIX / "mmstar/mmstar.parquet").to_pylist()
    t[1]["image"] = b"not an image"
    t[2]["question"] = None
    d = tmp_path / "mmstar"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(t, schema=pq.read_schema(FIX / "mmstar/mmstar.parquet")),
                   d / "mmstar.parquet")
    out = tmp_path / "o.json"
    r = _run(["eval", "--benchmark", "mmstar", "--data", str(d), "--model",
              str(tiny_dir["qwen2_5_vl"]), "--out", str(out), "--max-tokens", "4"])
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    assert s["unreadable"] == 2 and [u["id"] for u in s["unreadable_rows"]] == ["1", "2"]
    assert s["n"] == 3 and "2 unreadable rows skipped" in r.output
    assert "not a valid image" in s["unreadable_rows"][0]["reason"]


def test_benchmark_zoombench_and_visualprobe_report_their_headlines(tiny_dir, tmp_path):
    out = tmp_path / "zb.json"
    r = _run(["eval", "--benchmark", "zoombench", "--data", str(FIX / "zoombench"), "--model",
              str(tiny_dir["qwen2_5_vl"]), "--out", str(out), "--max-tokens", "4"])
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    assert set(s["views"]) == {"plain", "teacher"} and s["gap_n"] == 4
    assert s["gap"] == pytest.approx(s["views"]["teacher"]["acc"] - s["views"]["plain"]["acc"],
                                     abs=1e-12)
    assert set(s["by_type"]) == {"mc", "open"} and s["by_type"]["mc"]["plain"]["n"] == 2
    assert set(s["by_category"]) == {"Color Attributes", "Fine-Grained Counting", "OCR"}
    assert all("gap" in v for v in s["by_category"].values())
    rows = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
    crop = next(r for r in rows if r["view"] == "teacher")
    assert crop["image_size"] == [120, 116]  # the benchmark's own crop_image, not ours
    out = tmp_path / "vp.json"
    r = _run(["eval", "--benchmark", "visualprobe", "--data", str(FIX / "visualprobe"),
              "--model", str(tiny_dir["qwen2_5_vl"]), "--out", str(out), "--max-tokens", "4"])
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    per = [s["by_category"][lv]["plain"]["acc"] for lv in ("Easy", "Medium", "Hard")]
    assert s["visualprobe_mean"] == pytest.approx(sum(per) / 3, abs=1e-12)
    assert "visualprobe_mean" in r.output


def _wilson_oracle(k, n, z=scores.Z95):
    """Roots of (p_hat - p)^2 = z^2 p (1 - p) / n, in float64 by numpy."""
    p = k / n
    a, b, c = 1 + z * z / n, -(2 * p + z * z / n), p * p
    r = np.sort(np.roots([a, b, c]).real)
    return float(r[0]), float(r[1])


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (56, 70), (48, 80), (191, 191), (1, 1)])
def test_benchmark_wilson_matches_oracle(k, n):
    lo, hi = scores.wilson(k, n)
    olo, ohi = _wilson_oracle(k, n)
    assert lo == pytest.approx(max(0.0, olo), abs=1e-9)
    assert hi == pytest.approx(min(1.0, ohi), abs=1e-9)


def test_benchmark_difference_interval():
    d, lo, hi = scores.diff_interval(48, 80, 56, 70)
    l1, u1 = _wilson_oracle(48, 80)
    l2, u2 = _wilson_oracle(56, 70)
    p1, p2 = 48 / 80, 56 / 70
    assert d == pytest.approx(p2 - p1, abs=1e-12)
    assert lo == pytest.approx(d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), abs=1e-9)
    assert hi == pytest.approx(d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2), abs=1e-9)
    # Newcombe (1998), Table II, example (56/70 vs 48/80), method 10: 0.0524 to 0.3339
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)


def _row(i, view, correct, cat="c1", parsed="A", expected="A", **kw):
    return {"id": str(i), "view": view, "category": cat, "correct": correct,
            "parsed": parsed if correct or parsed else None, "expected": expected, **kw}


def test_benchmark_summary_counts():
    rows = [_row(0, "plain", True), _row(0, "teacher", True), _row(1, "plain", False, parsed=None),
            _row(1, "teacher", True, cat="c1"), _row(2, "plain", False, cat="c2", parsed="B"),
            _row(2, "teacher", False, cat="c2", parsed=None), _row(3, "plain", True, cat="c2")]
    s = scores.summarize(rows, ("plain", "teacher"), "letter")
    assert s["n"] == 4 and s["views"]["plain"] == {"n": 4, "correct": 2, "acc": 0.5, "unparsed": 1}
    assert s["views"]["teacher"]["correct"] == 2 and s["unparsed"] == 2
    assert s["by_category"]["c2"]["plain"]["n"] == 2
    # the gap is over the samples with both views (ids 0-2): 2/3 crop - 1/3 full
    assert s["gap_n"] == 3 and s["gap"] == pytest.approx(2 / 3 - 1 / 3, abs=1e-12)


def test_benchmark_headline_metrics():
    yn = [dict(_row(i, "plain", p == e), parsed=p, expected=e) for i, (p, e) in
          enumerate([("yes", "yes"), ("yes", "no"), ("no", "yes"), (None, "yes"), ("no", "no"),
                     (None, "no")])]
    m = scores.yes_no_metrics(yn)
    # the authors' counts (cal_acc.py:123-158): an unreadable answer to a "no" is a FP
    assert m["precision"] == pytest.approx(1 / 3, abs=1e-12)
    assert m["recall"] == pytest.approx(1 / 3, abs=1e-12)
    assert m["f1"] == pytest.approx(1 / 3, abs=1e-12)
    assert m["yes_ratio"] == pytest.approx(2 / 6, abs=1e-12)
    assert m["gold_yes_ratio"] == pytest.approx(3 / 6, abs=1e-12)
    pairs = [_row(i, "plain", c, pair=i // 2) for i, c in enumerate([True, True, True, False])]
    assert scores.pair_accuracy(pairs) == 0.5
    cv = [_row(i, "plain", c, source=s, type=t) for i, (c, s, t) in enumerate(
        [(True, "ADE20K", "2D"), (False, "ADE20K", "2D"), (True, "COCO", "2D"),
         (True, "Omni3D", "3D"), (False, "Omni3D", "3D")])]
    assert scores.cvbench_score(cv) == pytest.approx((2 / 3 + 0.5) / 2, abs=1e-12)  # authors'
    assert scores.cvbench_cambrian(cv) == pytest.approx(((0.5 + 1.0) / 2 + 0.5) / 2, abs=1e-12)
    hr = [_row(i, "plain", c, cycle_category=g) for i, (c, g) in enumerate(
        [(True, "q0"), (True, "q0"), (True, "q0"), (False, "q1")])]
    h = scores.headlines(hr, "letter", "hrbench4k")
    assert h["hrbench_cycle_mean"] == pytest.approx((1.0 + 0.0) / 2, abs=1e-12)
    assert scores.headlines(pairs, "letter", "mmvp")["ceiling"] == pytest.approx(296 / 300,
                                                                               abs=1e-12)


def _eval(tmp_path, name, **counts):
    views = {v: {"n": n, "correct": k, "acc": k / n} for v, (k, n) in counts.items()}
    d = {"kind": "mlx-opd benchmark eval", "status": "complete", "benchmark": name,
         "views": views, "by_category": {"c": views}}
    p = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.json"
    p.write_text(json.dumps(d))
    return p


def test_benchmark_compare_table_and_cli(tmp_path):
    before = _eval(tmp_path, "vstar", plain=(96, 191), teacher=(150, 191))
    after = _eval(tmp_path, "vstar", plain=(140, 191), teacher=(152, 191))
    rows = compare(load_eval(before), load_eval(after))
    plain = next(r for r in rows if r["category"] == "overall" and r["view"] == "plain")
    d, lo, hi = scores.diff_interval(96, 191, 140, 191)
    assert (plain["diff"], plain["ci_low"], plain["ci_high"]) == (d, lo, hi)
    assert plain["beyond_noise"]
    assert not next(r for r in rows if r["view"] == "teacher")["beyond_noise"]
    r = CliRunner().invoke(main, ["eval", "--compare", str(before), str(after), "--out",
                                  str(tmp_path / "cmp.json")])
    assert r.exit_code == 0, r.output
    assert "+0.230" in r.output and (tmp_path / "cmp.png").exists()
    other = _eval(tmp_path, "pope", plain=(1, 2))
    r = CliRunner().invoke(main, ["eval", "--compare", str(before), str(other)])
    assert r.exit_code != 0 and "different benchmarks" in r.output
    assert "Traceback" not in r.output


def test_benchmark_cache_drops_a_torn_line_and_refuses_foreign_files(tmp_path):
    out = tmp_path / "e.json"
    settings = {"benchmark": "vstar"}
    out.write_text(json.dumps({"kind": "mlx-opd benchmark eval", "settings": settings}))
    good = json.dumps({"id": "1", "view": "plain", "correct": True})
    out.with_suffix(".jsonl").write_text(good + "\n" + '{"id": "2", "vi')
    cached = open_cache(out, settings, force=False)
    assert list(cached) == [("1", "plain")]
    assert out.with_suffix(".jsonl").read_text() == good + "\n"
    with pytest.raises(OutputExistsError, match="other settings"):
        open_cache(out, {"benchmark": "pope"}, force=False)
    mine = tmp_path / "notes.json"
    mine.write_text("my notes")
    with pytest.raises(OutputExistsError, match="not written by"):
        open_cache(mine, settings, force=False)
    assert mine.read_text() == "my notes"
    assert open_cache(mine, settings, force=True) == {}
    assert not mine.exists() and len(list(tmp_path.glob("notes.json.old-*"))) == 1


def test_benchmark_judge_verdicts():
    from mlx_opd.evaluation.benchmarks.judge import judge_prompt

    assert read_verdict("Yes") is True and read_verdict("Yes.") is True
    assert read_verdict("No") is False and read_verdict("maybe") is None
    p = judge_prompt({"prompt": "Q?", "expected": "12", "answer": "<answer>twelve</answer>"})
    assert "The question is: Q?\nThe answer is: 12\nThe response is: twelve\n" in p
    assert p.endswith("Directly give me your output.")


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_benchmark_vstar_end_to_end_resumes_and_reports_the_gap(tiny_dir, tmp_path):
    from mlx_opd import models
    from mlx_opd.evaluation.benchmarks.run import run_benchmark, settings_for

    model = tiny_dir["qwen2_5_vl"]
    out = tmp_path / "v.json"
    bench = registry.get("vstar")
    settings = settings_for(bench, None, str(FIX / "vstar"), model, None)

    def interrupt_after_two(done, reused, seconds, acc):
        if done == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second sample
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(models.load(model), bench, FIX / "vstar", out, settings,
                      progress=interrupt_after_two)
    first = out.with_suffix(".jsonl").read_text().splitlines()
    assert len(first) == 4  # two samples x (full, crop), durable before the interrupt
    assert json.loads(out.read_text())["status"] == "running"
    r = _run(["eval", "--benchmark", "vstar", "--data", FIX / "vstar", "--model", model,
              "--out", out])
    assert r.exit_code == 0, r.output
    assert "resumed: 4 cached answers" in r.output
    s = json.loads(out.read_text())
    assert (s["status"], s["reused"], s["computed"], s["n"]) == ("complete", 2, 2, 4)
    again = out.with_suffix(".jsonl").read_text().splitlines()
    assert again[:4] == first  # finished samples were not recomputed (timings kept too)
    assert len(again) == 8 and "gap" in s and s["gap_n"] == 4
    assert set(s["by_category"]) == {"direct_attributes", "relative_position"}
    assert out.with_suffix(".png").exists()
    # the crop row saw the evidence crop, the full row the whole (resized) photo
    rows = [json.loads(x) for x in again]
    crop = next(x for x in rows if x["view"] == "teacher")
    full = next(x for x in rows if x["view"] == "plain" and x["id"] == crop["id"])
    assert crop["image_size"][0] < full["image_size"][0]
    # other settings on the same --out are refused, nothing overwritten
    r = _run(["eval", "--benchmark", "vstar", "--data", FIX / "vstar", "--model", model,
              "--out", out, "--max-tokens", "4"])
    assert r.exit_code != 0 and "other settings" in r.output and "Traceback" not in r.output
    assert out.with_suffix(".jsonl").read_text().splitlines() == again


def test_benchmark_large_images_are_resized_not_rejected(tiny_dir, tmp_path):
    model = tiny_dir["qwen2_vl"]
    out = tmp_path / "hr.json"
    r = _run(["eval", "--benchmark", "hrbench8k", "--data", FIX / "hrbench8k", "--model", model,
              "--out", out, "--limit", "1", "--max-pixels", 28 * 28 * 64])
    assert r.exit_code == 0, r.output
    row = json.loads(out.with_suffix(".jsonl").read_text().splitlines()[0])
    w, h = row["model_image_size"]
    assert row["image_size"] == [1280, 720] and w * h <= 28 * 28 * 64
    assert abs(w / h - 1280 / 720) < 0.25  # aspect kept (within the 28-px rounding)


def test_benchmark_every_adapter_runs_through_eval(tiny_dir, tmp_path):
    """Every benchmark through the CLI, with the count of its real layout and the
    authors' prompts in the rows it writes."""
    model = tiny_dir["qwen3_vl"]
    for key in ALL:
        name, _, variant = key.partition("/")
        out = tmp_path / f"{key.replace('/', '-')}.json"
        args = ["eval", "--benchmark", name, "--data", fixture_dir(key), "--model",
                model, "--out", out, "--max-tokens", 3]
        r = _run(args + (["--variant", variant] if variant else []))
        assert r.exit_code == 0, (key, r.output)
        s = json.loads(out.read_text())
        theirs = AUTHORS["benchmarks"][key]
        assert s["n"] == len(theirs) == s["rows_total_in_benchmark"], key
        assert s["views"]["plain"]["n"] == len(theirs) and s["unreadable"] == 0
        rows = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
        assert [x["prompt"] for x in rows if x["view"] == "plain"] == [t["sent"] for t in theirs]


def test_benchmark_judge_end_to_end(tiny_dir, tmp_path):
    model = tiny_dir["qwen2_5_vl"]
    out = tmp_path / "p.json"
    r = _run(["eval", "--benchmark", "pope", "--data", FIX / "pope", "--model", model, "--out",
              out, "--judge", model, "--max-tokens", 3])
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    j = s["judge"]
    wrong = s["views"]["plain"]["n"] - s["views"]["plain"]["correct"]
    assert j["looked_at"] == wrong and 0 <= j["accepted"] <= wrong
    assert s["views"]["plain"]["acc"] <= j["acc_with_judge"]["plain"]


def _hub_cache(tmp_path, repo, src):
    """A Hugging Face cache as the hub client writes it: refs/main -> snapshots/REV."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    root = tmp_path / "hub" / f"datasets--{repo.replace('/', '--')}"
    shutil.copytree(src, root / "snapshots" / rev)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    return tmp_path / "hub"


def test_benchmark_hub_id_through_the_offline_cache(tiny_dir, tmp_path):
    cache = _hub_cache(tmp_path, "craigwu/vstar_bench", FIX / "vstar")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mlx_opd.cli", "eval", "--benchmark", "vstar", "--data",
           "craigwu/vstar_bench", "--model", str(tiny_dir["qwen2_vl"]), "--out",
           str(tmp_path / "v.json"), "--limit", "1", "--max-tokens", "2"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "v.json").read_text())
    assert s["data"] == "craigwu/vstar_bench" and s["n"] == 1
    # a dataset that is not cached: a clear error, no traceback
    cmd[cmd.index("craigwu/vstar_bench")] = "DreamMr/HR-Bench"
    cmd[cmd.index("vstar")] = "hrbench4k"
    cmd[cmd.index(str(tmp_path / "v.json"))] = str(tmp_path / "h.json")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "HF_HUB_OFFLINE=1" in p.stderr
    assert "huggingface-cli download DreamMr/HR-Bench" in p.stderr and "Traceback" not in p.stderr


def test_benchmark_prompts_use_qwen35_non_thinking_mode(loaded):
    """The authors evaluate Qwen3.5 without thinking: the chat prompt ends with an empty
    think block, so the first generated token is the answer."""
    from mlx_opd import models

    bench = registry.get("vstar")
    _, items = bench.read(FIX / "vstar")
    text = bench.prompt(next(items))
    prompt = models.format_prompt(loaded("qwen3_5"), text)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert text in prompt
