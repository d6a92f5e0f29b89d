"""Output folders that are never half-written, never mixed and never clobbered.

- `write_dir_atomically`: write into a temporary sibling, fsync, rename into place; a
  reader sees the old folder or the complete new one.
- Every folder mlx-opd writes carries a marker file (`.mlx-opd.json`: what wrote it);
  `--force` replaces only marked folders, so it never deletes a user's own files.
- `move_aside`: a run folder that `train --force` replaces is renamed, never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

MARKER = ".mlx-opd.json"


class OutputExistsError(FileExistsError):
    """An output folder that holds something and may not be replaced as asked."""


def _fsync_tree(root: Path) -> None:
    # data first, then the folders' entries, so a power cut after the rename cannot
    # leave a complete-looking folder with empty files
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # some filesystems cannot open a directory; nothing to sync then
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomically(path: Path, obj: dict) -> None:
    """One JSON file, written to a temporary sibling, fsynced and renamed into place: a
    reader sees the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_marker(folder: Path, kind: str) -> None:
    from . import __version__

    (Path(folder) / MARKER).write_text(json.dumps({"written_by": f"mlx-opd {__version__}",
                                                   "kind": kind}))


def written_by_us(folder: Path) -> bool:
    return (Path(folder) / MARKER).exists()


def write_dir_atomically(dest: Path, write, kind: str | None = None) -> Path:
    """Call write(tmp_dir), mark it (`kind`), fsync, then rename tmp_dir to dest
    (replacing it): a reader sees the old folder or the complete new one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        write(tmp)
        if kind is not None:
            write_marker(tmp, kind)
        _fsync_tree(tmp)
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def check_replaceable(out: Path, force: bool, flag: str = "--out") -> None:
    """Raise unless `out` is absent, empty, or (with force) a folder mlx-opd wrote."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out} is a file; {flag} must be a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not force:
        raise OutputExistsError(f"{out} exists and is not empty; pass --force to replace it "
                                f"(only a folder mlx-opd wrote is replaced) or choose another {flag}")
    if not written_by_us(out):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise OutputExistsError(
            f"{out} holds files mlx-opd did not write ({shown}); --force replaces only "
            f"folders mlx-opd wrote. Choose a new {flag}, or move those files yourself")


def move_aside(path: Path) -> Path:
    """Rename `path` to `<name>.old-<timestamp>` beside it (never deletes); returns it."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.old-{stamp}")
    i = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.old-{stamp}-{i}")
        i += 1
    os.replace(path, dest)
    return dest
