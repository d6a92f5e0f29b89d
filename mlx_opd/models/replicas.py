"""Replicas of the models users run: the real config, random weights, fewer layers.

    mlx-opd tiny-model --like Qwen/Qwen2.5-VL-3B-Instruct --layers 2 --vision-layers 2 --out DIR

Every width, head count, head dim, KV heads, vocabulary size (padded embedding rows
included), special-token id, rope / M-RoPE setting, vision tower setting, tie flag and
processor limit is the real model's; the tokenizer is the real one (replica_tokenizer.py)
and so is the chat template (mlx_opd/models/chat_templates/). Only the depth is reduced, with
these rules for the settings that name layers (documented so a reader can tell a replica
from the real config):
- vision `fullatt_block_indexes` (Qwen2.5-VL: every 8th block, the last included) -> the
  last block of the reduced tower is full attention, the others windowed;
- vision `deepstack_visual_indexes` (Qwen3-VL: 3 of 24 or 27 blocks) -> the last
  min(3, depth) blocks, so the language model still receives deepstack features;
- text `full_attention_interval` (Qwen3.5: every 4th layer, the last included) ->
  min(interval, layers), so a replica of any depth keeps a full-attention last layer.

Where each value comes from (search-index file ids; read_file id=... shows the file):
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).parent / "chat_templates"

QWEN2_PROCESSOR = {  # Qwen2-VL / Qwen2.5-VL preprocessor_config.json (69393411951, 5590532836)
    "image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
    "temporal_patch_size": 2,
}
QWEN3_PROCESSOR = {  # Qwen3-VL / Qwen3.5 preprocessor_config.json (54877551029)
    "image_processor_type": "Qwen2VLImageProcessorFast", "do_resize": True, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "size": {"shortest_edge": 65536, "longest_edge": 16777216}, "patch_size": 16,
    "merge_size": 2, "temporal_patch_size": 2,
}
QWEN2_IDS = {"bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
             "vision_end_token_id": 151653, "vision_token_id": 151654,
             "image_token_id": 151655, "video_token_id": 151656}
QWEN35_IDS = {"image_token_id": 248056, "video_token_id": 248057,
              "vision_start_token_id": 248053, "vision_end_token_id": 248054}

QWEN25_VISION = {  # Qwen2.5-VL-3B-Instruct config.json (11644284334)
    "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
    "num_heads": 16, "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2,
    "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2, "temporal_patch_size": 2,
}
QWEN3_VISION_L = {  # the 27-block tower of Qwen3-VL-8B / Qwen3.5-9B (62739017613, F1 config)
    "depth": 27, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152, "in_channels": 3,
    "intermediate_size": 4304, "num_heads": 16, "num_position_embeddings": 2304,
    "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
}
QWEN3_VISION_S = {  # the 24-block tower of Qwen3-VL-4B / Qwen3.5-4B (59931867432, 55173656222)
    "depth": 24, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1024, "in_channels": 3,
    "intermediate_size": 4096, "num_heads": 16, "num_position_embeddings": 2304,
    "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
}


def _qwen35_text(hidden, intermediate, tie):
    # Qwen3.5 text config (4B: muuuuuuuuuer/qwen3.5-4b-cuda models/Qwen3.5-4B-TextOnly-HF/
    # config.json; 9B: unsloth/Qwen3.5-9B config.json vendored in 62739017613)
    return {"model_type": "qwen3_5_text", "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": 32, "num_attention_heads": 16, "num_key_value_heads": 4,
            "head_dim": 256, "full_attention_interval": 4, "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
            "linear_value_head_dim": 128, "attn_output_gate": True, "attention_bias": False,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 262144,
            "partial_rotary_factor": 0.25,
            "rope_parameters": {"mrope_interleaved": True, "mrope_section": [11, 11, 10],
                                "partial_rotary_factor": 0.25, "rope_theta": 10000000,
                                "rope_type": "default"},
            "tie_word_embeddings": tie, "vocab_size": 248320, "eos_token_id": 248044}


def _qwen3vl_text(hidden, intermediate, tie):
    # Qwen3-VL text config (4B: 59931867432; 8B: Steinate/Cortex and Chhagan005 8B
    # fine-tune configs, which keep the base model's config.json)
    return {"model_type": "qwen3_vl_text", "hidden_size": hidden, "intermediate_size": intermediate,
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "attention_bias": False, "hidden_act": "silu", "rms_norm_eps": 1e-6,
            "max_position_embeddings": 262144, "rope_theta": 5000000,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20],
                             "rope_type": "default"},
            "tie_word_embeddings": tie, "vocab_size": 151936, "bos_token_id": 151643,
            "eos_token_id": 151645}


def _qwen2_family(family, hidden, inter, layers, heads, kv, max_pos, tie, vocab, vision):
    """config.json of a Qwen2-VL / Qwen2.5-VL model: text parameters at the root."""
    arch = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}[family]
    return {"architectures": [arch], "model_type": family, "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "hidden_act": "silu",
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": max_pos,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "tie_word_embeddings": tie, "vocab_size": vocab, **QWEN2_IDS,
            "vision_config": vision}


def _qwen3_family(family, text, vision, deepstack):
    """config.json of a Qwen3-VL / Qwen3.5 model: nested text and vision configs."""
    arch = {"qwen3_vl": "Qwen3VLForConditionalGeneration",
            "qwen3_5": "Qwen3_5ForConditionalGeneration"}[family]
    ids = (QWEN35_IDS | {"eos_token_id": 248046}) if family == "qwen3_5" else {
        k: v for k, v in QWEN2_IDS.items() if k not in ("bos_token_id", "vision_token_id")}
    return {"architectures": [arch], "model_type": family, "text_config": text,
            "tie_word_embeddings": text["tie_word_embeddings"],
            "vision_config": {**vision, "model_type": family,
                              "out_hidden_size": text["hidden_size"],
                              "deepstack_visual_indexes": deepstack}, **ids}


@dataclass(frozen=True)
class RealModel:
    """A model users run: its config.json (full depth), processor, template and vocabulary."""

    hub_id: str
    family: str
    config: dict
    processor: dict
    template: str      # file in mlx_opd/models/chat_templates/
    vocab: str         # replica_tokenizer.VOCABS key
    source: str        # where the values come from
    extra: dict = field(default_factory=dict)


REAL_MODELS: dict[str, RealModel] = {m.hub_id: m for m in (
    RealModel("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl",
              _qwen2_family("qwen2_vl", 1536, 8960, 28, 12, 2, 32768, True, 151936, {
                  "depth": 32, "embed_dim": 1280, "hidden_size": 1536, "hidden_act": "quick_gelu",
                  "mlp_ratio": 4, "num_heads": 16, "in_chans": 3, "patch_size": 14,
                  "spatial_patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}),
              QWEN2_PROCESSOR, "qwen2_vl.jinja", "qwen2",
              "hub config.json (onnx-community/Qwen2-VL-2B-Instruct mirror, docs search); its "
              "vision_config lists only hidden_size/in_chans/spatial_patch_size, the rest are the "
              "Qwen2-VL vision defaults (transformers, mlx-vlm qwen2_vl/config.py); template: "
              "5663404159 (Qwen2-VL-2B-Instruct tokenizer_config.json)"),
    RealModel("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl",
              _qwen2_family("qwen2_5_vl", 2048, 11008, 36, 16, 2, 128000, True, 151936,
                            {**QWEN25_VISION, "out_hidden_size": 2048}),
              QWEN2_PROCESSOR, "qwen2_vl.jinja", "qwen2",
              "config.json 11644284334; same template as Qwen2-VL (44407964060, 35329733314)"),
    RealModel("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl",
              _qwen2_family("qwen2_5_vl", 3584, 18944, 28, 28, 4, 128000, False, 152064,
                            {**QWEN25_VISION, "out_hidden_size": 3584}),
              QWEN2_PROCESSOR, "qwen2_vl.jinja", "qwen2",
              "text config 342607787 (the 7B's config.json, vendored by DiffSynth Nexus-GenV2); "
              "the vision tower is the 3B's (11644284334) with out_hidden_size = the LM width"),
    RealModel("Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl",
              _qwen3_family("qwen3_vl", _qwen3vl_text(2560, 9728, True), QWEN3_VISION_S, [5, 11, 17]),
              QWEN3_PROCESSOR, "qwen3_vl.jinja", "qwen3",
              "config.json vendored in 59931867432; template 68886885721 (identical copies "
              "56436233786, 57498282872)"),
    RealModel("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl",
              _qwen3_family("qwen3_vl", _qwen3vl_text(4096, 12288, False), QWEN3_VISION_L, [8, 16, 24]),
              QWEN3_PROCESSOR, "qwen3_vl.jinja", "qwen3",
              "8B fine-tune config.json files that keep the base config (docs search: "
              "Steinate/Cortex, Chhagan005/CSM-DocExtract-8N); template as Qwen3-VL-4B"),
    RealModel("Qwen/Qwen3.5-4B", "qwen3_5",
              _qwen3_family("qwen3_5", _qwen35_text(2560, 9216, True), QWEN3_VISION_S, []),
              QWEN3_PROCESSOR, "qwen3_5.jinja", "qwen3_5",
              "text: muuuuuuuuuer/qwen3.5-4b-cuda config.json (60040579543); vision and ids: the "
              "Qwen3.5-4B-based config in 55173656222; template 52544601767 (Qwen3.5 tokenizer_config)"),
    RealModel("Qwen/Qwen3.5-9B", "qwen3_5",
              _qwen3_family("qwen3_5", _qwen35_text(4096, 12288, False), QWEN3_VISION_L, []),
              QWEN3_PROCESSOR, "qwen3_5.jinja", "qwen3_5",
              "unsloth/Qwen3.5-9B config.json vendored in 62739017613; template as Qwen3.5-4B"),
)}


def real_model(hub_id: str) -> RealModel:
    if hub_id not in REAL_MODELS:
        import difflib

        near = difflib.get_close_matches(hub_id, list(REAL_MODELS), n=1, cutoff=0.0)
        raise ValueError(f"--like {hub_id!r}: no recorded config; known: "
                         f"{', '.join(REAL_MODELS)}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    return REAL_MODELS[hub_id]


def text_section(config: dict) -> dict:
    """The text parameters: `text_config` (Qwen3 families) or the root (Qwen2 families)."""
    return config.get("text_config", config)


def replica_config(real: RealModel, layers: int, vision_layers: int) -> dict:
    """The real config with `layers` text layers and `vision_layers` vision blocks, and the
    layer-index settings remapped by the rules in the module docstring."""
    if layers < 1 or vision_layers < 1:
        raise ValueError("--layers and --vision-layers must be >= 1")
    cfg = copy.deepcopy(real.config)
    text, vision = text_section(cfg), cfg["vision_config"]
    full_layers, full_depth = text["num_hidden_layers"], vision["depth"]
    if layers > full_layers or vision_layers > full_depth:
        raise ValueError(f"{real.hub_id} has {full_layers} text layers and {full_depth} vision "
                         "blocks; a replica cannot have more")
    text["num_hidden_layers"] = layers
    vision["depth"] = vision_layers
    if "fullatt_block_indexes" in vision:
        vision["fullatt_block_indexes"] = [vision_layers - 1]
    if vision.get("deepstack_visual_indexes"):
        n = min(len(vision["deepstack_visual_indexes"]), vision_layers)
        vision["deepstack_visual_indexes"] = list(range(vision_layers - n, vision_layers))
    if "full_attention_interval" in text:
        text["full_attention_interval"] = min(text["full_attention_interval"], layers)
        k = text["full_attention_interval"]
        text["layer_types"] = ["full_attention" if (i + 1) % k == 0 else "linear_attention"
                               for i in range(layers)]
    cfg["torch_dtype"] = "bfloat16"
    cfg["mlx_opd_replica"] = {"of": real.hub_id, "text_layers": [layers, full_layers],
                              "vision_blocks": [vision_layers, full_depth],
                              "source": real.source}
    return cfg


def preprocessor_config(real: RealModel) -> dict:
    proc_class = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor",
                  "qwen3_vl": "Qwen3VLProcessor", "qwen3_5": "Qwen3VLProcessor"}[real.family]
    return {**real.processor, "processor_class": proc_class}


def write_tokenizer(out: Path, real: RealModel) -> None:
    """tokenizer.json (the real vocabulary), tokenizer_config.json and the chat template."""
    from transformers import PreTrainedTokenizerFast

    from mlx_opd.models.replica_tokenizer import build_tokenizer

    template = (TEMPLATES / real.template).read_text()
    fast = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(real.vocab),
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, model_max_length=262144
                                   if real.family in ("qwen3_vl", "qwen3_5") else 32768)
    fast.chat_template = template
    fast.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"tokenizer_class": "Qwen2Tokenizer", "chat_template": template,
                "errors": "replace", "split_special_tokens": False})
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": template},
                                                       ensure_ascii=False))


def random_weights_bf16(config: dict, seed: int) -> dict:
    """{mlx name: bf16 array}: N(0, 0.02) matrices, unit norms, zero biases, generated one
    tensor at a time in bf16 (a real-width float32 model would not fit beside it)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    cfg = json.loads(json.dumps(config))
    model_class, _ = get_model_and_args(cfg)
    mcfg = update_module_configs(model_class.ModelConfig.from_dict(cfg), model_class, cfg,
                                 ["text", "vision"])
    shapes = {k: v.shape for k, v in tree_flatten(model_class.Model(mcfg).parameters())}
    keys, out = mx.random.split(mx.random.key(seed), len(shapes)), {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        leaf = name.rsplit(".", 1)[-1]
        if "norm" in name and leaf == "weight" and len(shape) == 1:
            out[name] = mx.ones(shape, dtype=mx.bfloat16)
        elif leaf == "bias" or len(shape) == 1 and leaf not in ("A_log", "dt_bias"):
            out[name] = mx.zeros(shape, dtype=mx.bfloat16)
        else:
            out[name] = (0.02 * mx.random.normal(shape, key=keys[i])
                         ).astype(mx.bfloat16)
        mx.eval(out[name])
    return out


def build_replica(hub_id: str, out: str | Path, layers: int = 2, vision_layers: int = 2,
                  seed: int = 0, quantize: int | None = None, force: bool = False) -> Path:
    """Write a replica of `hub_id` in Hugging Face layout (atomically); with `quantize`
    (4 or 8) it is converted by mlx-vlm's own convert, as mlx-community's repos are."""
    import mlx.core as mx

    from mlx_opd.models.layouts import to_hf_weights
    from mlx_opd.models.replica_tokenizer import special_ids
    from mlx_opd.run.files import check_replaceable, write_dir_atomically

    real = real_model(hub_id)
    if quantize not in (None, 4, 8):
        raise ValueError(f"--quantize must be 4 or 8, got {quantize}")
    out = Path(out)
    check_replaceable(out, force)
    config = replica_config(real, layers, vision_layers)

    def write_float(tmp: Path):
        write_tokenizer(tmp, real)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(real), indent=2))
        ids = special_ids(real.vocab)
        (tmp / "generation_config.json").write_text(json.dumps(
            {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
             "pad_token_id": ids["<|endoftext|>"], "do_sample": False}))
        hf = to_hf_weights(real.family, random_weights_bf16(config, seed))
        mx.save_safetensors(str(tmp / "model.safetensors"), hf, metadata={"format": "pt"})

    if quantize is None:
        return write_dir_atomically(out, write_float, kind="replica")

    import tempfile

    def write_quantized(tmp: Path):
        from mlx_vlm.convert import convert

        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as src:
            write_float(Path(src))
            tmp.rmdir()  # convert creates its output folder
            convert(hf_path=src, mlx_path=str(tmp), quantize=True, q_bits=quantize,
                    q_group_size=64)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["mlx_opd_replica"] = config["mlx_opd_replica"] | {"quantized_bits": quantize}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))

    return write_dir_atomically(out, write_quantized, kind="replica")
