"""The paper's benchmarks: fixtures in each published layout, prompts equal to the paper's
templates character for character, answer extraction, scores against direct counts and a
float64 oracle, and `eval --benchmark` end to end with resume, the gap and the hub cache."""

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

from mlx_opd.bench import answers, registry, scores
from mlx_opd.bench.cache import open_cache
from mlx_opd.bench.judge import read_verdict
from mlx_opd.bench.names import BENCHMARK_NAMES, VARIANTS
from mlx_opd.bench.report import compare, load_eval
from mlx_opd.bench.vstar import rotate_correct_first
from mlx_opd.cli import main
from mlx_opd.files import OutputExistsError

FIX = Path(__file__).parent / "fixtures"
# The paper's Appendix B templates (../shared/design/method.md), {options} "A. text" lines.
VSTAR = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
HR_CV = "{question} Select from the following choices.\n{options}"
MME_EN = ("{question} The choices are listed below:\n{options}\nSelect the best answer to the "
          "above multiple-choice question based on the image. Respond with only the letter "
          "(A, B, C, D, or E) of the correct option.\nThe best answer is:")
MME_CN = ("{question} 选项如下所示:\n{options}\n根据图像选择上述多项选择题的最佳答案。"
          "只需回答正确选项的字母（A, B, C, D 或 E）。\n最佳答案为：")
MMVP = "{question} {options}"
MMSTAR = "{question}\nOptions: {options}"
POPE = "{question}\nAnswer the question using a single word or phrase."


def lines(opts):
    return "\n".join(f"{'ABCDE'[i]}. {o}" for i, o in enumerate(opts))


def parquet(path):
    return [r for f in sorted(Path(path).glob("**/*.parquet")) for r in pq.read_table(f).to_pylist()]


def expected_prompts(name, variant):
    """(id, prompt, answer, category) straight from the raw files, by the paper's text."""
    if name == "vstar":
        rows = [json.loads(x) for x in (FIX / "vstar/test_questions.jsonl").read_text().splitlines()]
        out = []
        for r in rows:
            body = r["text"].split("\nAnswer with")[0]
            q, rest = body.split("\n(A) ", 1)
            opts = [o.split(") ", 1)[-1] for o in ("(A) " + rest).split("\n")]
            out.append((str(r["question_id"]), VSTAR.format(question=q, options=lines(opts)),
                        r["label"], r["category"]))
        return out
    if name in ("hrbench4k", "hrbench8k"):
        return [(str(r["index"]), HR_CV.format(question=r["question"],
                                               options=lines([r[c] for c in "ABCD"])),
                 r["answer"], r["category"]) for r in parquet(FIX / name)]
    if name == "mme-realworld":
        folder, tpl = (("mme-realworld-cn", MME_CN) if variant == "cn" else ("mme-realworld", MME_EN))
        return [(r["index"], tpl.format(question=r["question"],
                                        options="\n".join(r["multi-choice options"])),
                 r["answer"], r["category"]) for r in parquet(FIX / folder)]
    if name == "mmvp":
        with open(FIX / "mmvp/Questions.csv", newline="") as f:
            return [(r["Index"], MMVP.format(question=r["Question"], options=r["Options"]),
                     r["Correct Answer"].strip("()").upper(), "all") for r in csv.DictReader(f)]
    if name == "cvbench":
        return [(f"{r['type']}-{r['idx']}", HR_CV.format(question=r["question"],
                                                          options=lines(r["choices"])),
                 r["answer"].strip("()"), r["task"]) for r in parquet(FIX / "cvbench")]
    if name == "mmstar":
        out = []
        for r in parquet(FIX / "mmstar"):
            q, opts = r["question"].split("\nOptions: ")
            out.append((str(r["index"]), MMSTAR.format(question=q, options=opts), r["answer"],
                        r["category"]))
        return out
    if name == "pope":
        return [(r["question_id"], POPE.format(question=r["question"]), r["answer"],
                 r["category"]) for r in parquet(FIX / "pope")]
    raise AssertionError(name)


ALL = [(n, v) for n in BENCHMARK_NAMES for v in VARIANTS.get(n, (None,))]


def fixture_dir(name, variant):
    return FIX / ("mme-realworld-cn" if variant == "cn" else name)


def test_benchmark_names_match_registry():
    assert tuple(registry.BENCHMARKS) == BENCHMARK_NAMES
    for n, variants in VARIANTS.items():
        assert tuple(registry.BENCHMARKS[n]) == variants
    with pytest.raises(ValueError, match="did you mean 'pope'"):
        registry.get("popee")
    assert registry.get("mme-realworld", "CN").title == "MME-RealWorld (CN)"
    with pytest.raises(ValueError, match="must be one of en, cn"):
        registry.get("mme-realworld", "zh")


@pytest.mark.parametrize("name,variant", ALL)
def test_benchmark_prompt_is_the_papers_template(name, variant):
    bench = registry.get(name, variant)
    total, items = bench.read(fixture_dir(name, variant))
    got = [(i.id, bench.prompt(i), i.answer, i.category) for i in items]
    want = expected_prompts(name, variant)
    assert total == len(want) and len(got) == len(want)
    for g, w in zip(got, want):
        assert g == w  # character for character


