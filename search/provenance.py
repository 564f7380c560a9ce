"""Where and with what a sweep ran: package versions, the project's commit, the host's CPU and GPUs.

Written into every experiment.json (key ``provenance``, layout in ``results.schema``) so a
table row can be traced to the code and machine that produced it.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from made_core.machine import cpu_model
from results.schema import Provenance

PROJECT = "made-search"
PACKAGES = ("torch", "ray", "optuna", "numpy")
# The checkout holding this package (an editable install or a run from the source tree).
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def git_state(root: Path = SOURCE_ROOT) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` when ``root`` is a git checkout, else None.

    Dirty means tracked files differ from the commit; untracked files do not count.
    """
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def gpu_models() -> list[str]:
    """The CUDA devices torch sees (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def provenance() -> Provenance:
    """Where and with what this process runs (experiment.json's ``provenance``)."""
    git = git_state()
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "packages": {name: _version(name) for name in (PROJECT, *PACKAGES)},
        "git_commit": git["commit"] if git else None,
        "git_dirty": git["dirty"] if git else None,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "gpus": gpu_models(),
    }
