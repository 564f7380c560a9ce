"""Storage: where experiment folders live (a local path or a URI: s3://, gs://, ...) and how files get there.

The one module for URI detection (``is_uri``), listing (``list_folder``, ``list_experiments``),
durable writes of our text and CSV files (``atomic_write_text``, ``atomic_write_csv``, over
``made_core.files.atomic_write``), the tables lock, staging, upload and download. ``search``
writes experiment folders through it; ``results`` reads them through it.

Ray Tune writes its own files (trial results, checkpoints, experiment state) straight to
``--storage`` from every node, through ``pyarrow.fs``; ``ExperimentFolder`` is the driver's
side: where it writes ``experiment.json``, ``trials.csv``, ``curves.csv``, ``best.json``,
``best_model/`` and the default SQLite Optuna study (names: ``results.schema``).

- **Local path** (``runs``, ``/mnt/shared/x``, ``file:///x``): the driver writes into the
  experiment folder itself, atomically; ``publish`` does nothing.
- **URI**: the driver writes into a local *staging* folder,
  ``<staging root>/<storage slug>-<hash>/<name>/`` (staging root: ``--local-dir``, else
  ``$MADE_SEARCH_STAGING``, else ``made_core.files.user_cache_dir()/experiments``), and
  ``publish`` uploads the files named to ``<uri>/<name>/`` (a folder: every file in it). One
  object per file: S3 and GCS make an object visible only once it is fully written, so
  readers never see half a file. SQLite cannot live on an object store, so the default
  Optuna study stays in the staging folder and a consistent copy is uploaded as
  ``<uri>/<name>/study.db`` every few minutes while the sweep runs (``PeriodicUpload``) and
  once at its end. ``fetch_experiments`` copies a URI storage's result files back for
  aggregation.

URIs may carry pyarrow's query parameters, e.g. an S3-compatible server:
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``. Ray's own storage
layer hands the same string to ``pyarrow.fs.FileSystem.from_uri``, so Ray and the driver
see one location; ``join_uri`` inserts path parts before the query.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from made_core.files import atomic_write, user_cache_dir
from results import schema

if TYPE_CHECKING:
    import pandas as pd

STAGING_ENV = "MADE_SEARCH_STAGING"
STUDY_UPLOAD_SECONDS = 300
"""How often a sweep on URI storage uploads its SQLite Optuna study while it runs."""
_CHUNK = 1 << 20


class StorageError(ValueError):
    """A storage location that cannot be used, or a transfer that failed: one line, says why."""


_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def is_uri(storage: str | Path) -> bool:
    """True for a URI with a scheme other than ``file`` (``s3://``, ``gs://``, ``hdfs://``, ...);
    False for a filesystem path (``/x``, ``runs``, ``~/x``, ``C:\\x``) or a ``file://`` URI."""
    match = _URI_SCHEME.match(str(storage).strip())
    if match is None:
        return False
    scheme = match.group(1).lower()
    # A one-letter "scheme" is a Windows drive letter (C://x), not a URI.
    return scheme != "file" and len(scheme) > 1


def as_local_path(storage: str | Path) -> Path:
    """A local storage as a path: ``file://`` dropped, ``~`` expanded (not resolved)."""
    return Path(str(storage).removeprefix("file://")).expanduser()


def normalize_storage(storage: str) -> str:
    """A local path made absolute (``file://`` and ``~`` resolved), or the URI without a trailing slash."""
    if not is_uri(storage):
        return str(as_local_path(storage).resolve())
    parts = urlsplit(storage.strip())
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def join_uri(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended to its path, keeping its query: s3://b/p?x=1 + n -> s3://b/p/n?x=1."""
    split = urlsplit(uri)
    path = "/".join([split.path.rstrip("/"), *(part.strip("/") for part in parts)])
    return urlunsplit((split.scheme, split.netloc, path, split.query, ""))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def describe_error(error: BaseException) -> str:
    """A short reason for a pyarrow filesystem error, then pyarrow's own words on one line."""
    text = str(error)
    reasons = (
        ("NO_SUCH_BUCKET", "the bucket does not exist"),
        ("NoSuchBucket", "the bucket does not exist"),
        ("NETWORK_CONNECTION", "cannot connect to the storage endpoint"),
        ("Could not connect", "cannot connect to the storage endpoint"),
        ("Could not resolve host", "cannot resolve the storage endpoint's host name"),
        ("ACCESS_DENIED", "access denied (check the credentials and the bucket policy)"),
        ("AccessDenied", "access denied (check the credentials and the bucket policy)"),
        ("INVALID_ACCESS_KEY_ID", "the access key is not valid (check the credentials)"),
        ("InvalidAccessKeyId", "the access key is not valid (check the credentials)"),
        ("SIGNATURE_DOES_NOT_MATCH", "the secret key does not match (check the credentials)"),
        ("SignatureDoesNotMatch", "the secret key does not match (check the credentials)"),
        ("No response body", "the storage endpoint gave no answer"),
        ("credentials", "no usable credentials (e.g. set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"),
        ("Unrecognized filesystem type", "pyarrow has no filesystem for this URI scheme"),
        ("Unexpected query parameter", "a query parameter pyarrow does not know"),
    )
    for marker, reason in reasons:
        if marker in text:
            return f"{reason} ({_one_line(error)})"
    return _one_line(error)


def open_filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path on it)`` for a URI; StorageError if pyarrow cannot create it."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as error:  # ArrowInvalid, OSError, ... whatever the filesystem raises
        raise StorageError(f"--storage {uri}: cannot open its filesystem: {describe_error(error)}") from None


def check_writable(storage: str) -> None:
    """Create a local storage folder, or write and delete a probe object under a URI; StorageError if not."""
    if not is_uri(storage):
        path = as_local_path(storage)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe_file = path / f".made-search-write-test-{os.getpid()}"
            probe_file.write_text("")
            probe_file.unlink()
        except OSError as error:
            raise StorageError(f"--storage {storage} is not a writable folder: {error.strerror or error}") from None
        return
    fs, root = open_filesystem(storage)
    probe = f"{root.rstrip('/')}/.made-search-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(probe, compression=None) as stream:
            stream.write(b"made-search write test\n")
        fs.delete_file(probe)
    except Exception as error:
        raise StorageError(f"--storage {storage} is not writable: {describe_error(error)}") from None


def default_staging_root() -> Path:
    """$MADE_SEARCH_STAGING, else the user's cache folder's made-search/experiments."""
    if os.environ.get(STAGING_ENV):
        return Path(os.environ[STAGING_ENV]).expanduser()
    return user_cache_dir() / "experiments"


def staging_storage(uri: str, root: Path | None = None) -> Path:
    """The local stand-in for a URI storage: one folder per URI, its experiments inside."""
    split = urlsplit(uri)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{split.scheme}-{split.netloc}{split.path}").strip("-")[:60]
    digest = hashlib.sha256(uri.encode()).hexdigest()[:8]
    return (root or default_staging_root()).expanduser().resolve() / f"{slug}-{digest}"


def _read_remote(fs: Any, path: str) -> bytes:
    with fs.open_input_stream(path, compression=None) as stream:
        return stream.read()


def _exists(fs: Any, path: str) -> bool:
    import pyarrow.fs

    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def _upload_file(fs: Any, local: Path, remote: str) -> None:
    with open(local, "rb") as source, fs.open_output_stream(remote, compression=None) as target:
        while chunk := source.read(_CHUNK):
            target.write(chunk)


def _download_file(fs: Any, remote: str, local: Path) -> None:
    def write(temp: Path) -> None:
        with fs.open_input_stream(remote, compression=None) as source, open(temp, "wb") as target:
            while chunk := source.read(_CHUNK):
                target.write(chunk)

    atomic_write(local, write)


class ExperimentFolder:
    """``<storage>/<name>/`` as the driver sees it.

    ``local_path``: where the driver writes (the folder itself for a local storage, the
    staging folder for a URI). ``location``: the folder as Ray takes it (a path or a URI),
    for ``Tuner.can_restore``/``Tuner.restore``/``ExperimentAnalysis``. ``local_storage``:
    ``local_path``'s parent, what ``results.aggregate`` scans after a sweep.
    """

    def __init__(self, storage: str, name: str, staging_root: Path | None = None) -> None:
        self.storage = normalize_storage(storage)
        self.name = name
        self.is_uri = is_uri(self.storage)
        if self.is_uri:
            self.local_storage = staging_storage(self.storage, staging_root)
            self.location = join_uri(self.storage, name)
        else:
            self.local_storage = Path(self.storage)
            self.location = str(self.local_storage / name)
        self.local_path = self.local_storage / name
        self._fs: Any = None
        self._root = ""

    def __repr__(self) -> str:
        return f"ExperimentFolder({self.location!r}, local_path={str(self.local_path)!r})"

    # -- the remote side (URI storage only) ----------------------------------------------
    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            fs, root = open_filesystem(self.storage)
            self._fs, self._root = fs, f"{root.rstrip('/')}/{self.name}"
        return self._fs, self._root

    def remote(self, *parts: str) -> str:
        """The URI of a file in the experiment folder (a local path for local storage)."""
        return join_uri(self.location, *parts) if self.is_uri else str(self.local_path.joinpath(*parts))

    def exists(self) -> bool:
        """Does the experiment folder exist (a local folder, or any object under the URI prefix)?"""
        if not self.is_uri:
            return self.local_path.exists()
        fs, root = self._filesystem()
        try:
            return _exists(fs, root)
        except Exception as error:
            raise StorageError(f"cannot look up {self.location}: {describe_error(error)}") from None

    def has_file(self, filename: str) -> bool:
        if not self.is_uri:
            return (self.local_path / filename).is_file()
        fs, root = self._filesystem()
        try:
            return _exists(fs, f"{root}/{filename}")
        except Exception as error:
            raise StorageError(f"cannot look up {self.remote(filename)}: {describe_error(error)}") from None

    def read_json(self, filename: str) -> dict[str, Any]:
        """A JSON file of the experiment: from the URI for URI storage (the published copy)."""
        if not self.is_uri:
            return json.loads((self.local_path / filename).read_text())
        fs, root = self._filesystem()
        try:
            return json.loads(_read_remote(fs, f"{root}/{filename}"))
        except (OSError, ValueError) as error:
            raise StorageError(f"cannot read {self.remote(filename)}: {describe_error(error)}") from None

    def publish(self, *names: str) -> None:
        """Upload these files or folders of ``local_path`` to the URI; nothing for local storage.

        Missing local files are skipped (e.g. no best_model/ when no trial qualified).
        """
        if not self.is_uri:
            return
        fs, root = self._filesystem()
        for name in names:
            source = self.local_path / name
            files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
            for file in files:
                if not file.is_file():
                    continue
                relative = file.relative_to(self.local_path).as_posix()
                try:
                    _upload_file(fs, file, f"{root}/{relative}")
                except Exception as error:
                    raise StorageError(
                        f"could not upload {file} to {self.remote(relative)}: {describe_error(error)} "
                        f"(the local copy stays in {self.local_path})"
                    ) from None

    def publish_sqlite(self, database: Path, filename: str) -> None:
        """Upload a consistent copy of a SQLite database (sqlite3's backup API) as ``filename``."""
        if not self.is_uri or not database.is_file():
            return
        fs, root = self._filesystem()
        with tempfile.TemporaryDirectory(prefix="made-search-") as temp:
            snapshot = Path(temp) / filename
            source = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
            target = sqlite3.connect(snapshot)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
            try:
                _upload_file(fs, snapshot, f"{root}/{filename}")
            except Exception as error:
                raise StorageError(f"could not upload {database} to {self.remote(filename)}: {describe_error(error)}") from None

    def download(self, filename: str, target: Path | None = None) -> bool:
        """Fetch a published file into ``target`` (default: the staging folder); False if absent."""
        if not self.is_uri:
            return (self.local_path / filename).exists()
        fs, root = self._filesystem()
        remote = f"{root}/{filename}"
        try:
            if not _exists(fs, remote):
                return False
            _download_file(fs, remote, target or self.local_path / filename)
        except Exception as error:
            raise StorageError(f"could not download {self.remote(filename)}: {describe_error(error)}") from None
        return True


class PeriodicUpload:
    """While the ``with`` block runs, upload a SQLite database every ``interval`` seconds.

    The driver's Optuna study lives in the staging folder for URI storage; without this a
    driver killed after hours of sweeping would leave the URI without any study. A failed
    upload is reported once on stderr and retried at the next tick: the sweep goes on.
    """

    def __init__(self, folder: ExperimentFolder, database: Path, filename: str, interval: float = STUDY_UPLOAD_SECONDS) -> None:
        self.folder, self.database, self.filename, self.interval = folder, database, filename, interval
        self.uploads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.folder.publish_sqlite(self.database, self.filename)
                self.uploads += 1
            except (StorageError, sqlite3.Error) as error:
                if not self._warned:
                    print(f"warning: periodic upload of {self.database} failed ({error}); retrying", file=sys.stderr, flush=True)
                    self._warned = True

    def __enter__(self) -> PeriodicUpload:
        if self.folder.is_uri:
            self._thread = threading.Thread(target=self._run, name="made-search-study-upload", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def list_folder(fs: Any, path: str, *, recursive: bool = False) -> list[Any]:
    """The entries (``pyarrow.fs.FileInfo``) under ``path`` on ``fs``, sorted by path; [] when
    ``path`` does not exist. Raises what the filesystem raises (``OSError``, ``ArrowInvalid``)."""
    import pyarrow.fs

    selector = pyarrow.fs.FileSelector(path, recursive=recursive, allow_not_found=True)
    return sorted(fs.get_file_info(selector), key=lambda info: info.path)


def subfolders(fs: Any, path: str) -> list[Any]:
    """The folders directly under ``path`` on ``fs`` (``list_folder``'s directories)."""
    import pyarrow.fs

    return [info for info in list_folder(fs, path) if info.type == pyarrow.fs.FileType.Directory]


def storage_filesystem(storage: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path on it)`` for a normalised storage, local or a URI."""
    if is_uri(storage):
        return open_filesystem(storage)
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem(), storage


def list_experiments(storage: str, marker: str) -> list[tuple[str, dict[str, Any]]]:
    """``(name, parsed marker JSON)`` for every folder of ``storage`` holding ``marker``.

    Works for a local path and for a URI. Unreadable markers are left out.
    """
    storage = normalize_storage(storage)
    fs, root = storage_filesystem(storage)
    try:
        folders = subfolders(fs, root)
    except Exception as error:
        raise StorageError(f"cannot list {storage}: {describe_error(error)}") from None
    found: list[tuple[str, dict[str, Any]]] = []
    for folder in folders:
        try:
            found.append((folder.base_name, json.loads(_read_remote(fs, f"{folder.path}/{marker}"))))
        except (OSError, ValueError):
            continue
    return found


# The files of an experiment folder that aggregation reads, and the best model's folder
# (samples figure): not Ray's checkpoints.
_FETCHED_FILES = (schema.EXPERIMENT_FILE, schema.TRIALS_FILE, schema.CURVES_FILE, schema.BEST_FILE)
_FETCHED_FOLDERS = (schema.BEST_MODEL_FOLDER,)


def fetch_experiments(uri: str, target: Path) -> Path:
    """Copy every experiment folder's result files under ``uri`` into ``target/<name>/``.

    Credentials come from the usual environment (AWS_* variables, profiles, instance roles).
    Each copy keeps the remote modification time: the samples figure is redrawn only for a
    newer model. Raises StorageError (one line: why, the caller names the storage) if the
    storage cannot be listed or read.
    """
    import pyarrow.fs

    uri = normalize_storage(uri)
    fs, root = open_filesystem(uri)
    try:
        target.mkdir(parents=True, exist_ok=True)
        for entry in subfolders(fs, root):
            if entry.base_name.startswith("."):
                continue
            wanted = [f"{entry.path}/{name}" for name in _FETCHED_FILES]
            for folder in _FETCHED_FOLDERS:
                inside = list_folder(fs, f"{entry.path}/{folder}", recursive=True)
                wanted += [item.path for item in inside if item.type == pyarrow.fs.FileType.File]
            for info in fs.get_file_info(wanted):
                if info.type != pyarrow.fs.FileType.File:
                    continue  # e.g. no best.json yet
                local = target / entry.base_name / info.path[len(entry.path) + 1 :]
                _download_file(fs, info.path, local)
                if info.mtime is not None:
                    os.utime(local, (info.mtime.timestamp(), info.mtime.timestamp()))
    except Exception as error:  # ArrowInvalid, OSError: whatever the filesystem raises
        raise StorageError(describe_error(error)) from None
    return target


def remove_stale_staging(folder: Path) -> bool:
    """Delete a staging folder left by an earlier run whose remote experiment no longer exists."""
    if folder.exists():
        shutil.rmtree(folder)
        return True
    return False


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (``made_core.files.atomic_write``)."""

    def write(temp: Path) -> None:
        temp.write_text(text, encoding="utf-8")

    return atomic_write(path, write)


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` as CSV (no index) to ``path`` atomically."""
    return atomic_write(path, lambda temp: frame.to_csv(temp, index=False))


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block.

    Serialises read-merge-write of the tables: without it two writers could each read the
    old table, merge their own rows, and the second replace would drop the first one's rows.
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
