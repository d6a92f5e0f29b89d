"""Tiny, random-initialised VLM checkpoints in Hugging Face layout, built offline.

    mlx-opd tiny-model --family qwen2_5_vl --out /tmp/tiny

Model hubs are often unreachable (CI, air-gapped machines) and real checkpoints are
gigabytes. A tiny checkpoint has the real architecture of its family at toy sizes, a
small byte-level BPE tokenizer with the Qwen special tokens and a chat template, and the
processor configs; `mlx_vlm.load(DIR)` loads it through the same code path as a hub
model. Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlx_opd.models.layouts import check_family, to_hf_weights
from mlx_opd.toy.sizes import (  # noqa: F401  (moved to sizes.py)
    TinySize,
)

# Qwen-style special tokens, appended after the BPE vocabulary (as in Qwen checkpoints).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
THINK_TOKENS = ("<think>", "</think>")

# Words the synthetic corpus is made of: enough for questions about shapes, colours,
# glyphs and counts, the option letters and the authors' hint.
_WORDS = (
    "what which how many is are the of a an in on inside outside object objects shape "
    "colour color red green blue yellow purple orange black white gray pink brown cyan "
    "circle square triangle star cross diamond ring bar letter digit glyph number count "
    "only focus bounding box image answer with option's letter from given choices "
    "directly text written small large left right top bottom there this that and or "
    "A B C D E F yes no one two three four five six seven eight nine zero "
    "question options choose best describes"
).split()


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        n = rng.randint(3, 14)
        words = [rng.choice(_WORDS) for _ in range(n)]
        out.append(" ".join(words) + rng.choice([".", "?", "", " (A)", ": B", "\n"]))
    return out


def chat_template(family: str) -> str:
    """A Qwen-style ChatML template. Qwen2/2.5-VL add a default system turn; Qwen3.5 runs
    in non-thinking mode (an empty think block after the assistant tag, as the authors
    trained) unless `enable_thinking=True` is passed."""
    default_system = family in ("qwen2_vl", "qwen2_5_vl")
    think = family == "qwen3_5"
    t = ""
    if default_system:
        t += ("{%- if messages[0]['role'] != 'system' -%}"
              "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
              "{%- endif -%}")
    t += ("{%- for message in messages -%}"
          "{{ '<|im_start|>' + message['role'] + '\\n' }}"
          "{%- if message['content'] is string -%}{{ message['content'] }}"
          "{%- else -%}{%- for part in message['content'] -%}"
          "{%- if part['type'] == 'image' or part['type'] == 'image_url' -%}"
          "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
          "{%- elif part['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
          "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
          "{%- endif -%}{%- endfor -%}{%- endif -%}"
          "{{ '<|im_end|>\\n' }}"
          "{%- endfor -%}"
          "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}")
    if think:
        t += ("{%- if enable_thinking is not defined or not enable_thinking -%}"
              "{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}")
    t += "{%- endif -%}"
    return t


def build_tokenizer(out: Path, family: str, seed: int, size: TinySize) -> dict[str, int]:
    """Train a byte-level BPE on a synthetic corpus, add the special tokens, save it in
    Hugging Face layout. Returns the special-token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size.bpe_vocab, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    specials = list(SPECIAL_TOKENS)
    tok.add_special_tokens(specials)
    tok.add_tokens(list(THINK_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, model_max_length=32768,
    )
    fast.chat_template = chat_template(family)
    fast.save_pretrained(str(out))
    # Hugging Face Qwen checkpoints name the Qwen2 tokenizer class; keep that.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["chat_template"] = chat_template(family)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": chat_template(family)}))
    ids = {t: tok.token_to_id(t) for t in specials + list(THINK_TOKENS)}
    ids["vocab_size"] = tok.get_vocab_size()
    return ids


def model_config(family: str, ids: dict[str, int], size: TinySize) -> dict:
    """config.json for a tiny checkpoint of `family`, in the family's Hugging Face layout."""
    s = size
    head_dim = s.hidden_size // s.num_heads
    common_ids = {
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
    }
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    text = {
        "hidden_size": s.hidden_size, "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads, "num_key_value_heads": s.num_kv_heads,
        "intermediate_size": s.intermediate_size, "rms_norm_eps": 1e-6,
        "vocab_size": ids["vocab_size"], "max_position_embeddings": 32768,
        "rope_theta": 1000000.0, "hidden_act": "silu", "torch_dtype": "float32",
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": eos,
    }
    merge = 2
    if family in ("qwen2_vl", "qwen2_5_vl"):
        # Flat text parameters at the root; mrope sections sum to head_dim / 2.
        half = head_dim // 2
        sec = [half - 2 * (half // 3), half // 3, half // 3]
        text["rope_scaling"] = {"type": "mrope", "rope_type": "default", "mrope_section": sec}
        text["tie_word_embeddings"] = False
        if family == "qwen2_vl":
            vision = {"depth": s.vision_depth, "embed_dim": s.vision_hidden_size,
                      "hidden_size": s.hidden_size, "num_heads": s.vision_heads,
                      "mlp_ratio": 2, "patch_size": 14, "spatial_patch_size": 14,
                      "spatial_merge_size": merge, "temporal_patch_size": 2,
                      "in_channels": 3, "in_chans": 3, "hidden_act": "quick_gelu"}
            arch = "Qwen2VLForConditionalGeneration"
        else:
            vision = {"depth": s.vision_depth, "hidden_size": s.vision_hidden_size,
                      "intermediate_size": 2 * s.vision_hidden_size,
                      "out_hidden_size": s.hidden_size, "num_heads": s.vision_heads,
                      "patch_size": 14, "spatial_patch_size": 14, "spatial_merge_size": merge,
                      "temporal_patch_size": 2, "window_size": 112,
                      "fullatt_block_indexes": [s.vision_depth - 1], "in_channels": 3,
                      "in_chans": 3, "tokens_per_second": 2, "hidden_act": "silu"}
            arch = "Qwen2_5_VLForConditionalGeneration"
        return {"architectures": [arch], "model_type": family, **text, **common_ids,
                "vision_config": {"model_type": family, **vision}}

    vision = {"model_type": family, "depth": s.vision_depth,
              "hidden_size": s.vision_hidden_size, "intermediate_size": 2 * s.vision_hidden_size,
              "out_hidden_size": s.hidden_size, "num_heads": s.vision_heads, "patch_size": 16,
              "spatial_merge_size": merge, "temporal_patch_size": 2, "in_channels": 3,
              "num_position_embeddings": 64, "hidden_act": "gelu_pytorch_tanh",
              "deepstack_visual_indexes": [0] if family == "qwen3_vl" else []}
    text["head_dim"] = head_dim
    text["model_type"] = family + "_text"
    text["tie_word_embeddings"] = False
    if family == "qwen3_vl":
        half = head_dim // 2
        sec = [half - 2 * (half // 3), half // 3, half // 3]
        text["rope_scaling"] = {"rope_type": "default", "mrope_section": sec,
                                "mrope_interleaved": True}
        text["attention_bias"] = False
        arch = "Qwen3VLForConditionalGeneration"
    else:  # qwen3_5: gated-delta linear attention + full attention every 2nd layer
        rot = head_dim // 2  # partial_rotary_factor 0.5 -> mrope over head_dim/4 pairs
        half = rot // 2
        sec = [half - 2 * (half // 3), half // 3, half // 3]
        text.update({
            "linear_num_value_heads": 2, "linear_num_key_heads": 2,
            "linear_key_head_dim": head_dim, "linear_value_head_dim": head_dim,
            "linear_conv_kernel_dim": 4, "full_attention_interval": 2,
            "attention_bias": False,
            "rope_parameters": {"rope_type": "default", "mrope_section": sec,
                                "rope_theta": 1000000.0, "partial_rotary_factor": 0.5,
                                "mrope_interleaved": True},
        })
        arch = "Qwen3_5ForConditionalGeneration"
    return {"architectures": [arch], "model_type": family, "text_config": text,
            "vision_config": vision, "tie_word_embeddings": False, **common_ids,
            "eos_token_id": eos}


def processor_files(family: str, size: TinySize) -> dict[str, dict]:
    """preprocessor_config.json / processor_config.json contents."""
    patch = 14 if family in ("qwen2_vl", "qwen2_5_vl") else 16
    mean, std = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]) \
        if patch == 14 else ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    proc_class = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                  "qwen3_vl": "Qwen3VLProcessor", "qwen3_5": "Qwen3VLProcessor"}[family]
    pre = {
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": proc_class,
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "do_convert_rgb": True, "image_mean": mean, "image_std": std,
        "patch_size": patch, "merge_size": 2, "temporal_patch_size": 2,
        "min_pixels": size.min_pixels, "max_pixels": size.max_pixels,
        "size": {"shortest_edge": size.min_pixels, "longest_edge": size.max_pixels},
    }
    return {"preprocessor_config.json": pre,
            "processor_config.json": {"processor_class": proc_class}}


def random_weights(config: dict, seed: int) -> dict:
    """Build the mlx-vlm model for `config` with seeded random init; {mlx name: array}."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_opd.models.parts import model_from_config

    model = model_from_config(config, seed)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    return weights


def build_tiny_model(family: str, out: str | Path, seed: int = 0,
                     size: TinySize = TinySize(), force: bool = False) -> Path:
    """Write a tiny `family` checkpoint to `out` (atomically: temp folder, then rename)."""
    import mlx.core as mx

    check_family(family, where="--family")
    from mlx_opd.run.files import check_replaceable, write_dir_atomically

    out = Path(out)
    check_replaceable(out, force)

    def write(tmp: Path):
        ids = build_tokenizer(tmp, family, seed, size)
        config = model_config(family, ids, size)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for name, content in processor_files(family, size).items():
            (tmp / name).write_text(json.dumps(content, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(
            {"eos_token_id": config.get("eos_token_id") or config["text_config"]["eos_token_id"],
             "pad_token_id": ids["<|endoftext|>"], "do_sample": False}))
        hf = to_hf_weights(family, random_weights(config, seed))
        mx.save_safetensors(str(tmp / "model.safetensors"), hf, metadata={"format": "pt"})

    return write_dir_atomically(out, write, kind="tiny-model")
