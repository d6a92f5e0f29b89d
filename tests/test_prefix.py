"""Shared-prefix scoring against the duplicated-prompt reference, for every family."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from mlx_opd import models
from mlx_opd.data import read_samples
from mlx_opd.method import prefix, rollout, trainer
from mlx_opd.method import score as scoring
from mlx_opd.method import step as stepping
from mlx_opd.method.teacher import Teacher
from mlx_opd.method.views import student_view
from mlx_opd.models import lora
from mlx_opd.models.grad_checkpoint import checkpoint_layers, restore_layers
from mlx_opd.models.layouts import SUPPORTED_FAMILIES
from mlx_opd.run.config import load_train_config

from .conftest import FP32
from .test_step import DATA, EXAMPLE


def _setup(path, tmp_path, **overrides):
    cfg = load_train_config(str(EXAMPLE), {
        "model.path": str(path), "data.path": str(DATA), "run.out": str(tmp_path / "run"),
        "loss.k": 16, "lora.rank": 4, "rollout.temperature": 1.3, **overrides})
    L = models.load(path)
    lora.attach(L.model, cfg.lora)
    rng = np.random.default_rng(1)
    base = lora.trainable(L.model)
    # random adapters on both sides: B = 0 would make the LoRA gradients trivial
    L.model.update(tree_unflatten([(k, mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32)))
                                   for k, v in base.items()]))
    teacher = Teacher(L.model, cfg.teacher)
    teacher.params = {k: mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32))
                      for k, v in base.items()}
    return cfg, L, teacher


@pytest.mark.numerics
@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "grad_checkpoint"])
def test_shared_prefix_equals_duplicated_prompts(family, checkpointing, tiny_dir, tmp_path):
    """Loss, LoRA gradients and argmax agreement of one prompt's responses: the prompt run
    once (teacher and student) equals the prompt repeated per row, within fp32 tolerance,
    with and without gradient checkpointing (whose recomputation must see the same cache
    context). Covers qwen3_5's recurrent layers and qwen3_vl's deepstack features."""
    cfg, L, teacher = _setup(tiny_dir[family], tmp_path)
    sample = read_samples(cfg.data)[0][0]
    view = student_view(sample, cfg.views)
    enc = models.encode(L, view.image, view.text, cfg.pixels)
    t_enc = stepping.teacher_prompt(L, sample, cfg)
    if checkpointing:
        checkpoint_layers(L.model)
    try:
        assert_shared_equals_duplicated(cfg, L, teacher, enc, t_enc)
    finally:
        restore_layers(L.model)


def assert_shared_equals_duplicated(cfg, L, teacher, enc, t_enc):
    """Score one prompt's responses both ways; loss, agreement and LoRA gradients equal
    within fp32 tolerance. Returns the shared path's Scored."""
    eos = models.eos_token_ids(L)[-1]
    # rows of different lengths (one of length 1), some ending in EOS
    responses = [[5, 6, 7, 8, 9], [10, eos], [11], [12, 13, 14, eos]]
    got = {}
    for shared in (True, False):
        c = trainer.replace(cfg, score=trainer.replace(cfg.score, shared_prefix=shared))
        got[shared] = scoring.score(L, teacher, c, enc, t_enc, responses, 10.0)
    a, b = got[True], got[False]
    assert a.loss == pytest.approx(b.loss, **{"rel": FP32["rtol"], "abs": FP32["atol"]})
    assert a.agree == b.agree
    ga, gb = dict(tree_flatten(a.grads)), dict(tree_flatten(b.grads))
    assert set(ga) == set(gb) and ga
    scale = max(float(mx.abs(v).max().item()) for v in gb.values())
    assert scale > 1e-4  # the comparison below means something
    for name in gb:
        np.testing.assert_allclose(np.array(ga[name]), np.array(gb[name]), rtol=1e-4,
                                   atol=1e-5 * scale, err_msg=name)
    return a


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_shared_prefix_hidden_states_equal_the_duplicated_batch(family, loaded):
    """Teacher-forced hidden states at every response position, both paths (fp32)."""
    L = loaded(family)
    from .conftest import random_image

    enc = models.encode(L, random_image(3, 70, 90), "What is in the box?")
    responses = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    ids, mask = models.pad_responses(responses)
    L.model.eval()
    shared = prefix.response_hidden(L.model, enc, ids)
    dup = models.response_hidden(L.model, models.make_batch([enc] * 3, responses))
    m = np.array(mask)[..., None] > 0
    np.testing.assert_allclose(np.where(m, np.array(shared), 0), np.where(m, np.array(dup), 0),
                               **FP32)


def test_checkpointing_is_undone(loaded):
    L = loaded("qwen2_vl")
    cls = type(L.model.language_model.model.layers[0])
    before = cls.__call__
    checkpoint_layers(L.model)
    assert cls.__call__ is not before
    restore_layers(L.model)
    assert cls.__call__ is before


# --- rollouts: several prompts decoded together -------------------------------------------

