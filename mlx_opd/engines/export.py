"""Export a trained adapter for CUDA scale-up: Hugging Face checkpoints, PEFT adapters,
or a fused MLX folder.

    mlx-opd export --model BASE --adapter RUN_DIR --out DIR --format hf|peft|mlx

hf    LoRA fused into the base; a quantized base is dequantized (lossy with respect to
      the original bf16 weights: export from the original bf16 base with the same adapter
      to avoid it); mlx-vlm's renames and layouts inverted (models/layouts.py); safetensors
      under Hugging Face names, sharded past --max-shard-gb with an index; config.json
      without quantization entries; tokenizer and processor files from the original
      Hugging Face folder (--hf-source; mlx-vlm's converted folders carry a rewritten
      processor config that transformers cannot load).
peft  the LoRA adapter alone, in PEFT's layout, for the Hugging Face base:
      lora_A = our lora_a^T [r, in], lora_B = our lora_b^T [out, r], lora_alpha = scale * r.
mlx   the LoRA fused, MLX names: a folder mlx_vlm.load uses directly; a quantized base
      stays quantized (fused weights re-quantized: lossy) unless --dequantize.
Everything is written to a temporary folder and renamed into place at the end.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_opd import models
from mlx_opd.models.layouts import hf_name, to_hf_weights
from mlx_opd.models.parts import dequantize
from mlx_opd.models.parts import fuse_lora as fuse
from mlx_opd.run.config import ExportConfig
from mlx_opd.run.files import OutputExistsError, check_replaceable, write_dir_atomically

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                   "chat_template.jinja", "generation_config.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json",
                   "video_preprocessor_config.json")
DTYPES = {"bf16": mx.bfloat16, "fp16": mx.float16, "fp32": mx.float32}
# Module paths in transformers 5 differ from checkpoint keys for the Qwen2 families.
_PEFT_MODULE_PREFIX = {"qwen2_vl": (("model.", "model.language_model."),),
                       "qwen2_5_vl": (("model.", "model.language_model."),)}


class ExportError(ValueError):
    """Bad export input: what, where, and how to fix it."""


def resolve_adapter(path: str | Path) -> Path:
    """A RUN_DIR (its best adapter, else adapters/, else its last checkpoint), a
    checkpoint folder or an adapter folder (run_dir.resolve_adapter); says which."""
    from mlx_opd.run.run_dir import resolve_adapter as resolve

    try:
        found, note = resolve(path)
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    if note:
        print(note, file=sys.stderr)
    return found


def _check_adapter_matches(base: Path, adapter: Path) -> dict:
    try:
        return models.check_adapter_config(base, adapter)
    except models.AdapterMismatchError as e:
        raise ExportError(str(e)) from None


def load_with_adapter(base: str, adapter: Path) -> models.Loaded:
    """Base + adapter, checked by models.load (family, widths, rank)."""
    try:
        return models.load(base, adapter)
    except models.AdapterMismatchError as e:
        raise ExportError(str(e)) from None


def shard(weights: dict, max_bytes: int) -> list[dict]:
    shards, cur, size = [], {}, 0
    for k in sorted(weights):
        nbytes = weights[k].nbytes
        if cur and size + nbytes > max_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = weights[k]
        size += nbytes
    return shards + ([cur] if cur else [])


def _strip_quantization(config: dict) -> dict:
    config = json.loads(json.dumps(config))
    for d in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
        for key in ("quantization", "quantization_config"):
            d.pop(key, None)
    return config


def _copy_files(src: Path, dst: Path, names) -> list[str]:
    copied = []
    for name in names:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _hf_source(base: Path, hf_source: str | None) -> Path:
    src = base
    if hf_source:
        try:
            src = models.resolve_path(hf_source, list(TOKENIZER_FILES + PROCESSOR_FILES), need="")
        except models.ModelNotFoundError as e:
            raise ExportError(f"--hf-source: {e}") from None
    if not (src / "tokenizer_config.json").exists() and not (src / "tokenizer.json").exists():
        raise ExportError(f"{src}: no tokenizer files; pass --hf-source with the original "
                          "Hugging Face model (folder or hub id) the base was converted from")
    return src


def _say(msg: str) -> None:
    """Progress on stderr (stdout keeps the final line a script may read)."""
    print(msg, file=sys.stderr, flush=True)


def _check_out(out: Path, force: bool, need_bytes: int) -> None:
    try:
        check_replaceable(out, force)
    except OutputExistsError as e:
        raise ExportError(str(e)) from None
    parent = out.parent if out.parent.exists() else Path(".")
    free = shutil.disk_usage(parent).free
    if need_bytes * 1.05 > free:
        raise ExportError(f"not enough disk space in {parent}: the export needs ~"
                          f"{need_bytes / 1e9:.2f} GB, {free / 1e9:.2f} GB free")


def open_adapter(base: str, adapter: str | Path):
    """(the base's folder, the adapter's folder, base + adapter loaded) for an export that
    fuses: the adapter resolved (a RUN_DIR gives its best or last) and checked against
    the base before any weights load."""
    adapter = resolve_adapter(adapter)
    base_path = models.resolve_path(base)
    _check_adapter_matches(base_path, adapter)
    _say(f"export: loading {base} with the adapter {adapter}")
    loaded = load_with_adapter(base, adapter)
    _say("export: fusing the adapter into the weights")
    return base_path, adapter, loaded


def export_hf(base: str, adapter: str | Path, out: str | Path,
              dtype: str = ExportConfig.dtype, hf_source: str | None = None, force: bool = False,
              max_shard_gb: float = ExportConfig.max_shard_gb) -> Path:
    """Fused, dequantized Hugging Face checkpoint of base + adapter."""
    base_path, adapter, loaded = open_adapter(base, adapter)
    quantized = any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
                    for _, m in loaded.model.named_modules())
    if quantized:
        warnings.warn("the base is quantized: the export dequantizes it, which is lossy with "
                      "respect to the original bf16 weights; to avoid that, export with the "
                      "original bf16 base and the same adapter", stacklevel=2)
    fuse(loaded.model, dequantize=True)
    dequantize(loaded.model)
    target = DTYPES[dtype]
    weights = {k: v.astype(target) for k, v in
               to_hf_weights(loaded.family, dict(tree_flatten(loaded.model.parameters()))).items()}
    src = _hf_source(base_path, hf_source)
    out = Path(out)
    _check_out(out, force, sum(v.nbytes for v in weights.values()))
    config = _strip_quantization(json.loads((base_path / "config.json").read_text()))
    config["torch_dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]

    def write(tmp: Path):
        shards = shard(weights, int(max_shard_gb * 1e9))
        if len(shards) == 1:
            mx.save_safetensors(str(tmp / "model.safetensors"), shards[0], metadata={"format": "pt"})
        else:
            index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())},
                     "weight_map": {}}
            t0 = time.perf_counter()
            for i, part in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                mx.save_safetensors(str(tmp / name), part, metadata={"format": "pt"})
                index["weight_map"].update({k: name for k in part})
                eta = (time.perf_counter() - t0) / i * (len(shards) - i)
                _say(f"export: wrote shard {i}/{len(shards)} "
                     f"({sum(v.nbytes for v in part.values()) / 1e9:.2f} GB), ETA {eta:.0f} s")
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        _copy_files(src, tmp, TOKENIZER_FILES + PROCESSOR_FILES)

    return write_dir_atomically(out, write, kind="export-hf")


def export_peft(base: str, adapter: str | Path, out: str | Path, force: bool = False) -> Path:
    """The LoRA adapter in PEFT's layout, for the Hugging Face base."""
    adapter = resolve_adapter(adapter)
    base_path = models.resolve_path(base)
    cfg = _check_adapter_matches(base_path, adapter)
    params = cfg.get("lora_parameters") or {}
    if cfg.get("fine_tune_type", "lora") != "lora" or "keys" not in params:
        raise ExportError(f"{adapter}: only LoRA adapters export as PEFT (this one is "
                          f"{cfg.get('fine_tune_type')}); use --format hf")
    family = json.loads((base_path / "config.json").read_text())["model_type"]
    weights = mx.load(str(adapter / "adapters.safetensors"))
    rank, scale = int(params["rank"]), float(params["scale"])

    def module_path(mlx_module: str) -> str:
        path = hf_name(family, mlx_module + ".weight")[: -len(".weight")]
        for src, dst in _PEFT_MODULE_PREFIX.get(family, ()):
            if path.startswith(src) and not path.startswith(dst):
                path = dst + path[len(src):]
        return path

    tensors, targets = {}, set()
    for key in params["keys"]:
        a, b = weights.get(key + ".lora_a"), weights.get(key + ".lora_b")
        if a is None or b is None:
            raise ExportError(f"{adapter}: adapter weights for {key} are missing")
        path = module_path(key)
        tensors[f"base_model.model.{path}.lora_A.weight"] = a.T.astype(mx.float32)
        tensors[f"base_model.model.{path}.lora_B.weight"] = b.T.astype(mx.float32)
        targets.add(path)
    peft_config = {
        "peft_type": "LORA", "task_type": None, "r": rank, "lora_alpha": scale * rank,
        "lora_dropout": float(params.get("dropout", 0.0)), "bias": "none",
        "target_modules": sorted(targets), "fan_in_fan_out": False, "inference_mode": True,
        "base_model_name_or_path": str(base), "init_lora_weights": True,
    }
    out = Path(out)
    _check_out(out, force, sum(v.nbytes for v in tensors.values()))

    def write(tmp: Path):
        mx.save_safetensors(str(tmp / "adapter_model.safetensors"), tensors,
                            metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(peft_config, indent=2))

    return write_dir_atomically(out, write, kind="export-peft")


def export_mlx(base: str, adapter: str | Path, out: str | Path, force: bool = False,
               dequantize_base: bool = False) -> Path:
    """LoRA fused into the base: a folder mlx_vlm.load uses directly. A quantized base stays
    quantized (the fused weights are re-quantized, which is lossy) unless
    `dequantize_base`, which writes float weights and drops the quantization config."""
    base_path, adapter, loaded = open_adapter(base, adapter)
    fuse(loaded.model, dequantize=dequantize_base)
    config = json.loads((base_path / "config.json").read_text())
    if dequantize_base:
        dequantize(loaded.model)
        config = _strip_quantization(config)
    weights = dict(tree_flatten(loaded.model.parameters()))
    out = Path(out)
    _check_out(out, force, sum(v.nbytes for v in weights.values()))

    def write(tmp: Path):
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        _copy_files(base_path, tmp, TOKENIZER_FILES + PROCESSOR_FILES)

    return write_dir_atomically(out, write, kind="export-mlx")
