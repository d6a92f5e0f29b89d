"""Crop vs full answers for one sample: the regional-to-global gap, up close.

For each view (plain full image, student view with box + hint, teacher crop) the model
answers greedily; then a gap probe scores the plain answer under the teacher (crop) view
and the plain view and reports the per-token JSD (beta 0.5) between the two next-token
distributions: large values mark tokens the model would say differently if it saw the
evidence up close.
"""

from __future__ import annotations

from mlx_opd import models
from mlx_opd.data import Sample
from mlx_opd.method import rollout
from mlx_opd.method.loss import generalized_jsd
from mlx_opd.method.views import LETTERS, all_views
from mlx_opd.run.config import CompareConfig, PixelConfig, ViewConfig


def option_probs(loaded: models.Loaded, first_logprobs, n_options: int) -> dict:
    """The probability of each option's letter as the answer's first token, from the
    greedy answer's own first step (rollout.Sampled.first_logprobs)."""
    import mlx.core as mx

    probs = mx.exp(first_logprobs.reshape(-1))
    tok = loaded.tokenizer
    out = {}
    for letter in LETTERS[:n_options]:
        ids = tok.encode(letter, add_special_tokens=False)
        out[letter] = float(probs[ids[0]].item()) if len(ids) == 1 else None
    return out


def compare(loaded: models.Loaded, sample: Sample, view_cfg: ViewConfig = ViewConfig(),
            pixels: PixelConfig = PixelConfig(),
            max_tokens: int = CompareConfig.max_tokens) -> dict:
    """Answers of the three views and the gap probe, as a JSON-ready dict."""
    views = all_views(sample, view_cfg)
    encoded, out = {}, {}
    for name, view in views.items():
        enc = models.encode(loaded, view.images, view.text, pixels.for_view(name))
        s = rollout.sample(loaded, enc, max_tokens=max_tokens, temperature=0.0)
        encoded[name] = (enc, s)
        out[name] = {
            "answer": models.decode(loaded, s.token_ids),
            "token_ids": s.token_ids,
            "mean_logprob": sum(s.logprobs) / len(s.logprobs) if s.logprobs else None,
            "prompt_tokens": enc.prompt_len,
            "image_tokens": models.image_token_count(loaded, enc),
            "image_size": list(view.images[0].size),
            "image_sizes": [list(im.size) for im in view.images],
            "finish_reason": s.finish_reason,
            "text": view.text,
        }
        if sample.options:
            out[name]["option_probs"] = option_probs(loaded, s.first_logprobs,
                                                     len(sample.options))
    full = "plain" if "plain" in encoded else "student"
    enc_full, s_full = encoded[full]
    # Score the full-image answer including its stop token: the decision to stop counts.
    response = s_full.ids_with_stop
    probe = {"along": full, "per_token": [], "mean": None}
    if response:
        batch = models.make_batch([encoded["teacher"][0], enc_full], [response, response])
        lp = models.response_logprobs(loaded.model, batch)
        per_token = generalized_jsd(lp[0], lp[1], beta=0.5)
        probe["per_token"] = [float(v) for v in per_token.tolist()]
        probe["mean"] = sum(probe["per_token"]) / len(probe["per_token"])
        probe["tokens"] = [models.decode(loaded, [t]) for t in response]
    return {"model": str(loaded.path), "adapter": None if loaded.adapter_path is None
            else str(loaded.adapter_path), "views": out, "gap_probe": probe}


def format_table(result: dict) -> str:
    """A terminal-friendly side-by-side summary."""
    lines = [f"{'view':<8} {'prompt':>6} {'img':>5} {'ans':>4} {'mean lp':>8}  answer"]
    for name, v in result["views"].items():
        mlp = "-" if v["mean_logprob"] is None else f"{v['mean_logprob']:.3f}"
        ans = v["answer"].replace("\n", " ")[:60]
        lines.append(f"{name:<8} {v['prompt_tokens']:>6} {v['image_tokens']:>5} "
                     f"{len(v['token_ids']):>4} {mlp:>8}  {ans!r}")
    p = result["gap_probe"]
    if p["mean"] is not None:
        lines.append(f"gap probe (JSD beta=0.5, crop vs {p['along']}, along the {p['along']} "
                     f"answer): mean {p['mean']:.4f} over {len(p['per_token'])} tokens, "
                     f"max {max(p['per_token']):.4f}")
    return "\n".join(lines)
