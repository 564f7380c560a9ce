"""Fetching a dataset file: a streamed, checked, atomic download with a progress bar."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPException
from pathlib import Path
from typing import IO, Any

from made_core.files import atomic_write
from made_core.registry import DatasetError

DOWNLOAD_TIMEOUT_S = 60.0


def download_file(url: str, destination: Path, progress: bool = True, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``destination`` atomically.

    The bytes go to a hidden temporary file in the destination folder, which is renamed
    onto ``destination`` only once the download is complete (and its size matches the
    server's Content-Length) and looks like an npz (zip) archive; on any failure the
    temporary file is removed, so a partial download never leaves anything behind.

    Raises:
        DatasetError: network failure (offline, timeout, HTTP error), an incomplete or
            non-zip download, or an unwritable destination folder.
    """
    destination = Path(destination)

    def write(temp_path: Path) -> None:
        with open(temp_path, "wb") as sink:
            _copy_url_to(url, sink, destination.name, progress, timeout)
        if not zipfile.is_zipfile(temp_path):
            raise DatasetError(f"{url} did not return an npz (zip) file ({temp_path.stat().st_size} bytes received)")

    try:
        atomic_write(destination, write)
    except OSError as error:  # network errors were already turned into DatasetError
        raise DatasetError(f"cannot write {destination}: {error}") from error


def _copy_url_to(url: str, sink: IO[bytes], label: str, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``sink``, checking the byte count against Content-Length."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            expected = _content_length(response)
            bar = _ProgressBar(label, expected) if progress else None
            received = 0
            while chunk := response.read(1 << 20):
                sink.write(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(received)
            if bar is not None:
                bar.finish(received)
    except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException) as error:
        raise DatasetError(f"download of {url} failed ({_describe_network_error(error)})") from error
    if expected is not None and received != expected:
        raise DatasetError(f"download of {url} is incomplete ({received} of {expected} bytes)")


def _content_length(response: Any) -> int | None:
    """The Content-Length the server announced, or None when absent or malformed."""
    headers = getattr(response, "headers", None)
    header = headers.get("Content-Length") if headers is not None else None
    try:
        return int(header) if header is not None else None
    except ValueError:
        return None


def _describe_network_error(error: Exception) -> str:
    """A short reason for a failed download (URLError wraps the socket error in .reason)."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"{error.reason}"
    return f"{type(error).__name__}: {error}"


class _ProgressBar:
    """A one-line download progress bar on stderr, redrawn at most ~10 times a second."""

    _WIDTH = 30

    def __init__(self, label: str, total_bytes: int | None) -> None:
        self._label = label
        self._total = total_bytes
        self._last_draw = 0.0

    def update(self, received: int) -> None:
        """Redraw if enough time has passed since the last redraw."""
        now = time.monotonic()
        if now - self._last_draw >= 0.1:
            self._last_draw = now
            self._draw(received)

    def finish(self, received: int) -> None:
        """Draw the final state and end the line."""
        self._draw(received)
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self, received: int) -> None:
        megabytes = received / 1e6
        if self._total:
            fraction = min(received / self._total, 1.0)
            filled = int(fraction * self._WIDTH)
            bar = "#" * filled + "-" * (self._WIDTH - filled)
            line = f"\rdownloading {self._label} [{bar}] {fraction:6.1%} {megabytes:.1f}/{self._total / 1e6:.1f} MB"
        else:
            line = f"\rdownloading {self._label} {megabytes:.1f} MB"
        sys.stderr.write(line)
        sys.stderr.flush()
