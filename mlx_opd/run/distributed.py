"""Data-parallel Vision-OPD over MLX's distributed engine (`mx.distributed`, `mlx.launch`).

    mlx.launch --hosts mac1,mac2 --backend ring -- mlx-opd train --config run.yaml

Every rank holds the whole model. At each step the global list of prompts is the one a
single process would use; rank r takes prompts j with j % N == r (keeping their global
index j, so the sampling keys are the single-process ones), rolls them out and scores
them locally. Each prompt's loss is normalised by the step's GLOBAL token count (one
all-sum of a scalar), so the all-sum of the ranks' accumulated gradients is exactly the
single-process gradient of the union of their batches; every rank then takes the same
optimizer step and the same teacher update. Only LoRA gradients cross the link.
Only rank 0 writes files; a resumed run is broadcast from rank 0's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map


class DistributedError(RuntimeError):
    """Ranks that cannot train together (different configs or models, no group)."""


@dataclass
class Dist:
    group: object
    rank: int
    size: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init(required: bool = False) -> Dist:
    """The process group (size 1 when not launched by mlx.launch)."""
    group = mx.distributed.init()
    d = Dist(group, group.rank(), group.size())
    if required and not d.active:
        raise DistributedError("--distributed needs several processes: launch with `mlx.launch -n 2 "
                           "--backend ring -- mlx-opd train ...` (or --hosts for several Macs)")
    return d


def config_hash(cfg_dict: dict, model_path: str) -> str:
    """What must be identical on every rank: the config (less the output folder) and the
    model's config.json and weight file sizes."""
    cfg = json.loads(json.dumps(cfg_dict))
    cfg.get("run", {}).pop("out", None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    p = Path(model_path)
    if (p / "config.json").exists():
        h.update((p / "config.json").read_bytes())
        for f in sorted(p.glob("*.safetensors")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    else:
        h.update(model_path.encode())
    return h.hexdigest()


def check_same(d: Dist, digest: str) -> None:
    """Stop every rank with a clear message when the ranks' configs or models differ."""
    if not d.active:
        return
    mine = mx.array([int(digest[i:i + 6], 16) for i in range(0, 60, 6)], dtype=mx.int32)
    every = mx.distributed.all_gather(mine[None], group=d.group)
    mx.eval(every)
    rows = [tuple(r) for r in every.tolist()]
    if len(set(rows)) > 1:
        differ = [i for i, r in enumerate(rows) if r != rows[0]]
        raise DistributedError(f"ranks {differ} run a different config or model than rank 0 "
                           f"(config hash mismatch); give every rank the same config file and "
                           f"model folder")


def all_sum(x, d: Dist):
    return mx.distributed.all_sum(x, group=d.group) if d.active else x


def barrier(d: Dist) -> None:
    if d.active:
        mx.eval(all_sum(mx.array(0.0), d))


def sum_tree(tree, d: Dist):
    """All-sum every array of `tree` with ONE collective per dtype: the arrays are packed
    into a flat buffer, summed, and unpacked (one round of ring latency, not one per array)."""
    if not d.active:
        return tree
    from mlx.utils import tree_unflatten

    flat = tree_flatten(tree)
    out = {}
    for dtype in {v.dtype for _, v in flat}:
        items = [(k, v) for k, v in flat if v.dtype == dtype]
        summed = all_sum(mx.concatenate([v.reshape(-1) for _, v in items]), d)
        offset = 0
        for k, v in items:
            out[k] = summed[offset:offset + v.size].reshape(v.shape)
            offset += v.size
    return tree_unflatten([(k, out[k]) for k, _ in flat])


def sum_floats(values: list[float], d: Dist) -> list[float]:
    if not d.active:
        return values
    out = all_sum(mx.array(values, dtype=mx.float32), d)
    return out.tolist()


def gather_float(x: float, d: Dist) -> list[float]:
    if not d.active:
        return [x]
    out = mx.distributed.all_gather(mx.array([x], dtype=mx.float32), group=d.group)
    return out.tolist()


def broadcast_tree(tree, d: Dist):
    """Rank 0's values everywhere (the others contribute zeros to an all-sum)."""
    if not d.active:
        return tree
    return tree_map(lambda x: all_sum(x if d.main else mx.zeros_like(x), d), tree)


def my_share(items: list, d: Dist) -> list[tuple[int, object]]:
    """(global index, item) pairs this rank handles: j % size == rank."""
    return [(j, it) for j, it in enumerate(items) if j % d.size == d.rank]


def tree_bytes(tree) -> int:
    return sum(v.nbytes for _, v in tree_flatten(tree))


class Watchdog:
    """Ends this process if a step makes no progress for `timeout` seconds, e.g. when a
    peer hangs instead of dying (a dead peer closes its sockets and the ring backend
    fails at once). Files already written stay as they are: checkpoints are atomic."""

    def __init__(self, timeout: float, rank: int):
        self.timeout, self.rank = timeout, rank
        self.last = time.monotonic()
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def beat(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if time.monotonic() - self.last > self.timeout:
                print(f"[rank {self.rank}] no progress for {self.timeout:.0f} s (a peer is gone "
                      "or stuck); stopping. Resume with --resume RUN_DIR.", file=sys.stderr,
                      flush=True)
                os._exit(3)
