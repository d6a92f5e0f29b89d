"""Training state that is never lost.

RUN_DIR/checkpoints/step_000010/ holds the student's adapters (mlx-vlm layout, so a
checkpoint is itself a loadable adapter folder), the teacher's copy, the optimizer state,
and state.json (step, data position, counters, seed). The RNG state is a function of
(seed, step): rollout keys and the global MLX seed are derived from them at every step. Each checkpoint is written
into a temporary folder and renamed into place, so a kill at any moment leaves the last
complete checkpoint readable; a folder without state.json is never considered.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlx_opd.run.files import remove_own, write_dir_atomically

_NAME = re.compile(r"^step_(\d{6,})$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save(run_dir: Path, step: int, adapters: dict, adapter_config: dict, teacher: dict,
         optimizer_state, state: dict, keep_last: int) -> Path:
    """Write checkpoint `step` atomically, then prune to the last `keep_last`."""
    dest = checkpoint_dir(run_dir) / f"step_{step:06d}"

    def write(tmp: Path):
        mx.save_safetensors(str(tmp / "adapters.safetensors"), adapters)
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        if teacher:
            mx.save_safetensors(str(tmp / "teacher.safetensors"), teacher)
        opt = dict(tree_flatten(optimizer_state))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"),
                            {k: v for k, v in opt.items() if isinstance(v, mx.array)})
        pause = float(os.environ.get("MLX_OPD_TEST_CHECKPOINT_PAUSE", "0"))
        if pause:  # test hook: widen the window in which a kill lands mid-write
            time.sleep(pause)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))  # written last

    write_dir_atomically(dest, write, kind="checkpoint")
    for old in complete(run_dir)[:-keep_last] if keep_last > 0 else []:
        remove_own(old, kinds=("checkpoint",))  # moved aside if anything else is in it
    return dest


def complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.exists():
        return []
    found = [p for p in d.iterdir() if _NAME.match(p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest(run_dir: Path) -> Path | None:
    found = complete(run_dir)
    return found[-1] if found else None


def load_latest(run_dir: Path, warn=None) -> tuple[Path, dict] | None:
    """(folder, contents) of the newest checkpoint that reads back whole; a newer one
    that does not (a disk error, a truncated file) is skipped with a warning naming it."""
    import warnings

    for path in reversed(complete(run_dir)):
        try:
            return path, load(path)
        except Exception as e:  # safetensors/JSON parse errors come in many types
            msg = (f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                   "resuming from the previous one")
            (warn or (lambda m: warnings.warn(m, stacklevel=3)))(msg)
    return None


def load(path: Path) -> dict:
    """{adapters, teacher, optimizer (nested), state} of one checkpoint folder."""
    path = Path(path)
    opt = mx.load(str(path / "optimizer.safetensors"))
    teacher = path / "teacher.safetensors"
    return {
        "adapters": mx.load(str(path / "adapters.safetensors")),
        "teacher": mx.load(str(teacher)) if teacher.exists() else {},
        "optimizer": tree_unflatten(list(opt.items())) if opt else {},
        "state": json.loads((path / "state.json").read_text()),
    }