def test_benchmark_options_are_split_as_written():
    """Options matter beyond the prompt: answers are also matched by option text."""
    _, items = registry.get("mmstar").read(FIX / "mmstar")
    assert next(items).options == ("a red ball", "a blue box", "a green tree",
                                   "nothing, the corner is empty")
    _, items = registry.get("mmvp").read(FIX / "mmvp")
    assert next(items).options == ("Yes", "No")
    _, items = registry.get("mme-realworld", "cn").read(FIX / "mme-realworld-cn")
    assert next(items).options == ("绿色", "红色", "蓝色", "黄色", "图像中没有")


def test_benchmark_fixtures_keep_the_published_layouts():
    """Column names, types and image encodings as the dataset cards give them."""
    hr = pq.read_table(FIX / "hrbench4k/hr_bench_4k.parquet")
    assert hr.schema.names == ["index", "question", "answer", "category", "A", "B", "C", "D",
                               "cycle_category", "image"]
    assert str(hr.schema.field("index").type) == "int64"
    assert str(hr.schema.field("image").type) == "string"  # base64 JPEG
    Image.open(io.BytesIO(base64.b64decode(hr.column("image")[0].as_py()))).verify()
    mme = pq.read_table(next((FIX / "mme-realworld/data").glob("*.parquet")))
    assert {"index", "question", "multi-choice options", "answer", "category", "l2-category",
            "bytes"} <= set(mme.schema.names)
    assert str(mme.schema.field("multi-choice options").type) == "list<element: string>"
    for folder, col in (("cvbench", "image"), ("mmstar", "image"), ("pope", "image")):
        t = pq.read_table(next((FIX / folder).glob("**/*.parquet")))
        assert str(t.schema.field(col).type) == "struct<bytes: binary, path: string>"
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


def test_benchmark_vstar_boxes_and_folder_only_layout(tmp_path):
    bench = registry.get("vstar")
    _, items = bench.read(FIX / "vstar")
    items = list(items)
    assert all(i.box is not None for i in items)
    ann = json.loads((FIX / "vstar/relative_position/sa_201.json").read_text())
    (x, y, w, h), (x2, y2, w2, h2) = ann["bbox"]
    rp = next(i for i in items if i.extra["image"].endswith("sa_201.jpg"))
    assert rp.box == (min(x, x2), min(y, y2), max(x + w, x2 + w2), max(y + h, y2 + h2))
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


@pytest.mark.parametrize("text,options,want", [
    ("B", ["x", "y"], "B"), ("(a)", ["Yes", "No"], "A"), ("(b) No", ["Yes", "No"], "B"),
    ("The answer is C.", ["p", "q", "r"], "C"), ("a cat", ["dog", "cat"], "B"),
    ("(c)", ["Yes", "No"], None), ("", ["x"], None),
])
def test_benchmark_letter_parsing(text, options, want):
    assert answers.parse_letter(text, options) == want


@pytest.mark.parametrize("text,want", [
    ("Yes", "yes"), ("no.", "no"), ("Yes, there is a ball.", "yes"), ("There is no ball", "no"),
    ("yes and no", None), ("maybe", None), ("", None), ("Nothing", None),
])
def test_benchmark_yes_no_parsing(text, want):
    assert answers.parse_yes_no(text) == want


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
          enumerate([("yes", "yes"), ("yes", "no"), ("no", "yes"), (None, "yes"), ("no", "no")])]
    m = scores.yes_no_metrics(yn)
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert m["yes_ratio"] == pytest.approx(2 / 5)
    pairs = [_row(i, "plain", c, pair=i // 2) for i, c in enumerate([True, True, True, False])]
    assert scores.pair_accuracy(pairs) == 0.5
    cv = [_row(i, "plain", c, source=s) for i, (c, s) in enumerate(
        [(True, "ADE20K"), (False, "ADE20K"), (True, "COCO"), (True, "Omni3D"), (False, "Omni3D")])]
    assert scores.cvbench_score(cv) == pytest.approx(((0.5 + 1.0) / 2 + 0.5) / 2)


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
    row = {"options": ["red", "blue"], "prompt": "q", "answer": "x"}
    assert read_verdict("B", row, "letter") == "B"
    assert read_verdict("none", row, "letter") is None
    assert read_verdict("A", {"prompt": "q", "answer": "x"}, "yesno") == "yes"
    assert read_verdict("(b)", {"prompt": "q", "answer": "x"}, "yesno") == "no"


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_benchmark_vstar_end_to_end_resumes_and_reports_the_gap(tiny_dir, tmp_path):
    from mlx_opd import models
    from mlx_opd.bench.run import run_benchmark, settings_for

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
    model = tiny_dir["qwen3_vl"]
    for name, variant in ALL:
        out = tmp_path / f"{name}-{variant}.json"
        args = ["eval", "--benchmark", name, "--data", fixture_dir(name, variant), "--model",
                model, "--out", out, "--limit", 2, "--max-tokens", 3]
        r = _run(args + (["--variant", variant] if variant else []))
        assert r.exit_code == 0, (name, r.output)
        s = json.loads(out.read_text())
        assert s["n"] == 2 and s["views"]["plain"]["n"] == 2, name
        rows = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
        assert [x["prompt"] for x in rows if x["view"] == "plain"] == [
            p for _, p, _, _ in expected_prompts(name, variant)[:2]]


def test_benchmark_judge_end_to_end(tiny_dir, tmp_path):
    model = tiny_dir["qwen2_5_vl"]
    out = tmp_path / "p.json"
    r = _run(["eval", "--benchmark", "pope", "--data", FIX / "pope", "--model", model, "--out",
              out, "--judge", model, "--max-tokens", 3])
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    j = s["judge"]
    assert j["looked_at"] == s["unparsed"] == j["resolved"] + j["still_unparsed"]
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
