"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from driver_processes import ROOT
from netns_cluster import netns_cluster_factory  # noqa: F401  (a fixture of the multi-host tests)


@pytest.fixture
def ray_env():
    """Environment for a driver subprocess: its own short RAY_TMPDIR, no token auth."""
    temp = tempfile.mkdtemp(prefix="msr", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ, RAY_TMPDIR=temp, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    yield env
    shutil.rmtree(temp, ignore_errors=True)
