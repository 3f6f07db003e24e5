"""Atomic file and directory writes: a reader sees the old artifact or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
