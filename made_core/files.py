"""Durable atomic file writes: the one writer behind every file of ours that must survive a crash whole.

``atomic_write`` writes to a uniquely named temporary file in the destination's folder,
flushes it to disk (``fsync``), renames it over the destination (atomic on POSIX within one
file system) and then syncs the folder, so the rename itself survives a power loss or a
node crash. A reader sees the old file or the new one, never half of either, and never an
empty file under the final name. On any failure, a full disk included, the old file is
left as it was and the temporary file is removed.

Imports nothing heavy: the tables, checkpoints, models and downloads all write through it.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/made-search``, else ``~/.cache/made-search``: the one rule for where
    the project caches datasets and staged experiments. The XDG spec says a relative
    ``XDG_CACHE_HOME`` is invalid and must be ignored."""
    xdg_cache = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg_cache) if xdg_cache and os.path.isabs(xdg_cache) else Path.home() / ".cache"
    return root / "made-search"


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk (a read-only descriptor is enough for fsync on POSIX)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(path: Path) -> None:
    """Make the renames inside ``path`` durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: str | Path, write: Callable[[Path], object], mode: int = 0o644) -> Path:
    """Call ``write(temp_path)``, then move the result onto ``path`` durably and atomically.

    ``write`` may raise (its error propagates after the temporary file is removed), and so
    may the disk (``OSError``, e.g. ``ENOSPC``): in both cases ``path`` keeps its old bytes.
    """
    return atomic_write_all({Path(path): write}, mode)[0]


def atomic_write_all(writes: Mapping[Path, Callable[[Path], object]], mode: int = 0o644) -> list[Path]:
    """``atomic_write`` for several files that belong together (a set of tables).

    Every file is written and synced to its temporary name first; only when all of them
    are complete are they renamed into place. A failure on any (a full disk) leaves every
    destination with its old bytes.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for destination, write in writes.items():
            destination = Path(destination)
            destination.parent.mkdir(parents=True, exist_ok=True)
            handle, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
            os.close(handle)
            staged.append((Path(temp_name), destination))
            write(Path(temp_name))
            # mkstemp creates the file 0600; tables and models should be readable like any file.
            os.chmod(temp_name, mode)
            fsync_file(Path(temp_name))
        for temp_path, destination in staged:
            os.replace(temp_path, destination)
    except BaseException:
        for temp_path, _ in staged:
            temp_path.unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(destination.parent for _, destination in staged):
        fsync_directory(folder)
    return [destination for _, destination in staged]


class CheckpointError(ValueError):
    """A checkpoint or model file that cannot be read safely: corrupt, truncated, not ours, or
    needing arbitrary unpickling. The message is one line and names the file."""


def load_torch_file(path: str | Path, map_location: Any = "cpu", required_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: tensors, plain containers and numbers only.

    A pickle that would run code is refused rather than executed (a checkpoint from shared
    storage is not trusted input). Raises ``FileNotFoundError`` when ``path`` is missing and
    ``CheckpointError`` when it cannot be read or lacks one of ``required_keys``.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a paragraph; its "WeightsUnpickler error: ..." line names what was refused.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "WeightsUnpickler" in line), lines[0] if lines else type(error).__name__)
        reason = reason.split(". ")[0][:200]  # its first sentence
        raise CheckpointError(f"refusing {path}: it holds objects that only arbitrary unpickling could load ({reason})") from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        detail = " ".join(str(error).split())[:160] or type(error).__name__
        raise CheckpointError(f"cannot read {path}: corrupt or truncated ({type(error).__name__}: {detail})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read {path}: it holds a {type(state).__name__}, not a checkpoint")
    missing = [key for key in required_keys if key not in state]
    if missing:
        raise CheckpointError(f"cannot read {path}: not a checkpoint of this kind (missing {', '.join(missing)})")
    return state
