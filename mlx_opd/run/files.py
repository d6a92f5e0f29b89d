"""Output folders that are never half-written, never mixed and never clobbered.

The one rule (every command that writes a folder goes through it):
- Every folder mlx-opd writes carries a marker file (`.mlx-opd.json`: what wrote it). When
  the folder is complete the marker also lists its files with their sizes and times: the
  folder is *sealed*.
- A folder without a marker is the user's: no command writes into it unless it is empty,
  and `--force` does not change that.
- A marked folder is replaced (`--force`, or a command's own earlier output) only when
  everything in it is what mlx-opd sealed there; one that holds anything else (a file the
  user added or edited, or a run stopped before it was sealed) is moved aside
  (`NAME.old-TIME`, said in the output), never deleted.
- `write_dir_atomically`: write into a temporary sibling, seal, fsync, rename into place;
  a reader sees the old folder or the complete new one, and the old one goes by the rule.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

MARKER = ".mlx-opd.json"


class OutputExistsError(FileExistsError):
    """An output folder that holds something and may not be replaced as asked."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def _walk(folder: Path):
    """(files, marked) in `folder`: the files as (relative path, stat), and the sub-folders
    that carry a marker of their own (they answer for their files; not descended into)."""
    files, marked = [], []
    for dirpath, dirs, names in os.walk(folder):
        here = Path(dirpath)
        marked += [here / d for d in dirs if (here / d / MARKER).exists()]
        dirs[:] = sorted(d for d in dirs if not (here / d / MARKER).exists())
        files += [((here / n).relative_to(folder).as_posix(), (here / n).lstat())
                  for n in sorted(names) if not (here == folder and n == MARKER)]
    return files, marked


def write_marker(folder: Path, kind: str) -> None:
    """Mark `folder` as mlx-opd's (not yet sealed: it is still being written)."""
    from mlx_opd import __version__

    (Path(folder) / MARKER).write_text(json.dumps({"written_by": f"mlx-opd {__version__}",
                                                   "kind": kind}))


def seal(folder: Path, kind: str, only: tuple[str, ...] | None = None) -> None:
    """Mark `folder` complete: the marker lists its files now (size, mtime), so a later
    replacement can tell mlx-opd's files from anything added or changed since. `only`:
    the names (glob patterns) this command wrote, for a folder that was written in place
    (a run), so nothing a user put there meanwhile is taken for mlx-opd's; a folder
    written whole into a fresh temporary folder seals everything."""
    from fnmatch import fnmatch

    from mlx_opd import __version__

    found, marked = _walk(Path(folder))
    files = {rel: _stamp(st) for rel, st in found
             if only is None or any(fnmatch(rel, pat) for pat in only)}
    folders = sorted(m.relative_to(folder).as_posix() for m in marked)
    (Path(folder) / MARKER).write_text(json.dumps(
        {"written_by": f"mlx-opd {__version__}", "kind": kind, "files": files,
         "folders": folders}))


def written_by_us(folder: Path) -> bool:
    return (Path(folder) / MARKER).exists()


def marker_kind(folder: Path) -> str | None:
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _stamp(st) -> list[int]:
    return [st.st_size, st.st_mtime_ns]


def _sealed(folder: Path) -> dict | None:
    """The marker of `folder` when it is sealed (lists its files), else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError, AttributeError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) \
        else None


def foreign(folder: Path) -> list[str]:
    """What in the marked `folder` mlx-opd did not seal there: files added or changed
    since, marked sub-folders it did not hold when sealed (or that hold anything
    foreign), and `folder/` itself when it was never sealed (empty: all of it is ours)."""
    folder = Path(folder)
    marker = _sealed(folder)
    if marker is None:
        return [f"{folder.name}/ (not sealed: written in part, or by hand)"]
    sealed, listed = marker["files"], set(marker.get("folders") or ())
    files, marked = _walk(folder)
    out = [rel for rel, st in files if sealed.get(rel) != _stamp(st)]
    for sub in marked:  # nested marked folders answer for their own files
        rel = sub.relative_to(folder).as_posix()
        out += [f"{rel}/ (not there when sealed)"] if rel not in listed else \
            [f"{rel}/{r}" for r in foreign(sub)]
    return out


def ours(folder: Path, kinds: tuple[str, ...] | None = None, carried: tuple = ()) -> bool:
    """Whether `folder` may be deleted: it is mlx-opd's sealed output of one of `kinds`
    (any kind when None) with nothing foreign in it; or it only holds `carried`
    sub-folders (copied into its replacement) that are themselves intact."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if written_by_us(folder):
        return (kinds is None or marker_kind(folder) in kinds) and not foreign(folder)
    entries = list(folder.iterdir())
    return bool(entries) and all(p.name in carried and p.is_dir() and written_by_us(p)
                                 and not foreign(p) for p in entries)


