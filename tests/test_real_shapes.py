"""The whole pipeline at real widths: a replica of Qwen2-VL-2B-Instruct (its real widths,
vocabulary, tokenizer and template; 2 text layers, 2 vision blocks) on a 1280x960
photo-like image with a small evidence box: compare, eval, train (n = 8), resume and
export in all three formats, plus very elongated and tiny crops. The other families run
the same way in benchmarks/real_shapes.py (one step each at 2 and 4 layers).

Time: compare and eval see the photo at --max-pixels 401408 (494 image tokens, 1,976
vision patches); training uses --max-pixels 200704 (256 image tokens). At the processor's
default limits (1,564 tokens, 6,256 patches) MLX's CPU attention over the vision tower's
patches took minutes per image on a 2-core CPU (docs/limits.md), so the default-limit
resize and the full-resolution step are the benchmark's (benchmarks/real_shapes.py).
"""

import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlx_opd.cli import main

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

HUB_ID = "Qwen/Qwen2-VL-2B-Instruct"
BOX = [600, 400, 660, 450]


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    from make_benchmarks import photo

    from mlx_opd.models.replicas import build_replica

    root = tmp_path_factory.mktemp("real")
    model = build_replica(HUB_ID, root / "replica", layers=2, vision_layers=2)
    photo(7, size=(1280, 960), colour="red", box=BOX).save(root / "photo.jpg", quality=85)
    rows = [{"image": "photo.jpg", "question": "What colour is the small ball?",
             "options": ["red", "blue", "green", "yellow"], "box": box, "answer": "A"}
            for box in (BOX, [300, 500, 900, 508], [40, 40, 44, 44])]  # normal, 600x8, 4x4
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model, root


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output[-3000:]
    return r.output


def test_real_width_compare_and_eval(replica):
    model, root = replica
    out = root / "compare.json"
    run("compare", "--model", model, "--image", root / "photo.jpg", "--question",
        "What colour is the small ball?", "--box", ",".join(map(str, BOX)), "--options", "red",
        "--options", "blue", "--max-tokens", 2, "--max-pixels", 401408, "--json", out)
    views = json.loads(out.read_text())["views"]
    # the processor's resize: 1280 x 960 over 401408 pixels scales by sqrt(1228800 / 401408)
    # = 1.75, floored to multiples of 28: 728 x 532, i.e. (728 / 28) x (532 / 28) = 26 x 19
    assert views["plain"]["image_tokens"] == 494
    assert views["plain"]["prompt_tokens"] > views["teacher"]["prompt_tokens"] > 0
    ev = root / "eval.json"
    run("eval", "--model", model, "--data", root / "data.jsonl", "--out", ev,
        "--views", "plain,teacher", "--max-tokens", 2, "--max-pixels", 401408)
    s = json.loads(ev.read_text())
    assert s["n"] == 3 and "gap" in s
    rows = [json.loads(x) for x in ev.with_suffix(".jsonl").read_text().splitlines()]
    # the elongated (600x8) and tiny (4x4) boxes gave valid teacher views
    assert sum(r["view"] == "teacher" for r in rows) == 3
    assert all(r["prompt_tokens"] > 0 for r in rows)


def test_real_width_train_resume_and_export(replica):
    model, root = replica
    runs = root / "run"
    common = ["--model", model, "--data", root / "data.jsonl", "--set", "rollout.n=8",
              "--set", "rollout.max_tokens=4", "--set", "optim.prompts_per_step=1",
              "--set", "pixels.max_pixels=200704", "--set", "memory.grad_checkpoint=true",
              "--save-every", 1]
    run("train", "--out", runs, "--max-steps", 2, *common)
    recs = [json.loads(x) for x in (runs / "metrics.jsonl").read_text().splitlines()
            if '"step"' in x]
    assert [r["step"] for r in recs] == [1, 2]
    assert all(r["rollout/tokens"] > 0 and r["memory/student_peak_bytes"] > 0 for r in recs)
    cfg = yaml.safe_load((runs / "config.yaml").read_text())
    assert cfg["model"]["revision"].startswith("local:")
    run("train", "--resume", runs, "--max-steps", 3)
    recs = [json.loads(x) for x in (runs / "metrics.jsonl").read_text().splitlines()
            if '"step"' in x]
    assert recs[-1]["step"] == 3
    for fmt in ("hf", "peft", "mlx"):
        out = root / f"export-{fmt}"
        run("export", "--model", model, "--adapter", runs, "--out", out, "--format", fmt)
        assert (out / ("adapter_config.json" if fmt == "peft" else "config.json")).exists()
    hf_cfg = json.loads((root / "export-hf" / "config.json").read_text())
    assert hf_cfg["hidden_size"] == 1536 and hf_cfg["vocab_size"] == 151936


def test_real_width_quantized_replica_loads_and_answers(tmp_path):
    """--quantize 4 goes through mlx-vlm's convert, as mlx-community's 4-bit repos do."""
    out = tmp_path / "q4"
    run("tiny-model", "--like", HUB_ID, "--layers", 2, "--vision-layers", 2, "--quantize", 4,
        "--out", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4 and cfg["mlx_opd_replica"]["quantized_bits"] == 4
    assert cfg["hidden_size"] == 1536 and cfg["vocab_size"] == 151936
    from make_benchmarks import photo

    # a small photo: MLX's CPU quantized matmul is slow, and the sizes are tested above
    photo(3, size=(224, 168), colour="blue", box=[100, 60, 130, 88]).save(tmp_path / "p.jpg")
    res = tmp_path / "c.json"
    run("compare", "--model", out, "--image", tmp_path / "p.jpg", "--question", "Colour?",
        "--box", "100,60,130,88", "--max-tokens", 2, "--json", res)
    assert json.loads(res.read_text())["views"]["plain"]["image_tokens"] > 0


def test_real_width_teacher_of_several_crops(replica):
    """A row with two boxes at real widths, through eval: the teacher of one crop per box
    (views.teacher crops) is a prompt of two images whose image tokens are those of the
    two crops alone (the replica's real processor counts them), unlike the union's crop."""
    from mlx_opd import models
    from mlx_opd.data import read_samples
    from mlx_opd.method.views import teacher_view
    from mlx_opd.run.config import DataConfig, PixelConfig, ViewConfig

    model, root = replica
    row = {"image": "photo.jpg", "question": "Are both small balls red?",
           "options": ["yes", "no"], "boxes": [BOX, [100, 100, 160, 150]], "answer": "B"}
    (root / "two.jsonl").write_text(json.dumps(row) + "\n")
    got = {}
    for mode in ("crop", "crops"):
        ev = root / f"eval-{mode}.json"
        run("eval", "--model", model, "--data", root / "two.jsonl", "--out", ev,
            "--views", "teacher", "--teacher-view", mode, "--max-tokens", 2,
            "--max-pixels", 401408)
        (r,) = [json.loads(x) for x in ev.with_suffix(".jsonl").read_text().splitlines()]
        got[mode] = r["prompt_tokens"]
    L = models.load(model)
    (s,) = read_samples(DataConfig(path=str(root / "two.jsonl")))[0]
    px = PixelConfig(max_pixels=401408).for_view("teacher")
    v = teacher_view(s, ViewConfig(teacher="crops"))
    enc = models.encode(L, v.images, v.text, px)
    assert len(v.images) == 2 and enc.num_images == 2 and enc.prompt_len == got["crops"]
    alone = [models.image_token_count(L, models.encode(L, im, v.text, px)) for im in v.images]
    assert models.image_token_count(L, enc) == sum(alone)
    assert got["crop"] != got["crops"]
