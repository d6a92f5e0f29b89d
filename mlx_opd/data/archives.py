"""The image tarballs a dataset ships before its images can be read.

Vision-OPD-6K keeps its images in archives beside train.jsonl: `images/images.tar.gz*`
(split into parts that are concatenated) and `teacher_images/teacher_images.tar.gz`
(the dataset's file list as VisionOPD/Vision-OPD scripts/prepare_data.py download_dataset
reads it, @c2e345f lines 42-56; later revisions add `original_images/*.tar.gz`). Their
script extracts each archive inside its own folder, which is where train.jsonl's relative
paths point. `extract` does the same with Python's tarfile in stream mode, which reads
gzip or plain tar alike (GNU tar needs -z on a pipe, macOS's bsdtar does not).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Callable

from mlx_opd.run.errors import DataError

ARCHIVE_GLOB = "*.tar.gz*"
IMAGE_FOLDERS = ("images", "teacher_images", "original_images")


def archive_groups(root: Path) -> dict[Path, list[Path]]:
    """folder -> its archive parts in order, for the dataset folders under `root`."""
    groups: dict[Path, list[Path]] = {}
    for name in IMAGE_FOLDERS:
        folder = root / name
        if folder.is_dir():
            parts = sorted(p for p in folder.glob(ARCHIVE_GLOB) if p.is_file())
            if parts:
                groups[folder] = parts
    return groups


def extract_hint(root: Path) -> str:
    """What to run: our command first, the shell equivalent after."""
    shell = " && ".join(
        f"(cd '{folder}' && cat {' '.join(p.name for p in parts)} | tar -xzf -)"
        for folder, parts in archive_groups(root).items())
    return f"mlx-opd extract-data '{root}'   (or by hand: {shell})"


class _Chained(io.RawIOBase):
    """The concatenation of several files, read once from the first to the last."""

    def __init__(self, parts: list[Path], on_bytes: Callable[[int], None]):
        self._parts, self._on_bytes, self._f = list(parts), on_bytes, None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            if self._f is None:
                if not self._parts:
                    return 0
                self._f = open(self._parts.pop(0), "rb")
            n = self._f.readinto(b)
            if n:
                self._on_bytes(n)
                return n
            self._f.close()
            self._f = None


def extract(root: Path, on_progress: Callable[[int, int], None] | None = None,
            remove: bool = False, kept: list | None = None) -> int:
    """Extract every archive group under `root` into its own folder; returns the number
    of files written. `on_progress(done_bytes, total_bytes)` is called as it reads.
    Member paths that would leave the folder are refused (tarfile's data filter). A file
    already there is never overwritten: it is left as it is and listed in `kept` (an
    earlier extraction's, or the user's own)."""
    groups = archive_groups(root)
    if not groups:
        raise DataError("no image archives to extract", str(root),
                        f"expected {', '.join(f'{n}/{ARCHIVE_GLOB}' for n in IMAGE_FOLDERS)}")
    total = sum(p.stat().st_size for parts in groups.values() for p in parts)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if on_progress:
            on_progress(done[0], total)

    files = 0
    for folder, parts in groups.items():
        stream = io.BufferedReader(_Chained(parts, tick), buffer_size=1 << 20)
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    if member.isfile() and (folder / member.name).exists():
                        if kept is not None:
                            kept.append(folder / member.name)
                        continue
                    tar.extract(member, folder, filter="data")
                    files += member.isfile()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot extract {parts[0].name} ({e})", str(folder),
                            "check that every part was downloaded completely") from None
        if remove:
            for p in parts:
                p.unlink()
    return files
