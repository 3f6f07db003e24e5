"""Atomic file and directory writes: a reader sees the old artifact or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ltx_ascend.errors import DiskFull, UserError, is_disk_full


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@contextlib.contextmanager
def disk_full_names_folder(folder: Path, scratch: Path, what: str) -> Iterator[None]:
    """A full disk while writing `scratch` (a temp file or folder in `folder`) becomes `DiskFull` naming
    `folder` and the bytes written when it filled (what the write needs at least); the caller's cleanup
    still runs. Raised before that cleanup, so the bytes are counted first."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        written = 0
        with contextlib.suppress(OSError):
            written = _tree_bytes(scratch)
        raise DiskFull(folder, written or None, what) from exc


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` in one rename.

    Works for files and directories. The temp path lives in the same folder so the final
    `os.replace` never crosses a filesystem. On any error the temp path is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    work = tmp / target.name
    try:
        with disk_full_names_folder(target.parent, tmp, f"writing {target.name}"):
            yield work
        if not work.exists():
            raise FileNotFoundError(f"nothing was written to {work}")
        if target.is_dir() and not target.is_symlink():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = tmp / ".old"
            os.replace(target, old)
        os.replace(work, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) on `path`, created if needed: two processes building the
    same artifact take turns, and the second finds the first one's result instead of racing it."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def replace_dir(built: Path, target: Path) -> None:
    """Swap a finished folder in for `target`: the old one stays until the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _probe_writable(folder: Path) -> str | None:
    """Why a file cannot be created in `folder` (None if it can): tried, since permission bits lie
    to root and to read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def check_writable_file(path: str | os.PathLike[str], flag: str) -> Path:
    """A file `path` can be written atomically: not a folder, its folder exists and takes new files.
    Checked before any model loads, so a bad output path never costs a run."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; pass a file path")
    if not parent.exists():
        raise UserError(f"{flag} {path}: folder {parent} does not exist; create it or pass another path")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder; pass another path")
    why = _probe_writable(parent)
    if why is not None:
        raise UserError(f"{flag} {path}: cannot write in {parent} ({why}); pass a writable location")
    return path


def check_writable_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """A folder `path` exists and takes new files, or can be created (its nearest existing ancestor
    is a writable folder)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder; pass a folder path")
    why = _probe_writable(existing)
    if why is not None:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({why}); pass a writable location")
    return path
