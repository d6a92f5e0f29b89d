"""Exports checked with the real clients: transformers, peft and mlx-vlm's loader."""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx_vlm
import numpy as np
import pytest
from mlx.utils import tree_unflatten

from mlx_opd import models
from mlx_opd.engines import export
from mlx_opd.models import lora
from mlx_opd.models.layouts import SUPPORTED_FAMILIES
from mlx_opd.run.config import LoraConfig
from mlx_opd.toy.tiny import TinySize, build_tiny_model

from .conftest import random_image

torch = pytest.importorskip("torch", reason="the export round trips need the dev extra (CPU torch)")
transformers = pytest.importorskip("transformers")


def _make_adapter(base: Path, dest: Path, seed: int = 0) -> Path:
    """LoRA attached to `base` with non-zero B, saved like `mlx-opd train` saves it."""
    L = models.load(base)
    cfg = lora.attach(L.model, LoraConfig(rank=4, alpha=8))
    rng = np.random.default_rng(seed)
    params = {k: mx.array(rng.normal(size=v.shape).astype(np.float32) * 0.05)
              for k, v in lora.trainable(L.model).items()}
    L.model.update(tree_unflatten(list(params.items())))
    return lora.save_adapter(dest, lora.trainable(L.model), cfg)


def _quantized(base: Path, dest: Path) -> Path:
    from mlx_vlm.convert import convert

    if not dest.exists():
        convert(str(base), str(dest), quantize=True, q_group_size=32, q_bits=4)
    return dest


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


def _inputs(L):
    enc = models.encode(L, random_image(21, 120, 160), "What colour is the small circle?")
    return models.make_batch([enc], [[5, 6, 7, 8]])


def _mlx_logits(L, batch):
    return np.array(models._forward(L.model, batch))


def _hf_logits(model, batch, image_token_id):
    ids = torch.tensor(np.array(batch.input_ids)).long()
    kw = dict(input_ids=ids, pixel_values=torch.tensor(np.array(batch.pixel_values)),
              image_grid_thw=torch.tensor(np.array(batch.image_grid_thw)).long(),
              mm_token_type_ids=(ids == image_token_id).long())
    with torch.no_grad():
        return model(**kw).logits.float().numpy()


def _load_hf(path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "4bit"])
@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_hf_export_matches_mlx(family, quantized, tiny_dir, work):
    float_base = tiny_dir[family]
    base = _quantized(float_base, work / f"{family}-q4") if quantized else float_base
    adapter = _make_adapter(base, work / f"adapter-{family}-{quantized}")
    out = work / f"hf-{family}-{quantized}"
    with pytest.warns(UserWarning, match="lossy") if quantized else _no_warning():
        export.export_hf(str(base), adapter, out, dtype="fp32", hf_source=str(float_base))
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization" not in json.dumps(cfg)
    L = models.load(base, adapter)
    batch = _inputs(L)
    want = _mlx_logits(L, batch)
    got = _hf_logits(_load_hf(out), batch, L.model.config.image_token_id)
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(-1) == want.argmax(-1)).all()


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_peft_export_equals_fused_export(family, tiny_dir, work):
    from peft import PeftModel

    base = tiny_dir[family]
    adapter = _make_adapter(base, work / f"peft-adapter-{family}", seed=1)
    fused = export.export_hf(str(base), adapter, work / f"peft-fused-{family}", dtype="fp32")
    peft_dir = export.export_peft(str(base), adapter, work / f"peft-{family}")
    pcfg = json.loads((peft_dir / "adapter_config.json").read_text())
    assert pcfg["peft_type"] == "LORA" and pcfg["r"] == 4 and pcfg["lora_alpha"] == 8
    L = models.load(base)
    batch = _inputs(L)
    with_peft = PeftModel.from_pretrained(_load_hf(base), str(peft_dir)).eval()
    a = _hf_logits(with_peft, batch, L.model.config.image_token_id)
    b = _hf_logits(_load_hf(fused), batch, L.model.config.image_token_id)
    plain = _hf_logits(_load_hf(base), batch, L.model.config.image_token_id)
    assert np.abs(a - b).max() <= 1e-4
    assert np.abs(a - plain).max() > 1e-3  # the adapter really is applied


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "4bit"])
def test_mlx_export_reloads(quantized, tiny_dir, work):
    import mlx.nn as nn

    base = tiny_dir["qwen2_5_vl"]
    base = _quantized(base, work / "qwen2_5_vl-q4") if quantized else base
    adapter = _make_adapter(base, work / f"mlx-adapter-{quantized}", seed=2)
    L = models.load(base, adapter)
    batch = _inputs(L)
    want = _mlx_logits(L, batch)
    exact = export.export_mlx(str(base), adapter, work / f"mlx-{quantized}-float",
                              dequantize_base=True)
    got = np.array(models._forward(mlx_vlm.load(str(exact))[0], batch))
    assert np.abs(got - want).max() <= 1e-4  # fused in float: the same function
    if quantized:  # kept 4-bit: re-quantized, so lossy, but the adapter's effect survives
        out = export.export_mlx(str(base), adapter, work / "mlx-q4")
        m = mlx_vlm.load(str(out))[0]
        assert any(isinstance(x, nn.QuantizedLinear) for _, x in m.named_modules())
        got_q = np.array(models._forward(m, batch))
        plain = np.array(models._forward(models.load(base).model, batch))
        assert np.abs(got_q - want).mean() < 0.5 * np.abs(plain - want).mean()


