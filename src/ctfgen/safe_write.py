"""Crash-safe writes: a file or a whole folder appears under its real name complete, or not at all.

A folder is filled under a temporary sibling, its files are fsynced, and it is swapped in by renames
(`artifact_dir`); whatever instant a kill or power loss hits, the next write or resume finds the
newest complete copy and removes the rest (`recover_interrupted_write`). A full disk is one error
naming the folder and its free space. artifacts.py builds the artifact folders on these.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError

MANIFEST = "manifest.json"  # written last: a folder holding one was written to the end


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


LEFTOVER = r"(?:[a-z0-9_]{8}\.tmp|old-\d+)"  # what artifact_dir leaves beside `out` when killed


def interrupted_writes(out: str | os.PathLike) -> list[Path]:
    """Temporary folders an interrupted `artifact_dir` left beside `out` (new copies being written,
    `.out.XXXXXXXX.tmp`, and old copies being replaced, `.out.old-PID`)."""
    out = Path(out)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.{LEFTOVER}")
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir())


def _complete(folder: Path) -> bool:
    # the manifest is written last, atomically: a folder holding one was written to the end
    try:
        json.loads((folder / MANIFEST).read_text())
        return True
    except (OSError, ValueError):
        return False


def recover_interrupted_write(out: str | os.PathLike) -> str | None:
    """Finish or undo what a killed `artifact_dir` left, so `out` is the newest complete copy.

    A write is: fill `.out.X.tmp` (manifest last) -> rename `out` to `.out.old-PID` -> rename the
    new folder to `out` -> delete the old one. Whatever instant it stopped at, the newest complete
    folder (a finished new copy, else `out`, else the old copy) becomes `out` and the rest is
    deleted. Returns a note saying what was done, or None when nothing was left over. Assumes one
    writer per folder at a time.
    """
    out = Path(out)
    left = interrupted_writes(out)
    if not left:
        return None
    complete = [p for p in left if _complete(p)]
    new = [p for p in complete if p.name.endswith(".tmp")]
    old = [p for p in complete if not p.name.endswith(".tmp")]
    out_complete = out.is_dir() and _complete(out)

    def age(p: Path) -> float:
        return (p / MANIFEST).stat().st_mtime

    chosen = None
    if new and (not out_complete or max(map(age, new)) >= age(out)):
        chosen = max(new, key=age)  # finished before the kill, not yet swapped in
    elif not out.exists() and old:
        chosen = max(old, key=age)  # killed between the two renames with no finished new copy
    note = None
    if chosen is not None:
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, trash)
            left.append(trash)
        os.replace(chosen, out)
        left.remove(chosen)
        note = f"{out}: completed an interrupted write (used {chosen.name})"
    for p in left:
        shutil.rmtree(p, ignore_errors=True)
    removed = [p.name for p in left]
    if removed:
        note = (note + "; " if note else f"{out}: ") + f"removed the leftovers of an interrupted write {removed}"
    return note


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, however the writer reports it (safetensors and numpy wrap the OS error)."""
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(s in text for s in ("No space left", "os error 28", "Disk quota", "os error 122")) or bool(
        isinstance(e, OSError) and re.search(r"\d+ requested and \d+ written", text))


def disk_full_error(where: str | os.PathLike, *, kept: bool = False) -> ArtifactError:
    where = Path(where)
    folder = where if where.is_dir() else where.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return ArtifactError(f"disk full while writing {where} (the disk holding {folder.resolve()}: {free}); free "
                         "space or choose a folder on another disk" + (f"; the previous {where} is unchanged" if kept else ""))


def _fsync_tree(folder: Path) -> None:
    # the data reaches the disk before the rename makes it the real folder (power loss, not only kill)
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def artifact_dir(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces `out_dir` in one rename.

    The caller must write the manifest (with `write_manifest`) inside the block, last. Leftovers of
    an earlier interrupted write are recovered first (`recover_interrupted_write`); a full disk is an
    ArtifactError naming the folder.
    """
    out = Path(out_dir)
    note = recover_interrupted_write(out)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists; choose another folder or pass --overwrite")
    existed = out.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(out, kept=existed) from None
        raise
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            raise RuntimeError(f"internal error: artifact {out} written without {MANIFEST}")
        _fsync_tree(tmp)
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except Exception as e:
        if is_disk_full(e):
            raise disk_full_error(out, kept=existed) from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
