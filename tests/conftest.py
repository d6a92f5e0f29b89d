"""Shared fixtures: tiny checkpoints built offline, once per test session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import mlx_opd  # noqa: E402,F401  (preloads the BLAS before mlx.core)
from mlx_opd.models.layouts import SUPPORTED_FAMILIES  # noqa: E402

# Tolerances per dtype for results that go through different code paths (batched vs
# unbatched BLAS, chunked vs whole), as in mlx's own tests. Model outputs (log-probs of
# magnitude ~log V after a few layers) get 1e-5; exact equality is kept for integers and
# for the same computation run twice.
TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "float16": dict(rtol=1e-3, atol=1e-3),
       "bfloat16": dict(rtol=1e-2, atol=1e-2)}
FP32 = TOL["float32"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """family -> path of a tiny checkpoint (seed 0)."""
    from mlx_opd.toy.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {f: build_tiny_model(f, root / f, seed=0) for f in SUPPORTED_FAMILIES}


@pytest.fixture(scope="session")
def loaded(tiny_dir):
    """family -> models.Loaded, cached for the session."""
    from mlx_opd import models

    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = models.load(tiny_dir[family])
        return cache[family]

    return get


def random_image(seed, h, w):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