def test_bad_inputs_leave_nothing_behind(tiny_dir, work, tmp_path, monkeypatch):
    adapter = _make_adapter(tiny_dir["qwen2_vl"], work / "bad-adapter")
    # an adapter from another family
    with pytest.raises(export.ExportError, match="trained on a qwen2_vl model"):
        export.export_hf(str(tiny_dir["qwen3_vl"]), adapter, tmp_path / "x")
    # the same family, other shapes
    other = build_tiny_model("qwen2_vl", tmp_path / "wide", size=TinySize(hidden_size=96, num_heads=4))
    with pytest.raises(export.ExportError, match="does not fit"):
        export.export_hf(str(other), adapter, tmp_path / "y")
    # no original tokenizer
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    with pytest.raises(export.ExportError, match="--hf-source"):
        export.export_hf(str(tiny_dir["qwen2_vl"]), adapter, tmp_path / "z", hf_source=str(no_tok))
    # a non-empty output folder
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="--force"):
        export.export_hf(str(tiny_dir["qwen2_vl"]), adapter, busy)
    assert (busy / "keep.txt").read_text() == "mine"
    # not enough disk
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 9, 1))
    with pytest.raises(export.ExportError, match="not enough disk space"):
        export.export_hf(str(tiny_dir["qwen2_vl"]), adapter, tmp_path / "full")
    assert not any(p.name.startswith((".full", "full", "x", "y", "z"))
                   for p in tmp_path.iterdir() if p.name not in ("wide", "no_tok", "busy"))


def test_export_data_verl_reads_back(tmp_path):
    """Our reader takes an export back (the engines' own checks: tests/test_engines.py)."""
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from mlx_opd.cli import main
    from mlx_opd.data import read_samples
    from mlx_opd.engines.verl import COLUMNS
    from mlx_opd.run.config import DataConfig

    data = Path(__file__).resolve().parents[1] / "examples" / "data" / "samples.jsonl"
    config = Path(__file__).resolve().parents[1] / "examples" / "tiny.yaml"
    r = CliRunner().invoke(main, ["export-data", "--data", str(data), "--out", str(tmp_path / "v"),
                                  "--config", str(config)])
    assert r.exit_code == 0, r.output
    table = pq.read_table(tmp_path / "v" / "train.parquet")
    assert tuple(table.column_names) == COLUMNS
    rows = table.to_pylist()
    src = [json.loads(ln) for ln in data.read_text().splitlines()]
    assert len(rows) == len(src)
    for row, s in zip(rows, src):
        assert row["reward_model"]["ground_truth"] == s["answer"]
        assert row["extra_info"]["source_extra_info"]["bbox"] == [round(v) for v in s["box"]]
        assert row["prompt"][0]["content"].startswith("<image>\n")
        assert s["question"] in row["prompt"][0]["content"]
    again, _ = read_samples(DataConfig(path=str(tmp_path / "v" / "train.parquet")))
    assert [a.answer for a in again] == [s["answer"] for s in src]
    assert all(a.boxed_image and a.prompt_complete for a in again)
    assert "actor_rollout_ref.rollout.n=4" in (tmp_path / "v" / "run_vision_opd.sh").read_text()
