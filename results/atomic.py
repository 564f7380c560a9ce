"""Table writes and the tables lock.

Every table and figure goes through ``made_core.files.atomic_write`` (temporary file in the
destination's folder, fsync, rename, folder fsync): a reader sees the old file or the new
one, never half of either, and a full disk leaves the old file in place. The temporary name
is unique per writer, so concurrent writers never share a temp file.

Read-merge-write of the tables is serialised by ``exclusive_lock`` (``fcntl.flock`` on a
lock file in the tables folder): without it two writers could each read the old table,
merge their own rows and the second replace would silently drop the first one's rows.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from made_core.files import atomic_write


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