def _teacher_forced_logprobs(L, enc, rows, temperature, forced=None, first_row=0):
    """The sampler's distribution recomputed by teacher forcing (duplicated batch): the
    log-prob of each kept token after temperature, the pad-token bias and, with `forced`
    (answer_lengths.ForcedLengths; rows first_row, first_row + 1, ...), its bias."""
    batch = models.make_batch([enc] * len(rows), rows)
    z = models.response_logits(L.model, batch).astype(mx.float32) / temperature
    z = z + models.sampling_bias(L, z.shape[-1])
    if forced is not None:
        T = z.shape[1]
        pos = mx.broadcast_to(mx.arange(T)[None, :], (len(rows), T)).reshape(-1)
        lengths = mx.array(forced.lengths)[first_row:first_row + len(rows)]
        length = mx.repeat(lengths, T)
        z = z + forced.bias(pos, length, z.shape[-1]).reshape(z.shape)
    lp = z - mx.logsumexp(z, -1, keepdims=True)
    return [[float(lp[i, t, tok].item()) for t, tok in enumerate(r)] for i, r in enumerate(rows)]


@pytest.mark.numerics
@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_prompts_decoded_together_match_teacher_forcing(family, loaded):
    """Three prompts of different lengths (left-padded caches, per-row M-RoPE deltas)
    decode as one batch: every kept token's sampler log-prob equals the teacher-forced one
    at its position, for every row (1e-5), rows stop on their own, and no pad token is
    ever sampled."""

    from .conftest import random_image

    L = loaded(family)
    L.model.eval()
    encs = [models.encode(L, random_image(10 + i, h, w), q) for i, (h, w, q) in
            enumerate([(60, 80, "What is it?"), (120, 90, "Which colour is the box, exactly?"),
                       (40, 40, "Q?")])]
    assert len({e.prompt_len for e in encs}) == 3
    keys = [mx.random.key(100 + i) for i in range(3)]
    outs = rollout.sample_prompts(L, encs, 3, 7, temperature=1.2, keys=keys)
    blocked = set(models.blocked_token_ids(L))
    for enc, r in zip(encs, outs):
        assert len(r.token_ids) == 3
        assert not any(t in blocked for row in r.token_ids for t in row)
        want = _teacher_forced_logprobs(L, enc, r.token_ids, 1.2)
        for got_row, want_row in zip(r.logprobs, want):
            np.testing.assert_allclose(got_row, want_row, **FP32)
    # a row's draw depends on (its prompt's key, its index), not on its batch-mates
    alone = rollout.sample_prompts(L, encs[1:2], 3, 7, temperature=1.2, keys=keys[1:2])[0]
    assert alone.token_ids == outs[1].token_ids
    np.testing.assert_allclose(sum(alone.logprobs, []), sum(outs[1].logprobs, []), **FP32)