def _aside_name(path: Path, keep_suffix: bool = False) -> Path:
    """A free `<name>.old-<timestamp>` beside `path` (`<stem>.old-<timestamp><suffix>` with
    `keep_suffix`, so a file keeps opening as what it is)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    head, tail = (path.stem, path.suffix) if keep_suffix else (path.name, "")
    dest, i = path.with_name(f"{head}.old-{stamp}{tail}"), 1
    while dest.exists():
        dest, i = path.with_name(f"{head}.old-{stamp}-{i}{tail}"), i + 1
    return dest


def move_aside(path: Path) -> Path:
    """Rename `path` to `<name>.old-<timestamp>` beside it (never deletes); returns it."""
    dest = _aside_name(path)
    os.replace(path, dest)
    return dest


def keep_old_files(paths, log=_stderr) -> list[Path]:
    """Output files about to be written: any that exist are renamed NAME.old-TIME.EXT
    beside them (said through `log`), never overwritten; returns the new places."""
    moved = []
    for p in map(Path, paths):
        if p.exists():
            moved.append(_aside_name(p, keep_suffix=True))
            os.replace(p, moved[-1])
    if moved:
        log(f"kept the earlier output: {', '.join(str(m) for m in moved)} (renamed, not "
            "overwritten)")
    return moved


def keep_edited(folder: Path, names, log=_stderr) -> list[Path]:
    """Before a command rewrites its own files `names` in `folder`: any that is not as
    mlx-opd sealed it there (edited since, or never sealed) is kept (keep_old_files)."""
    folder, sealed = Path(folder), _sealed(Path(folder)) or {}
    return keep_old_files([folder / n for n in names if (folder / n).exists() and sealed.get(n)
                           != _stamp((folder / n).lstat())], log)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def remove_own(path: Path, log=_stderr, kinds: tuple[str, ...] | None = None) -> Path | None:
    """Delete a folder mlx-opd sealed (of one of `kinds`) and nobody touched since;
    anything else that is there is moved aside (said through `log`) and the new place
    returned."""
    path = Path(path)
    if not path.exists():
        return None
    if ours(path, kinds):
        shutil.rmtree(path)
        return None
    return _set_aside(path, path, kinds, log)


def _set_aside(src: Path, name: Path, kinds, log) -> Path:
    """Rename `src` to a free `name.old-TIME` and say why it was not deleted."""
    dest = _aside_name(name)
    os.replace(src, dest)
    log(f"moved {name} aside to {dest}: {_why(dest, kinds)}; nothing was deleted")
    return dest


def _why(path: Path, kinds) -> str:
    if not (path.is_dir() and written_by_us(path)):
        return "mlx-opd did not write it"
    if kinds is not None and marker_kind(path) not in kinds:
        return f"it holds another command's output ({marker_kind(path)})"
    return f"it holds what mlx-opd did not write ({_shown(foreign(path))})"


def check_replaceable(out: Path, force: bool, flag: str = "--out") -> None:
    """Raise unless `out` may be written: absent, empty, or (with force) marked by mlx-opd.
    A user's folder (no marker) is never written into, with or without force."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out} is a file; {flag} must be a folder")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not written_by_us(out):
        raise OutputExistsError(
            f"{out} holds files mlx-opd did not write ({_shown(entries)}); mlx-opd writes "
            f"only into a new or empty folder or one it wrote, --force included. Choose "
            f"another {flag}")
    if not force:
        raise OutputExistsError(
            f"{out} holds an earlier mlx-opd output ({marker_kind(out) or 'unknown kind'}); "
            f"pass --force to replace it (anything you added there is moved aside with it, "
            f"never deleted) or choose another {flag}")


def claim_output(out: Path, force: bool, flag: str = "--out", aside: bool = False,
                 log=_stderr, kinds: tuple[str, ...] | None = None) -> Path | None:
    """The one check before a command writes the folder `out` (see the module's rule):
    refuses a user's folder, and a marked one without `force`; with `force` the old folder
    is removed when it is wholly mlx-opd's sealed output (always moved aside when `aside`:
    a training run) and moved aside otherwise. Returns where it was moved, if it was."""
    check_replaceable(out, force, flag)
    out = Path(out)
    if not (out.is_dir() and any(out.iterdir())):
        return None
    if aside:
        moved = move_aside(out)
        log(f"--force: moved the existing {out} aside to {moved} (never deleted)")
        return moved
    return remove_own(out, log, kinds)


def write_dir_atomically(dest: Path, write, kind: str | None = None, log=_stderr,
                         carried: tuple = ()) -> Path:
    """Call write(tmp_dir), seal it (`kind`), fsync, then rename tmp_dir to dest: a reader
    sees the old folder or the complete new one. The old folder is deleted only when it
    is wholly mlx-opd's sealed output of the same kind (or holds only the `carried`
    sub-folders the new one copied); otherwise it is moved aside, said through `log`.
    It is judged after it was renamed away, so nothing written into it meanwhile is lost."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    old = None
    try:
        write(tmp)
        if kind is not None:
            seal(tmp, kind)
        _fsync_tree(tmp)
        if dest.exists() or dest.is_symlink():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:  # put the old folder back where it was
                os.replace(old, dest)
                old = None
            raise
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kinds = None if kind is None else (kind,)
    if old is not None and ours(old, kinds, carried):
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        _set_aside(old, dest, kinds, log)
    return dest
