"""Finding a benchmark's files (local folder or hub id) and streaming its rows.

Large benchmarks (HR-Bench 8K is 2.8 GB of parquet with base64 images) are read a few
rows at a time, so memory holds one batch, not the split.
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
import re
from pathlib import Path
from typing import Iterator

from mlx_opd.data import parquet_rows as data_parquet_rows
from mlx_opd.run.errors import DataError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def resolve(data: str, allow_patterns=None, layout: str = "") -> Path:
    """A local file or folder as is; a dataset hub id (ORG/NAME) from the local Hugging
    Face cache (downloaded when online). Errors say what to do, whatever the hub raised."""
    p = Path(data).expanduser()
    if p.exists():
        return p
    if not _HUB_ID.match(data) or data.startswith((".", "/", "~")):
        raise DataError("no such file or folder (and not a hub id of the form ORG/NAME)",
                        data, f"check --data; a local copy holds {layout}" if layout else
                        "check --data")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(data, repo_type="dataset",
                                      allow_patterns=list(allow_patterns) if allow_patterns
                                      else None))
    except Exception as e:  # the hub client raises many types; all mean "not here"
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        why = ("not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids a download"
               if offline else f"the hub could not provide it ({type(e).__name__})")
        raise DataError(f"dataset {data!r}: {why}", data,
                        f"download it once with network (`huggingface-cli download {data} "
                        "--repo-type dataset`), or pass a local folder with --data"
                        + (f" ({layout})" if layout else "")) from None


def resolve_parts(parts, into: Path) -> Path:
    """A benchmark published as several hub repos (VisualProbe's three levels): each one
    resolved as `resolve` does and linked as into/FOLDER, so one folder holds them all."""
    into.mkdir(parents=True, exist_ok=True)
    for folder, hub_id in parts:
        src = resolve(hub_id)
        link = into / folder
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src, target_is_directory=True)
    return into


def parquet_files(root: Path, pattern: str = "*.parquet") -> list[Path]:
    files = [root] if root.is_file() else sorted(root.glob(f"**/{pattern}"))
    if not files:
        raise DataError(f"no files matching {pattern}", str(root),
                        "point --data at the benchmark's folder as published on the hub")
    return files


def parquet_count(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def parquet_rows(files: list[Path], batch_size: int = 4) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row, `batch_size` rows in memory at a time (data.parquet_rows;
    benchmark rows carry whole images, so a few at a time)."""
    return data_parquet_rows(files, batch_size)


def csv_rows(path: Path) -> list[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [(f"{path}:{n}", row) for n, row in enumerate(csv.DictReader(f), 2)]


def base64_image(value, where: str) -> bytes:
    """Images stored as base64 text (HR-Bench, MME-RealWorld's lmms-eval parquet)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError, TypeError):
        raise DataError("image column is not base64 text", where,
                        "use the benchmark's published parquet") from None


def feature_image(value, where: str, base: Path) -> bytes | Path:
    """Images stored as a Hugging Face Image feature: {'bytes': ..., 'path': ...}."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            p = Path(value["path"])
            return p if p.is_absolute() else base / p
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise DataError("image column holds neither image bytes nor a path", where,
                    "use the benchmark's published parquet (an Image feature)")
