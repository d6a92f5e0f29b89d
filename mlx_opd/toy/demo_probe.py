"""What a demo base's full view still carries about the evidence: linear probes.

Vision-OPD trains LoRA on the language model; the vision tower stays frozen. So the
student can only learn to answer from a full view what the frozen tower still passes on.
Two probes read the evidence colour (the answer) from the base's features of the FULL
view, fitted on one set of scenes and scored on another (their own seed stream):

- `vision`: the merged vision feature (the language model's input) of the image token
  that holds the evidence's centre: what the frozen tower passes on where the evidence is;
- `answer`: the language model's last hidden state at the answer position: what reaches
  the head, before it is turned into the uniform answer.

Softmax regression on standardised features (numpy, full-batch gradient descent with a
small L2 penalty): a measuring instrument, not part of training.
"""

from __future__ import annotations

import numpy as np

PROBE_SEED_OFFSET = 9_000_011  # the probe's scenes: disjoint from every other demo split
MERGE_PATCH = 28               # qwen2.5-vl: 14 px patches, merged 2 x 2 into one token


def evidence_token(sample, image_size: tuple[int, int]) -> int:
    """Index (raster order) of the merged image token holding the evidence box's centre,
    for the image as the model saw it (`image_size`: width, height after the resize)."""
    from mlx_opd.method.views import open_rgb

    w0, h0 = open_rgb(sample.image, sample.where).size
    w, h = image_size
    x0, y0, x1, y1 = sample.box
    cx, cy = (x0 + x1) / 2 * w / w0, (y0 + y1) / 2 * h / h0
    cols = w // MERGE_PATCH
    return int(cy // MERGE_PATCH) * cols + int(cx // MERGE_PATCH)


def features(loaded, samples, r, keys=("vision", "answer")) -> dict:
    """{"vision": [N, D], "answer": [N, H], "label": [N]} of the student's views (the demo:
    the plain full image; the keys asked for, and the labels)."""
    import mlx.core as mx

    from mlx_opd import models
    from mlx_opd.method.views import LETTERS, plain_view, student_view
    from mlx_opd.toy.demo_base import pixels, views

    out = {k: [] for k in (*keys, "label")}
    for s in samples:
        v = plain_view(s, views(r)) if r.student == "plain" else student_view(s, views(r))
        enc = models.encode(loaded, v.image, v.text, pixels(r))
        if "vision" in keys:
            f = models.image_features(loaded.model, enc.pixel_values, enc.image_grid_thw)
            out["vision"].append(np.array(f[evidence_token(s, enc.image_size)]
                                          .astype(mx.float32)))
        if "answer" in keys:
            h = models.response_hidden(loaded.model, models.make_batch([enc], [[0]]))
            out["answer"].append(np.array(h[0, 0].astype(mx.float32)))
        out["label"].append(LETTERS.index(s.answer))
    return {k: np.stack(v) if k != "label" else np.array(v) for k, v in out.items()}


def fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-2,
                steps: int = 500, lr: float = 0.5):
    """Multinomial logistic regression on standardised x; returns predict(x) -> labels."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w, b = np.zeros((z.shape[1], classes)), np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        logits = z @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(y)
        w -= lr * (z.T @ g + l2 * w)
        b -= lr * g.sum(0)
    return lambda q: ((q - mu) / sd @ w + b).argmax(1)


def probe(loaded, fit_samples, test_samples, r, keys=("vision", "answer")) -> dict:
    """Held-out accuracy of each probe (chance: 1 / options)."""
    fit = features(loaded, fit_samples, r, keys)
    test = features(loaded, test_samples, r, keys)
    out = {}
    for key in keys:
        predict = fit_softmax(fit[key], fit["label"], r.synth.n_options)
        out[key] = float((predict(test[key]) == test["label"]).mean())
    out["chance"] = 1 / r.synth.n_options
    out["n_fit"], out["n_test"] = len(fit_samples), len(test_samples)
    return out
