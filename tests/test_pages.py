"""Result pages, loaded in a real browser (headless Chromium): the eval page's cards and
filters, and eval --compare's page of the items that changed, checked against the evals'
own rows (OUT.jsonl)."""

import json
from pathlib import Path

from click.testing import CliRunner

from mlx_opd.cli import main

from .browser import Cards, dump_dom

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "samples.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.with_suffix(".jsonl").read_text().splitlines()]


def fixed_and_broken(before: Path, after: Path) -> dict:
    """From the two JSONL files alone: view -> (fixed ids, broken ids)."""
    b = {(r["id"], r["view"]): r["correct"] for r in _rows(before)}
    out = {}
    for r in _rows(after):
        was = b.get((r["id"], r["view"]))
        if was is not None and was != r["correct"]:
            out.setdefault(r["view"], (set(), set()))[0 if r["correct"] else 1].add(r["id"])
    return out


def check_changes_page(page: Path, before: Path, after: Path) -> dict:
    """The page's fixed / broken sections list exactly the items the JSONL files say."""
    cards = Cards(dump_dom(page)).cards
    want = fixed_and_broken(before, after)
    for view in {"plain", "student", "teacher"}:
        fixed, broken = want.get(view, (set(), set()))
        got = lambda kind: {c["id"] for c in cards if c["section"] == (kind, view)}  # noqa: E731,B023
        assert got("fixed") == fixed and got("broken") == broken, (view, got("fixed"), fixed)
    return want


def test_the_eval_page_shows_a_card_per_item_and_its_filters_work(tiny_dir, tmp_path):
    out = tmp_path / "e.json"
    r = CliRunner().invoke(main, ["eval", "--model", str(tiny_dir["qwen2_5_vl"]), "--data",
                                  str(DATA), "--out", str(out), "--max-tokens", "2"])
    assert r.exit_code == 0, r.output
    page = out.with_suffix(".html")
    assert str(page) in r.output
    rows = _rows(out)
    cards = Cards(dump_dom(page))
    assert len(cards.cards) == len({r["id"] for r in rows}) == len(cards.shown()) == 3
    for view in ("plain", "teacher"):
        for verdict in ("right", "wrong"):
            want = {r["id"] for r in rows if r["view"] == view
                    and r["correct"] == (verdict == "right")}
            shown = Cards(dump_dom(page, f"{view}={verdict}")).shown()
            assert {c["id"] for c in shown} == want, (view, verdict)
    dom = dump_dom(page, "plain=right&teacher=wrong")
    assert f"{len(Cards(dom).shown())} of 3 items shown" in dom


def _write_eval(path: Path, correct: dict) -> None:
    """An eval's files as `mlx-opd eval` writes them, with the given verdicts per item."""
    sample = json.loads(DATA.read_text().splitlines()[0])
    rows = [{"id": i, "view": v, "answer": "A" if ok else "B", "parsed": "A" if ok else "B",
             "expected": "A", "correct": ok, "image": str(DATA.parent / sample["image"]),
             "box": sample["box"], "question": sample["question"], "options": sample["options"]}
            for i, per in correct.items() for v, ok in per.items()]
    n = len(correct)
    summary = {"n": n, **{f"{v}_acc": sum(c[v] for c in correct.values()) / n
                          for v in ("plain", "teacher")}}
    path.write_text(json.dumps(summary))
    path.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_changes_page_lists_exactly_the_items_fixed_and_broken(tmp_path):
    before = {"a": {"plain": False, "teacher": True}, "b": {"plain": False, "teacher": True},
              "c": {"plain": True, "teacher": True}, "d": {"plain": False, "teacher": False}}
    after = {"a": {"plain": True, "teacher": True}, "b": {"plain": False, "teacher": True},
             "c": {"plain": False, "teacher": True}, "d": {"plain": True, "teacher": False}}
    _write_eval(tmp_path / "before.json", before)
    _write_eval(tmp_path / "after.json", after)
    r = CliRunner().invoke(main, ["eval", "--compare", str(tmp_path / "before.json"),
                                  str(tmp_path / "after.json"), "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    want = check_changes_page(tmp_path / "c.html", tmp_path / "before.json",
                              tmp_path / "after.json")
    assert want == {"plain": ({"a", "d"}, {"c"})}


def test_a_benchmark_page_shows_its_supplied_crop_and_filters_by_category(tiny_dir, tmp_path):
    """ZoomBench (its fixture): the card's crop is the benchmark's own crop image, and the
    category filter keeps exactly that category's items."""
    import base64
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    fix = ROOT / "tests" / "fixtures" / "zoombench"
    out = tmp_path / "zb.json"
    r = CliRunner().invoke(main, ["eval", "--benchmark", "zoombench", "--data", str(fix),
                                  "--model", str(tiny_dir["qwen2_5_vl"]), "--out", str(out),
                                  "--max-tokens", "2"])
    assert r.exit_code == 0, r.output
    dom = dump_dom(out.with_suffix(".html"))
    rows = _rows(out)
    assert len(Cards(dom).cards) == len({r["id"] for r in rows})
    crops = [src for src in dom.split('class="crop" src="')[1:]]
    shown = Image.open(io.BytesIO(base64.b64decode(crops[0].split('"')[0].split(",", 1)[1])))
    table = pq.read_table(next(fix.rglob("*.parquet"))).to_pylist()
    supplied = next(v for k, v in table[0].items() if "crop" in k.lower())
    raw = supplied["bytes"] if isinstance(supplied, dict) else supplied
    own = Image.open(io.BytesIO(raw))
    assert abs(shown.width / shown.height - own.width / own.height) < 0.05  # its own crop
    category = sorted({r["category"] for r in rows})[0]
    want = {r["id"] for r in rows if r["category"] == category}
    got = {c["id"] for c in Cards(dump_dom(out.with_suffix(".html"),
                                           f"category={category}")).shown()}
    assert got == want


def test_a_runs_page_shows_its_curves_and_the_validation_items_that_changed(tiny_dir,
                                                                           tmp_path):
    from .next_steps import run_next

    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(ROOT / "examples" / "tiny.yaml"),
                                  "--model", str(tiny_dir["qwen2_5_vl"]), "--data", str(DATA),
                                  "--out", str(run), "--max-steps", "3", "--set",
                                  "optim.lr=0.05", "--set", f"validation.path={DATA}",
                                  "--set", "validation.every=1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["report", str(run)])
    assert r.exit_code == 0, r.output
    page = run / "report.html"
    dom = dump_dom(page)
    assert dom.count('src="data:image/png') >= 2  # training curves, validation curve
    guards = json.loads((run / "validation.json").read_text())
    first = guards["history"][0]["step"]
    best = (guards.get("best") or {}).get("step", guards["history"][-1]["step"])
    want = fixed_and_broken(run / "validation" / f"step_{first:06d}.json",
                            run / "validation" / f"step_{best:06d}.json")
    cards = Cards(dom).cards
    for view in ("plain", "student", "teacher"):
        fixed, broken = want.get(view, (set(), set()))
        assert {c["id"] for c in cards if c["section"] == ("fixed", view)} == fixed
        assert {c["id"] for c in cards if c["section"] == ("broken", view)} == broken
    run_next(r.output, {"HELDOUT.jsonl": DATA})
