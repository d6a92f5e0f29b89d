"""Rows from data files: JSONL line by line (a bad line reported with its number) and
Parquet in batches, the format told by content, a dataset folder resolved to its row file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from mlx_opd.run.errors import DataError


def jsonl_rows(path: Path, on_error=None) -> Iterator[tuple[str, dict]]:
    """(where, row) for each JSON object line of `path`. A line that is not one raises a
    DataError naming it, or with `on_error` is handed to it and passed over."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(raw.decode("utf-8"))
                if not isinstance(row, dict):
                    raise DataError("line is not a JSON object", where,
                                    "each line must be one JSON object")
            except UnicodeDecodeError as e:
                err = DataError(f"not UTF-8 text (byte {e.start})", where,
                                "save the file as UTF-8, one JSON object per line")
            except json.JSONDecodeError as e:
                err = DataError(f"invalid JSON ({e.msg} at column {e.colno})", where,
                                "each line must be one JSON object")
            except DataError as e:
                err = e
            else:
                yield where, row
                continue
            if on_error is None:
                raise err
            on_error(err)


PARQUET_MAGIC = b"PAR1"


PUBLISHED_FILE = "train.jsonl"  # Vision-OPD-6K's one row file


def _table_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Rows of a parquet file, a folder of parquet files, or a datasets folder."""
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[next(iter(ds))]
        for i, row in enumerate(ds):
            yield f"{path} row {i}", row
        return
    files = sorted(path.glob("**/*.parquet")) if path.is_dir() else [path]
    if not files:
        raise DataError("no .parquet files found", str(path),
                        "point --data at a .jsonl file, a .parquet file or a folder of them")
    yield from parquet_rows(files)


def parquet_rows(files: list[Path], batch_size: int = 256) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of `files`, `batch_size` rows in memory at a time (a 4 GB
    file is never loaded whole); a file that is not parquet is a DataError naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in files:
        try:
            pf = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"cannot read it as parquet ({str(e).splitlines()[0][:120]})",
                            str(file), "check that the file is complete parquet, or give "
                            "JSONL (one object per line)") from None
        i = 0
        for batch in pf.iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                yield f"{file} row {i}", row
                i += 1


def _sniff(path: Path) -> str:
    """'parquet' or 'jsonl' from a file's first bytes, whatever its name."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == PARQUET_MAGIC:
        return "parquet"
    if head.lstrip()[:1] in (b"{", b"") or path.suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    raise DataError(f"cannot tell the data format of {path.name} (neither JSON lines nor "
                    f"parquet: it starts with {head!r})", str(path),
                    "give a .jsonl file (one JSON object per line), a .parquet file or a folder")


def resolve_data_path(path: Path) -> Path:
    """A Vision-OPD-6K folder (its train.jsonl beside images/ and teacher_images/) reads as
    its train.jsonl; other folders as parquet / datasets folders; files as they are."""
    if path.is_dir() and (path / PUBLISHED_FILE).is_file() \
            and not (path / "dataset_info.json").exists():
        return path / PUBLISHED_FILE
    return path


def detect_format(path: Path) -> str:
    """'jsonl' or 'parquet' by content (parquet magic bytes), folders are parquet."""
    return "parquet" if path.is_dir() else _sniff(path)
