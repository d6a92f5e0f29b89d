"""The build's model calls: prompts decoded together, each prompt encoded once.

`texts` answers prompts greedily (listing, question writing, validation); `letters` samples
n multiple-choice answers per prompt (consensus, mining) with one prefill per prompt and
all rows in one batch (rollout.sample_prompts); each prompt's key is a function of the
build's seed and the item, so a resumed build samples what the uninterrupted one did.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from mlx_opd import models
from mlx_opd.method import rollout
from mlx_opd.method.answers import parse_answer
from mlx_opd.run.config import PixelConfig


def item_key(seed: int, *parts: str):
    import mlx.core as mx

    h = hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).digest()
    return mx.random.key(int.from_bytes(h[:4], "little"))


def _decode(loaded: models.Loaded, ids: list[int], finished: bool, keep_special: bool) -> str:
    ids = ids[:-1] if finished and ids else ids  # the stop token is no text
    return loaded.tokenizer.decode(list(ids), skip_special_tokens=not keep_special)


def texts(loaded: models.Loaded, prompts: Sequence[tuple], max_tokens: int,
          pixels: PixelConfig = PixelConfig(), keep_special: bool = False
          ) -> tuple[list[str], list[tuple[int, int]]]:
    """Greedy answers to [(images, text), ...] and the size each prompt's first image had
    after the processor's resize (what absolute grounding coordinates refer to).
    `keep_special` keeps tokens such as Qwen2-VL's <|box_start|> in the text."""
    if not prompts:
        return [], []
    encs = [models.encode(loaded, list(ims), text, pixels) for ims, text in prompts]
    outs = rollout.sample_prompts(loaded, encs, 1, max_tokens, temperature=0.0)
    return ([_decode(loaded, o.token_ids[0], o.finished[0], keep_special) for o in outs],
            [e.image_size for e in encs])


def shared_image_features(loaded: models.Loaded, encs: Sequence[models.Encoded],
                          image_keys: Sequence[str]) -> list | None:
    """Each prompt's input embeddings with the vision tower run once per distinct image
    (`image_keys[p]` names prompt p's one image): the items of one photo asked on its full
    view share its features. None where the family's cached-feature path is not exact
    (models.SHARED_FEATURE_FAMILIES) or a prompt has several images."""
    import mlx.core as mx

    model = loaded.model
    if model.config.model_type not in models.SHARED_FEATURE_FAMILIES or any(
            e.num_images != 1 for e in encs):
        return None
    cache, out = {}, []
    for e, key in zip(encs, image_keys):
        if key not in cache:
            cache[key] = models.image_features(model, e.pixel_values, e.image_grid_thw)
            mx.eval(cache[key])
        models.reset_rope_state(model)
        f = model.get_input_embeddings(e.input_ids, e.pixel_values,
                                       image_grid_thw=e.image_grid_thw,
                                       cached_image_features=cache[key])
        mx.eval([v for v in f.to_dict().values() if isinstance(v, mx.array)])
        models.reset_rope_state(model)
        out.append(f)
    return out


def letters(loaded: models.Loaded, prompts: Sequence[tuple], options: Sequence[Sequence[str]],
            n: int, temperature: float, keys, max_tokens: int,
            pixels: PixelConfig = PixelConfig(), image_keys: Sequence[str] | None = None
            ) -> tuple[list[list], list[list[str]]]:
    """n sampled answers per prompt: (option letters or None, the answers' texts).
    `image_keys`: prompts with the same key show the same one image (its features are
    computed once, shared_image_features)."""
    if not prompts:
        return [], []
    encs = [models.encode(loaded, list(ims), text, pixels) for ims, text in prompts]
    features = None if image_keys is None else shared_image_features(loaded, encs, image_keys)
    outs = rollout.sample_prompts(loaded, encs, n, max_tokens, temperature=temperature,
                                  keys=list(keys), features=features)
    all_letters, all_texts = [], []
    for o, opts in zip(outs, options):
        t = [_decode(loaded, ids, fin, False) for ids, fin in zip(o.token_ids, o.finished)]
        all_texts.append(t)
        all_letters.append([parse_answer(x, opts) for x in t])
    return all_letters, all_texts
