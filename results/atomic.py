"""Atomic file writes and the tables lock.

Every table and figure is written to a temporary file in the destination's own folder and
then moved over the destination with ``os.replace``, which is atomic on POSIX for a rename
within one file system: a reader sees the old file or the new one, never half of either.
The temporary name is unique per writer, so concurrent writers never share a temp file.

Read-merge-write of the tables is serialised by ``exclusive_lock`` (``fcntl.flock`` on a
lock file in the tables folder): without it two writers could each read the old table,
merge their own rows and the second replace would silently drop the first one's rows.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)`` and move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        write(temp_path)
        # mkstemp creates the file 0600; published tables should be readable like any file.
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` as CSV (no index) to ``path`` atomically."""
    return atomic_write(path, lambda temp: frame.to_csv(temp, index=False))


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block.

    The lock is advisory and released when the file is closed, also if the process dies,
    so a crashed aggregation never leaves the tables locked.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
