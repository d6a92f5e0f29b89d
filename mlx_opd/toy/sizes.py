"""The tiny checkpoints' sizes (TinySize), alone in a module that imports nothing heavy, so
that `mlx-opd tiny-model --help` reads its defaults without loading mlx."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TinySize:
    """Toy sizes. Defaults give a model of about 0.2M parameters that loads in ~1 s."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_heads: int = 2
    bpe_vocab: int = 400  # byte-level BPE size before the special tokens
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 256
