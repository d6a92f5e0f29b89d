"""The length-varying rollout workload (answer_lengths.py): the stated distribution, and
the same forced lengths run through mlx-vlm's own batch engine (its per-row form)."""

import mlx.core as mx
import numpy as np

from mlx_opd import models
from mlx_opd.toy.answer_lengths import ForcedLengths, _RowProcessor, draw_lengths, fixed_lengths


def test_lengths_follow_the_stated_mix():
    """75% direct answers of 2..6 tokens, the rest between max_tokens // 8 and max_tokens;
    a seed gives the same lengths again."""
    T = 256
    x = np.array(draw_lengths(4000, T, seed=1))
    short = x <= 6
    assert abs(short.mean() - 0.75) < 0.03  # binomial sd 0.007
    assert x[short].min() == 2 and x[short].max() == 6
    assert x[~short].min() >= T // 8 and x[~short].max() == T
    assert draw_lengths(50, T, seed=1) == draw_lengths(50, T, seed=1) != draw_lengths(50, T, seed=2)
    assert fixed_lengths(3, T) == [T + 1] * 3


def test_the_batched_and_per_row_forms_force_the_same_lengths():
    eos = (5, 9)
    forced = ForcedLengths([1, 3, 300], eos)
    logits = mx.zeros((3, 12))
    for t in range(4):
        batched = np.array(forced(logits, mx.array([t, t, t]), mx.array([0, 1, 2])))
        # a row's processor after t calls (mlx-vlm calls it once per token, in order)
        rows = [np.array(_RowProcessor(forced, r, t)(mx.array([]), logits[r:r + 1]))[0]
                for r in range(3)]
        np.testing.assert_array_equal(batched, np.stack(rows))
        for r, length in enumerate([1, 3, 300]):
            allowed = set(np.flatnonzero(batched[r] == 0))
            assert allowed == ({5} if t + 1 == length else set(range(12)) - set(eos))


def test_mlx_vlms_batch_generate_stops_rows_where_forced(loaded):
    """mlx-vlm's batch_generate (its BatchGenerator) with the per-row processors: every
    row generates exactly its drawn length (its own token count), and stops on EOS."""
    from mlx_vlm.generate import batch_generate

    from .conftest import random_image

    L = loaded("qwen2_5_vl")
    T = 20
    lengths = draw_lengths(6, T, seed=4)
    forced = ForcedLengths(lengths, tuple(models.eos_token_ids(L)))
    images = [random_image(30 + i, 56, 56) for i in range(6)]
    res = batch_generate(L.model, L.processor, images=images, prompts=["Q?"] * 6,
                         max_tokens=T, logits_processors=[[forced.for_row(r)] for r in range(6)],
                         sampler=lambda lp: mx.random.categorical(lp))
    assert res.stats.generation_tokens == sum(lengths)