@pytest.mark.numerics
@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_finished_rows_leave_the_batch_and_change_no_sample(family, loaded):
    """Rows that stopped leave the batch (issue 32): on a length-varying workload (EOS
    forced at drawn lengths) every row samples the same ids as when all rows decode to
    the end, each kept token's log-prob equals the teacher-forced one (1e-5), the rows end
    where forced, and the decode computes fewer positions."""
    from mlx_opd.toy.answer_lengths import ForcedLengths, draw_lengths

    from .conftest import random_image

    L = loaded(family)
    L.model.eval()
    encs = [models.encode(L, random_image(20 + i, h, w), q) for i, (h, w, q) in
            enumerate([(60, 80, "What is it?"), (40, 40, "Which colour is the box?")])]
    n, T = 4, 30
    lengths = draw_lengths(2 * n, T, seed=3)
    assert min(lengths) < rollout.CHECK_EVERY < max(lengths)  # some leave, some go on
    forced = ForcedLengths(lengths, tuple(models.eos_token_ids(L)))
    keys = [mx.random.key(7), mx.random.key(8)]
    leave = rollout.sample_prompts(L, encs, n, T, 1.2, keys, processor=forced)
    stay = rollout.sample_prompts(L, encs, n, T, 1.2, keys, processor=forced, leave=False)
    assert [len(t) for r in leave for t in r.token_ids] == lengths
    assert all(f for r in leave for f in r.finished)
    for a, b in zip(leave, stay):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(sum(a.logprobs, []), sum(b.logprobs, []), **FP32)
        assert sum(len(t) for t in a.token_ids) <= a.computed_tokens < b.computed_tokens
        # without leaving, every row runs until the check after the longest row's EOS
        C = rollout.CHECK_EVERY
        assert b.computed_tokens == n * min(T, -(-max(lengths) // C) * C)
    for p, (enc, r) in enumerate(zip(encs, leave)):
        want = _teacher_forced_logprobs(L, enc, r.token_ids, 1.2, forced, p * n)
        for got_row, want_row in zip(r.logprobs, want):
            np.testing.assert_allclose(got_row, want_row, **FP32)


@pytest.mark.numerics
@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_waiting_prompts_enter_as_rows_leave(family, loaded):
    """With room for two prompts' rows, the third prompt waits and enters when the first
    prompt's rows have left (its cache joins the batch at another offset): every row
    samples what it samples with all prompts at once, and its log-probs equal the
    teacher-forced ones (1e-5)."""
    from mlx_opd.toy.answer_lengths import ForcedLengths

    from .conftest import random_image

    L = loaded(family)
    L.model.eval()
    encs = [models.encode(L, random_image(40 + i, h, w), q) for i, (h, w, q) in
            enumerate([(60, 80, "What is it?"), (40, 40, "Q?"),
                       (120, 90, "Which colour is the box, exactly?")])]
    n, T = 2, 20
    forced = ForcedLengths([3, 3, 20, 15, 5, 12], tuple(models.eos_token_ids(L)))
    keys = [mx.random.key(30 + i) for i in range(3)]
    together = rollout.sample_prompts(L, encs, n, T, 1.2, keys, processor=forced)
    entered = rollout.sample_prompts(L, encs, n, T, 1.2, keys, processor=forced, capacity=4)
    for a, b in zip(together, entered):
        assert a.token_ids == b.token_ids
    for p, (enc, b) in enumerate(zip(encs, entered)):
        want = _teacher_forced_logprobs(L, enc, b.token_ids, 1.2, forced, p * n)
        for got_row, want_row in zip(b.logprobs, want):
            np.testing.assert_allclose(got_row, want_row, **FP32)


def test_rows_stop_independently(loaded):
    """A row that emits EOS ends there (EOS kept) while the others go on."""

    from .conftest import random_image

    L = loaded("qwen2_vl")
    enc = models.encode(L, random_image(4, 50, 70), "Q?")
    eos = models.eos_token_ids(L)
    outs = rollout.sample_prompts(L, [enc, enc], 6, 24, temperature=3.0,
                                  keys=[mx.random.key(1), mx.random.key(2)])
    rows = [row for r in outs for row in r.token_ids]
    finished = [d for r in outs for d in r.finished]
    assert any(finished) and not all(finished)  # (seeded) both kinds of row occur
    for row, done in zip(rows, [d for r in outs for d in r.finished]):
        assert all(t not in eos for t in row[:-1])  # nothing after the first EOS
        assert done == (row[-1] in eos) and (done or len(row) == 24)


@pytest.mark.numerics
@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_the_rollouts_image_features_serve_the_student_pass(family, tiny_dir, tmp_path):
    """The vision tower runs once per image and step: the features the rollout computed
    (eval mode) give the same rollout and the same student loss and gradients as features
    computed afresh in each phase."""
    cfg, L, teacher = _setup(tiny_dir[family], tmp_path)
    sample = read_samples(cfg.data)[0][0]
    key = [mx.random.key(3)]
    (enc,), (r,), (feats,) = stepping.roll_out(L, [sample], cfg, key)
    assert feats is not None
    plain = rollout.sample_prompts(L, [enc], cfg.rollout.n, cfg.rollout.max_tokens,
                                   cfg.rollout.temperature, key)[0]
    assert plain.token_ids == r.token_ids
    np.testing.assert_allclose(sum(plain.logprobs, []), sum(r.logprobs, []), **FP32)
    t_enc = stepping.teacher_prompt(L, sample, cfg)
    a = scoring.score(L, teacher, cfg, enc, t_enc, r.token_ids, 7.0, feats)
    b = scoring.score(L, teacher, cfg, enc, t_enc, r.token_ids, 7.0)
    assert a.loss == pytest.approx(b.loss, rel=FP32["rtol"], abs=FP32["atol"])
    ga, gb = dict(tree_flatten(a.grads)), dict(tree_flatten(b.grads))
    scale = max(float(mx.abs(v).max().item()) for v in gb.values())
    for name in gb:
        np.testing.assert_allclose(np.array(ga[name]), np.array(gb[name]), rtol=1e-4,
                                   atol=1e-5 * scale, err_msg=name)


def test_prompt_groups_sample_the_same_answers(tiny_dir, tmp_path):
    """rollout.prompt_batch only trades memory for speed: decoding the step's prompts one
    at a time gives the same rows (per-row keys), and plan predicts a lower rollout peak."""
    from mlx_opd.preflight import plan

    cfg, L, _ = _setup(tiny_dir["qwen2_5_vl"], tmp_path)
    samples = read_samples(cfg.data)[0][:3]
    keys = [mx.random.key(7 + j) for j in range(3)]
    _, together, _ = stepping.roll_out(L, samples, cfg, keys)
    one = trainer.replace(cfg, rollout=trainer.replace(cfg.rollout, prompt_batch=1))
    _, alone, _ = stepping.roll_out(L, samples, one, keys)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    p_all, p_one = plan.plan(cfg), plan.plan(one)
    assert p_one["phases"]["rollout"] < p_all["phases"]["rollout"]
