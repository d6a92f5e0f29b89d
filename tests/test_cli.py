"""The command line, end to end on tiny checkpoints."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from mlx_opd.cli import main
from mlx_opd.toy.synth import make_scene, write_scene


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_commands_without_importing_mlx():
    code = ("import sys; from click.testing import CliRunner; from mlx_opd.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); print(r.output); "
            "print('HEAVY' if {'mlx.core', 'mlx_vlm', 'transformers'} & set(sys.modules) else 'LIGHT')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for cmd in ("compare", "tiny-model", "views", "doctor", "demo"):
        assert cmd in out.stdout
    assert out.stdout.strip().endswith("LIGHT")


def test_tiny_model_command(tmp_path):
    r = run("tiny-model", "--family", "qwen3_vl", "--out", tmp_path / "m", "--seed", 1)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen3_vl"
    r = run("tiny-model", "--family", "qwen3_vl", "--out", tmp_path / "m")
    assert r.exit_code != 0 and "--force" in r.output


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_compare_json(family, tiny_dir, tmp_path):
    scene = make_scene(1)
    scene.image.save(tmp_path / "s.png")
    box = ",".join(str(v) for v in scene.box)
    r = run("compare", "--model", tiny_dir[family], "--image", tmp_path / "s.png",
            "--question", scene.question, "--box", box, *sum([["--options", o] for o in
                                                               scene.options], []),
            "--max-tokens", 6, "--json", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    for view in ("plain", "student", "teacher"):
        assert view in r.output
    res = json.loads((tmp_path / "c.json").read_text())
    v = res["views"]
    for view in ("plain", "student", "teacher"):
        assert {"answer", "token_ids", "mean_logprob"} <= set(v[view])
        assert 1 <= len(v[view]["token_ids"]) <= 6
    # the crop is a different image: fewer image tokens than the 320x240 full view
    assert v["teacher"]["image_tokens"] < v["plain"]["image_tokens"]
    assert v["student"]["image_tokens"] == v["plain"]["image_tokens"]
    probe = res["gap_probe"]
    n = len(v["plain"]["token_ids"]) + (v["plain"]["finish_reason"] == "stop")
    assert len(probe["per_token"]) == n and all(x >= 0 for x in probe["per_token"])
    assert probe["mean"] == pytest.approx(sum(probe["per_token"]) / n)
    assert probe["mean"] > 0  # a crop and a full image do not give identical distributions


def test_compare_bad_box_is_a_clear_error(tiny_dir, tmp_path):
    Image.new("RGB", (50, 40)).save(tmp_path / "s.png")
    r = CliRunner().invoke(main, ["compare", "--model", str(tiny_dir["qwen2_vl"]), "--image",
                                  str(tmp_path / "s.png"), "--question", "Q?", "--box",
                                  "10,10,80,20"])
    assert r.exit_code != 0 and "outside the 50x40 image" in r.output
    r = CliRunner().invoke(main, ["compare", "--model", str(tiny_dir["qwen2_vl"]), "--image",
                                  str(tmp_path / "s.png"), "--question", "Q?", "--box", "1,2"])
    assert r.exit_code != 0 and "4 numbers" in r.output


def test_views_command(tmp_path):
    data = write_scene(make_scene(2), tmp_path / "d")
    r = run("views", "--data", data, "--out", tmp_path / "v")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "v").glob("*.png"))
    assert names == ["0000_plain.png", "0000_student.png", "0000_teacher.png"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().replace('"box": [', '"box": [-1, '))
    r = CliRunner().invoke(main, ["views", "--data", str(bad), "--out", str(tmp_path / "w")])
    assert r.exit_code != 0 and f"{bad}:1" in r.output


def test_doctor_reports_blas():
    from mlx_opd.run import blas

    r = run("doctor", "--json")
    info = json.loads(r.output)
    assert info["backend"] in ("cpu", "metal", "cuda")
    assert info["matmul_gflops_fp32"] > 0
    assert info["blas"] == blas.STATE
    if __import__("os").environ.get("MLX_OPD_NO_BLAS"):
        assert info["blas"]["reason"] == "disabled by MLX_OPD_NO_BLAS"
    elif sys.platform.startswith("linux") and any(
            __import__("os").path.exists(p) for p in blas.CANDIDATES):
        assert info["blas"]["reason"] == "loaded"
