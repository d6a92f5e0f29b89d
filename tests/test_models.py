"""The model adapter: teacher forcing agrees with the sampler, batches agree with singles."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_unflatten

from mlx_opd import models
from mlx_opd.method import rollout
from mlx_opd.models.layouts import SUPPORTED_FAMILIES, UnsupportedFamilyError
from mlx_opd.run.config import PixelConfig

from .conftest import FP32, random_image

pytestmark = pytest.mark.numerics  # every test here compares model paths numerically


def _biased_logprobs(lp, blocked):
    """Apply the sampler's logit bias to teacher-forced log-probs and renormalise."""
    bias = np.zeros(lp.shape[-1], dtype=np.float32)
    bias[blocked] = models.BLOCK_BIAS
    lg = lp + mx.array(bias)
    return lg - mx.logsumexp(lg, axis=-1, keepdims=True)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_teacher_forcing_matches_sampler(family, loaded):
    L = loaded(family)
    enc = models.encode(L, random_image(1, 96, 128), "What is the colour of the circle?")
    s = rollout.sample(L, enc, max_tokens=12, temperature=1.0, seed=7, keep_full=True)
    assert len(s.token_ids) >= 1
    lp = models.response_logprobs(L.model, models.make_batch([enc], [s.token_ids]))[0]
    lp = _biased_logprobs(lp[: len(s.token_ids)], models.blocked_token_ids(L))
    keep = np.setdiff1d(np.arange(lp.shape[-1]), models.blocked_token_ids(L))
    ref = np.stack([np.array(x) for x in s.full_logprobs])[:, keep]
    # qwen3_5's gated-delta layers decode recurrently but prefill in chunks: ~1e-5 apart.
    np.testing.assert_allclose(np.array(lp)[:, keep], ref, atol=1e-5, rtol=1e-5)
    # and the sampled token's own log-prob
    chosen = [float(np.array(lp)[t, tok]) for t, tok in enumerate(s.token_ids)]
    np.testing.assert_allclose(chosen, s.logprobs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_right_padded_batch_equals_singles(family, loaded):
    L = loaded(family)
    encs = [models.encode(L, random_image(2, 120, 160), "What is the colour?"),
            models.encode(L, random_image(3, 60, 90), "Which shape is inside the red box?",
                          PixelConfig(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16))]
    assert encs[0].prompt_len != encs[1].prompt_len  # different image token counts
    responses = [[5, 17, 33, 2, 9, 40, 41], [12, 7]]
    batch = models.make_batch(encs, responses)
    lp_b = models.response_logprobs(L.model, batch)
    for i, (e, r) in enumerate(zip(encs, responses)):
        lp_1 = models.response_logprobs(L.model, models.make_batch([e], [r]))[0]
        np.testing.assert_allclose(np.array(lp_b[i, : len(r)]), np.array(lp_1[: len(r)]),
                                   atol=1e-5)
    assert np.array(batch.response_mask).sum(axis=1).tolist() == [7, 2]
    # hidden states + head == logits
    h = models.response_hidden(L.model, batch)
    np.testing.assert_allclose(np.array(models.apply_head(L.model, h)),
                               np.array(models.response_logits(L.model, batch)), atol=1e-5)


def test_stale_rope_state_is_reset(loaded):
    L = loaded("qwen2_5_vl")
    a = models.encode(L, random_image(4, 120, 160), "First question?")
    b = models.encode(L, random_image(5, 64, 64), "Second?")
    fresh = np.array(models.response_logprobs(L.model, models.make_batch([b], [[3, 4, 5]])))
    models.response_logprobs(L.model, models.make_batch([a], [[3, 4, 5]]))
    rollout.sample(L, a, max_tokens=3)  # leaves generation state behind in mlx-vlm
    again = np.array(models.response_logprobs(L.model, models.make_batch([b], [[3, 4, 5]])))
    np.testing.assert_allclose(again, fresh, atol=1e-6)


def test_pixel_controls_change_image_tokens(loaded):
    L = loaded("qwen2_vl")
    img = random_image(6, 300, 400)
    small = models.encode(L, img, "Q?", PixelConfig(max_pixels=28 * 28 * 4))
    big = models.encode(L, img, "Q?", PixelConfig(min_pixels=28 * 28 * 64))
    exact = models.encode(L, img, "Q?", PixelConfig(resized_height=112, resized_width=168))
    assert models.image_token_count(L, small) <= 4 < models.image_token_count(L, big)
    assert models.image_token_count(L, exact) == (112 // 28) * (168 // 28)
    assert exact.image_size == (168, 112)


def test_pad_tokens_are_blocked(tiny_dir):
    """Make <|image_pad|> the model's favourite token: unblocked it is sampled, blocked never."""
    L = models.load(tiny_dir["qwen2_vl"])  # a private copy: its head is edited below
    pad = L.model.config.image_token_id
    assert pad in models.blocked_token_ids(L)
    enc = models.encode(L, random_image(7, 64, 64), "Q?")
    h = models.response_hidden(L.model, models.make_batch([enc], [[1, 2, 3]]))
    # a head row aligned with typical hidden states dominates the logits
    L.model.language_model.lm_head.weight[pad] = mx.sign(h.mean(axis=(0, 1))) * 10.0
    unblocked = rollout.sample(L, enc, max_tokens=6, block_pad_tokens=False)
    blocked = rollout.sample(L, enc, max_tokens=6, block_pad_tokens=True)
    assert pad in unblocked.token_ids
    assert pad not in blocked.token_ids and len(blocked.token_ids) > 0


def test_unsupported_family_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(UnsupportedFamilyError) as e:
        models.load(tmp_path)
    msg = str(e.value)
    assert "llava" in msg and "config.json" in msg
    assert all(f in msg for f in SUPPORTED_FAMILIES)


def test_missing_config_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load(tmp_path)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_shared_prompt_runs_vision_once_within_fp32_tolerance(family, loaded, monkeypatch):
    """n responses to one prompt: vision features computed once (where that is exact in
    real arithmetic) give the log-probs of n separate prompts. Batched and unbatched BLAS
    calls round differently (OpenBLAS picks kernels by shape, CPU and thread count), so the
    comparison is at fp32 tolerance, never bitwise."""
    L = loaded(family)
    enc = models.encode(L, random_image(8, 120, 160), "What colour?")
    copy = models.encode(L, random_image(8, 120, 160), "What colour?")
    resp = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    calls = []
    from mlx_opd.models import vlm  # where make_batch looks image_features up

    real = vlm.image_features
    monkeypatch.setattr(vlm, "image_features", lambda *a: calls.append(1) or real(*a))
    shared = models.response_logprobs(L.model, models.make_batch([enc] * 3, resp))
    separate = models.response_logprobs(L.model, models.make_batch([enc, copy, enc], resp))
    np.testing.assert_allclose(np.array(shared), np.array(separate), **FP32)
    assert len(calls) == (1 if family in models.SHARED_FEATURE_FAMILIES else 0)


@pytest.mark.numerics
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_precomputed_inputs_give_the_same_loss_and_lora_gradients(family, loaded):
    """The student pass computes the frozen vision tower's output before the gradient
    pass (score.score): loss and LoRA gradients equal the in-pass computation."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlx_opd.models import lora
    from mlx_opd.run.config import LoraConfig
    lm = models.load(loaded(family).path)
    lora.attach(lm.model, LoraConfig(rank=4))
    # LoRA B starts at zero: give it values so the gradients reach every adapted layer
    lm.model.update(tree_unflatten([(k, 0.05 * mx.random.normal(v.shape, key=mx.random.key(i)))
                                    for i, (k, v) in enumerate(tree_flatten(
                                        lm.model.trainable_parameters()))]))
    enc = models.encode(lm, random_image(3, 96, 128), "What is it?")
    batch = models.make_batch([enc] * 3, [[5, 6, 7], [8, 9], [10, 11, 12, 13]])
    lm.model.train()

    def objective(features):
        def f(m):
            with models.precomputed_inputs(m, features):
                return models.response_hidden(m, batch).square().sum()
        return f

    ref_v, ref_g = nn.value_and_grad(lm.model, objective(None))(lm.model)
    feats = models.input_features(lm.model, batch)
    v, g = nn.value_and_grad(lm.model, objective(feats))(lm.model)
    np.testing.assert_allclose(np.array(v), np.array(ref_v), **FP32)
    for (k, a), (_, b) in zip(tree_flatten(g), tree_flatten(ref_g)):
        np.testing.assert_allclose(np.array(a), np.array(b), err_msg=k, **FP32)
