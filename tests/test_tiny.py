"""Tiny checkpoints: real mlx-vlm loader, exact weights round trip, deterministic."""

import hashlib
import json

import mlx.core as mx
import mlx_vlm
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_opd.models.layouts import SUPPORTED_FAMILIES, UnsupportedFamilyError, to_hf_weights
from mlx_opd.run.files import MARKER
from mlx_opd.toy.tiny import build_tiny_model, random_weights

from .conftest import random_image


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_load_roundtrip_and_generate(family, tiny_dir):
    path = tiny_dir[family]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "processor_config.json", "chat_template.json"):
        assert (path / name).exists(), name
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == family
    model, processor = mlx_vlm.load(str(path))
    # HF names on disk, MLX names in memory: the loader's renames/layouts are inverted exactly.
    expected = random_weights(config, seed=0)
    got = dict(tree_flatten(model.parameters()))
    assert set(expected) == set(got)
    for k in expected:
        np.testing.assert_array_equal(np.array(expected[k]), np.array(got[k]), err_msg=k)
    on_disk = mx.load(str(path / "model.safetensors"))
    assert set(on_disk) == set(to_hf_weights(family, expected))
    assert not any(k.startswith(("vision_tower.", "language_model.")) for k in on_disk)
    # vocab matches the tokenizer, so any sampled id decodes
    assert config.get("vocab_size", config.get("text_config", {}).get("vocab_size")) == len(
        processor.tokenizer)
    from mlx_vlm.prompt_utils import apply_chat_template

    prompt = apply_chat_template(processor, model.config, "What colour?", num_images=1)
    out = mlx_vlm.generate(model, processor, prompt, [random_image(0, 64, 80)], max_tokens=5,
                           verbose=False, temperature=0.0)
    assert out.generation_tokens >= 1 and out.prompt_tokens > 10


def _digest(path):
    # the marker records when the folder was written (files.seal), not what it holds
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.iterdir()) if p.is_file() and p.name != MARKER}


def test_deterministic_for_a_seed(tmp_path):
    a = build_tiny_model("qwen2_vl", tmp_path / "a", seed=3)
    b = build_tiny_model("qwen2_vl", tmp_path / "b", seed=3)
    c = build_tiny_model("qwen2_vl", tmp_path / "c", seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a)["model.safetensors"] != _digest(c)["model.safetensors"]


def test_refuses_non_empty_out_and_bad_family(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("work")
    with pytest.raises(FileExistsError, match="--force"):
        build_tiny_model("qwen2_vl", tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "work"
    with pytest.raises(UnsupportedFamilyError, match="qwen2_5_vl"):
        build_tiny_model("llava", tmp_path / "y")


def test_qwen3_5_chat_template_is_non_thinking(loaded):
    from mlx_opd import models

    prompt = models.format_prompt(loaded("qwen3_5"), "Q?")
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert models.format_prompt(loaded("qwen2_vl"), "Q?").endswith("<|im_start|>assistant\n")
