"""Finding a model and checking an adapter before loading: a local folder or the Hugging
Face cache (offline first, then the hub), the base's identity (recorded for resume), and
an adapter's config matched against its base (family, widths) with one clear line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


class ModelNotFoundError(FileNotFoundError):
    """A --model that is neither a local model folder nor a reachable hub id."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of a hub model in the local cache (at a commit, or where
    refs/main points), or None. Offline, some huggingface_hub releases (1.33) refuse a
    pinned commit without looking at the cache; a commit's snapshot cannot change."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    rev = revision
    if rev is None or not re.fullmatch(r"[0-9a-f]{40}", rev):
        ref = root / "refs" / (rev or "main")
        rev = ref.read_text().strip() if ref.is_file() else None
    snap = root / "snapshots" / rev if rev else None
    return snap if snap is not None and snap.is_dir() else None


def resolve_path(model: str | Path, allow_patterns: list[str] | None = None,
                 need: str = "config.json", revision: str | None = None) -> Path:
    """A local folder as is; a hub id (ORG/NAME) from the local cache or downloaded
    (`allow_patterns`: only those files), at `revision` when it is a hub revision (a
    local folder's fingerprint, "local:...", pins nothing). Errors name the model and say
    how to fix it, whatever the hub client raised."""
    if str(revision or "").startswith("local:"):
        revision = None
    p = Path(model).expanduser()
    if p.exists():
        if need and not (p / need).exists():
            raise ModelNotFoundError(f"{p}: no {need}; point --model at a Hugging Face "
                                     "model folder or a hub id such as "
                                     "mlx-community/Qwen2.5-VL-3B-Instruct-4bit")
        return p
    text = str(model)
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{text}: no such local folder (and not a hub id of the form "
                                 "ORG/NAME); check the path")
    from mlx_vlm.utils import get_model_path

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    cached = _cached_snapshot(text, revision) if offline else None
    if cached is not None and (not need or (cached / need).exists()):
        return cached
    try:
        return Path(get_model_path(text, revision=revision, allow_patterns=allow_patterns))
    except Exception as e:  # the hub client raises many types; all mean "not here"
        why = ("it is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids a "
               "download" if offline else "the hub could not provide it")
        what = f"model {text!r}" + (f" at revision {revision}" if revision else "")
        raise ModelNotFoundError(
            f"{what}: {why} ({type(e).__name__}). Fix: download it once with network "
            f"(`huggingface-cli download {text}`{', or set HF_HUB_OFFLINE=0' if offline else ''}"
            "), check the id's spelling, or pass a local model folder") from None


def base_identity(path: Path) -> str:
    """What a run's base is: the commit of a hub snapshot (.../snapshots/COMMIT), else a
    fingerprint of the folder's config and weight files (names and sizes)."""
    import hashlib

    path = Path(path).resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.name
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return "local:" + h.hexdigest()[:16]


class AdapterMismatchError(ValueError):
    """An adapter that does not belong on the base it is loaded onto."""


def check_adapter_config(base_path: Path, adapter_path: Path) -> dict:
    """The adapter's config, after the checks that need no weights: it is an adapter
    folder, and it was trained on the base's family (mlx-opd records it)."""
    adapter_path = Path(adapter_path)
    if not (adapter_path / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_path}: no adapter_config.json; pass the folder "
                                "that `mlx-opd train` wrote under RUN_DIR/adapters")
    try:
        cfg = json.loads((adapter_path / "adapter_config.json").read_text())
    except ValueError as e:
        raise AdapterMismatchError(f"{adapter_path}/adapter_config.json: not readable JSON "
                                   f"({e}); pass an adapter folder mlx-opd wrote") from None
    base_type = json.loads((Path(base_path) / "config.json").read_text()).get("model_type")
    trained_on = (cfg.get("mlx_opd") or {}).get("base_model_type")
    if trained_on and trained_on != base_type:
        raise AdapterMismatchError(
            f"the adapter {adapter_path} was trained on a {trained_on} model, but {base_path} "
            f"is {base_type}; pass --model the base it was trained on (its RUN_DIR/config.yaml "
            "says which: model.path)")
    return cfg
