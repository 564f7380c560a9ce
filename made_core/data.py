"""Datasets for MADE: the registry, the data directory, download, loading and validation.

Every dataset is binary: arrays are C-contiguous float32 with 0/1 entries, rows are
examples, columns are the D input variables. Real datasets are ``.npz`` files in the
layout of the MADE paper's code (keys ``train_data``, ``valid_data``, ``test_data``;
extra keys such as ``inputsize`` or ``train_length`` are ignored). Synthetic datasets
(names starting with ``synthetic-``) need no file and come with their exact test NLL.

Typical use::

    splits = load_dataset("dna")            # from $MADE_DATA_DIR or the user cache
    splits.train.shape                      # (1400, 180)
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import IO, Any

import numpy as np

from made_core.files import atomic_write, user_cache_dir
from made_core.synthetic import (
    BernoulliMixture,
    MixtureRecipe,
    build_mixture,
    mean_nll_with_stderr,
    sample_splits,
)

DATA_DIR_ENV = "MADE_DATA_DIR"
SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")
DOWNLOAD_TIMEOUT_S = 60.0

# The in-repo datasets live in the MADE repository's datasets/ folder (default branch
# "master"); rcv1 and binarized MNIST are too large for the repository and are assets
# of its ICML2015 release. Both locations are the ones the repository's README gives.
_REPO_DATA_URL = "https://raw.githubusercontent.com/mgermain/MADE/master/datasets"
_RELEASE_URL = "https://github.com/mgermain/MADE/releases/download/ICML2015"


class DatasetError(ValueError):
    """A dataset cannot be found, fetched or trusted; the message says which file and why."""


@dataclass(frozen=True)
class DatasetSpec:
    """The facts about one dataset: its size, where its file lives, what it is.

    Attributes:
        name: canonical name (the key in :data:`DATASETS`).
        input_dim: D, the number of binary variables (columns).
        train_size, valid_size, test_size: rows in each standard split.
        filename: file name inside the data directory; None for synthetic data.
        url: where a missing file is downloaded from; None for synthetic data.
        aliases: other names accepted by :func:`canonical_name`.
        description: one line for listings.
        synthetic: for synthetic datasets, the recipe of the true distribution.
    """

    name: str
    input_dim: int
    train_size: int
    valid_size: int
    test_size: int
    filename: str | None
    url: str | None
    aliases: tuple[str, ...] = ()
    description: str = ""
    synthetic: MixtureRecipe | None = None

    @property
    def split_sizes(self) -> dict[str, int]:
        """Rows per split: {"train": ..., "valid": ..., "test": ...}."""
        return {"train": self.train_size, "valid": self.valid_size, "test": self.test_size}

    @property
    def is_synthetic(self) -> bool:
        """True when the data is generated rather than read from a file."""
        return self.synthetic is not None


@dataclass(frozen=True, eq=False)
class Splits:
    """The three splits of a dataset, ready to train on.

    Attributes:
        name: canonical dataset name.
        input_dim: D.
        train, valid, test: C-contiguous float32 arrays of 0/1, shape (N_split, D).
        true_test_nll: exact mean -log p_true(x) over the test split in nats
            (synthetic data only; None for real data).
        true_test_nll_stderr: the standard error of that mean (None for real data).
        description: one line about the dataset.
    """

    name: str
    input_dim: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    true_test_nll: float | None
    true_test_nll_stderr: float | None
    description: str

    def split(self, split_name: str) -> np.ndarray:
        """The array of one split by name ("train", "valid" or "test")."""
        if split_name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {split_name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, split_name)


def _uci_spec(name: str, input_dim: int, sizes: tuple[int, int, int], description: str,
              url_base: str = _REPO_DATA_URL) -> DatasetSpec:
    """Registry entry for one of the binary datasets published with MADE."""
    filename = f"{name}.npz"
    return DatasetSpec(name=name, input_dim=input_dim, train_size=sizes[0], valid_size=sizes[1],
                       test_size=sizes[2], filename=filename, url=f"{url_base}/{filename}",
                       description=description)


def _synthetic_spec(name: str, input_dim: int, sizes: tuple[int, int, int], recipe: MixtureRecipe) -> DatasetSpec:
    """Registry entry for a mixture-of-product-Bernoullis dataset with a known true NLL."""
    description = (f"synthetic mixture of {recipe.num_components} product Bernoullis over {input_dim} bits "
                   f"(seed {recipe.seed}); exact true NLL known")
    return DatasetSpec(name=name, input_dim=input_dim, train_size=sizes[0], valid_size=sizes[1],
                       test_size=sizes[2], filename=None, url=None, description=description,
                       synthetic=recipe)


# Split sizes and dimensions: the standard splits of Larochelle & Murray (NADE, 2011),
# reused by MADE. How they were checked:
# - dna: read from the MADE repository's datasets/dna.npz itself (the byte-identical
#   copy in ../shared/datasets: arrays 1400/600/1186 x 180, inputsize 180).
# - mnist: 50000/10000/10000 x 784 is the paper's split; the shared offline stand-in
#   has those shapes (the published release file itself could not be fetched here).
# - adult, connect4, mushrooms, nips, ocr_letters, rcv1, web: the MADE repository's
#   npz files are binary and could not be read here, so these were checked against the
#   lengths and input sizes hard-coded in Larochelle's MLPython dataset modules (the
#   source of these splits) and a Fuel test of the same files; all agree with the NADE
#   tables. The loader validates every file against these numbers, so a mismatch would
#   surface as a DatasetError naming the split.
# - URLs: the MADE README lists adult, connect4, dna, mushrooms, nips, ocr_letters, web
#   as "in repo" (datasets/) and gives the release URLs of rcv1 and binarized_mnist.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist", input_dim=784, train_size=50_000, valid_size=10_000, test_size=10_000,
        filename="binarized_mnist.npz", url=f"{_RELEASE_URL}/binarized_mnist.npz",
        aliases=("binarized_mnist",),
        description="binarized MNIST digits, 28x28 pixels (Salakhutdinov & Murray 2008)"),
    "adult": _uci_spec("adult", 123, (5_000, 1_414, 26_147), "UCI Adult census records, binarized (a5a)"),
    "connect4": _uci_spec("connect4", 126, (16_000, 4_000, 47_557), "UCI Connect-4 board positions, one-hot"),
    "dna": _uci_spec("dna", 180, (1_400, 600, 1_186), "UCI DNA splice-junction sequences, binarized"),
    "mushrooms": _uci_spec("mushrooms", 112, (2_000, 500, 5_624), "UCI Mushrooms attributes, one-hot"),
    "nips": _uci_spec("nips", 500, (400, 100, 1_240), "NIPS 0-12 papers, word presence over 500 words"),
    "ocr_letters": _uci_spec("ocr_letters", 128, (32_152, 10_000, 10_000),
                             "OCR handwritten letters, 16x8 binary images"),
    "rcv1": _uci_spec("rcv1", 150, (40_000, 10_000, 150_000),
                      "RCV1 newswire, word presence over 150 words", url_base=_RELEASE_URL),
    "web": _uci_spec("web", 300, (14_000, 3_188, 32_561), "Web pages (w6a), 300 binary keyword features"),
    "synthetic-mob": _synthetic_spec("synthetic-mob", 32, (10_000, 2_000, 2_000),
                                     MixtureRecipe(num_components=10, seed=20150207)),
    "synthetic-tiny": _synthetic_spec("synthetic-tiny", 10, (1_000, 250, 250),
                                      MixtureRecipe(num_components=3, seed=1502)),
}


def _normalise_name(name: str) -> str:
    """Case-insensitive, with '-' and '_' interchangeable (ocr-letters, synthetic_tiny)."""
    return name.strip().lower().replace("_", "-")


def _name_lookup() -> dict[str, str]:
    """Map every normalised name and alias to its canonical registry key."""
    lookup: dict[str, str] = {}
    for spec in DATASETS.values():
        for accepted in (spec.name, *spec.aliases):
            lookup[_normalise_name(accepted)] = spec.name
    return lookup


def canonical_name(name: str) -> str:
    """Resolve a dataset name or alias (case-insensitive) to its registry key.

    Raises:
        DatasetError: the name is unknown; the message lists the known names.
    """
    canonical = _name_lookup().get(_normalise_name(name))
    if canonical is None:
        aliases = ", ".join(f"{alias} -> {spec.name}" for spec in DATASETS.values() for alias in spec.aliases)
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
                           + (f" (aliases: {aliases})" if aliases else ""))
    return canonical


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for a dataset name or alias (see :func:`canonical_name`)."""
    return DATASETS[canonical_name(name)]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The folder dataset files are read from and downloaded into.

    In order: ``data_dir`` if given, else ``$MADE_DATA_DIR`` if set and non-empty,
    else ``$XDG_CACHE_HOME/made-search/datasets`` (``~/.cache/made-search/datasets``
    when XDG_CACHE_HOME is unset). The folder is not created here.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV, "")
    if from_env:
        return Path(from_env).expanduser()
    return user_cache_dir() / "datasets"


def true_distribution(name: str) -> BernoulliMixture:
    """The exact data distribution of a synthetic dataset; ``.log_prob(rows)`` scores any rows.

    Raises:
        DatasetError: the name is unknown or the dataset is not synthetic.
    """
    spec = get_spec(name)
    if spec.synthetic is None:
        raise DatasetError(f"dataset {spec.name!r} is real data: its true distribution is unknown")
    return build_mixture(spec.input_dim, spec.synthetic)


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True,
                 progress: bool = True) -> Splits:
    """Load a dataset's train/valid/test splits, downloading its file if missing.

    Args:
        name: dataset name or alias, case-insensitive (see :data:`DATASETS`).
        data_dir: where files live; see :func:`resolve_data_dir`.
        download: fetch a missing file from the registry URL; when False a missing
            file is an error.
        progress: show a download progress bar on stderr.

    Returns:
        :class:`Splits` with C-contiguous float32 0/1 arrays of shape (N_split, D).

    Raises:
        DatasetError: unknown name, missing file that cannot be downloaded, or a file
            that fails validation (the message names the file and the problem).
    """
    spec = get_spec(name)
    if spec.synthetic is not None:
        return _generate_synthetic(spec)
    path = _ensure_file(spec, resolve_data_dir(data_dir), download=download, progress=progress)
    arrays = read_npz_splits(path, spec)
    note = KNOWN_FILE_NOTES.get(_sha256(path))
    return Splits(name=spec.name, input_dim=spec.input_dim, train=arrays["train"], valid=arrays["valid"],
                  test=arrays["test"], true_test_nll=None, true_test_nll_stderr=None,
                  description=spec.description if note is None else f"{spec.description}; {note}")


# Files known by content that are not the published ones: results built on them must say so.
KNOWN_FILE_NOTES = {
    "aad1e4e4bb7ddab187404dfd468a41b1de6aaa455626b1d90730ca6d7b39cca2": (
        "STAND-IN file: the real MNIST digits binarized once with a fixed seed (as Salakhutdinov & Murray did), "
        "made for offline machines; not the published binarized_mnist.npz, so NLLs are comparable, not identical"
    ),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _generate_synthetic(spec: DatasetSpec) -> Splits:
    """Sample a synthetic dataset's splits and score its test split under the true distribution."""
    assert spec.synthetic is not None
    mixture = build_mixture(spec.input_dim, spec.synthetic)
    arrays = sample_splits(mixture, spec.split_sizes, spec.synthetic.seed)
    test_nll, test_nll_stderr = mean_nll_with_stderr(mixture.log_prob(arrays["test"]))
    return Splits(name=spec.name, input_dim=spec.input_dim, train=arrays["train"], valid=arrays["valid"],
                  test=arrays["test"], true_test_nll=test_nll, true_test_nll_stderr=test_nll_stderr,
                  description=spec.description)


# ----------------------------------------------------------------------------------
# Locating and downloading files
# ----------------------------------------------------------------------------------

def _manual_fetch_hint(spec: DatasetSpec, destination: Path) -> str:
    """The sentence telling a user how to provide a file by hand."""
    return (f"Download {spec.url} and put it at {destination} "
            f"(or set {DATA_DIR_ENV} / --data-dir to a folder that holds {spec.filename}).")


def _ensure_file(spec: DatasetSpec, data_dir: Path, download: bool, progress: bool) -> Path:
    """Return the path of the dataset's file, downloading it first if it is missing."""
    assert spec.filename is not None and spec.url is not None
    destination = data_dir / spec.filename
    if destination.is_file():
        return destination
    if not download:
        raise DatasetError(f"dataset {spec.name!r}: {spec.filename} not found at {destination} "
                           f"and download=False. {_manual_fetch_hint(spec, destination)}")
    try:
        download_file(spec.url, destination, progress=progress)
    except DatasetError as error:
        raise DatasetError(f"dataset {spec.name!r}: {spec.filename} is not in {data_dir} and could not "
                           f"be downloaded: {error}. {_manual_fetch_hint(spec, destination)}") from error
    return destination


def download_file(url: str, destination: Path, progress: bool = True,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
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
            line = (f"\rdownloading {self._label} [{bar}] {fraction:6.1%} "
                    f"{megabytes:.1f}/{self._total / 1e6:.1f} MB")
        else:
            line = f"\rdownloading {self._label} {megabytes:.1f} MB"
        sys.stderr.write(line)
        sys.stderr.flush()


# ----------------------------------------------------------------------------------
# Reading and validating npz files
# ----------------------------------------------------------------------------------
#
# The published files were written by Python 2's numpy (shapes such as "(1186L, 180L)").
# numpy's own loader reads them, with a UserWarning each time; that one warning is silenced
# around the load only, never process-wide. allow_pickle=False refuses object arrays.
_PY2_HEADER_WARNING = "Reading `.npy` or `.npz` file required additional header parsing"
_NUMERIC_KINDS = "biuf"  # bool, signed int, unsigned int, float


def read_npz_splits(path: Path, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Read and validate the three splits of a dataset file.

    Returns:
        dict split name -> C-contiguous float32 0/1 array of shape (spec.<split>_size, D).

    Raises:
        DatasetError: not a valid npz, missing keys, wrong columns or rows, NaNs or
            non-binary values; the message names the file and the problem.
    """
    keys = [f"{split}_data" for split in SPLIT_NAMES]
    raw = read_npz_arrays(path, keys)
    return {split: _validated_split(path, spec, split, raw[f"{split}_data"]) for split in SPLIT_NAMES}


def read_npz_arrays(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """Read the named arrays of an .npz archive without pickle, Python 2 files included.

    Raises:
        DatasetError: the file is not a readable zip (corrupt or truncated), a key is
            missing, or a member is not a plain numeric .npy array.
    """
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path} is not a valid npz file (not a zip archive); delete it and download it again")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape(_PY2_HEADER_WARNING), category=UserWarning)
            with np.load(path, allow_pickle=False) as archive:
                missing = [key for key in keys if key not in archive.files]
                if missing:
                    raise DatasetError(f"{path}: missing key(s) {', '.join(missing)}; "
                                       f"the file has {', '.join(sorted(archive.files)) or 'no arrays'}")
                return {key: _numeric_member(archive, key, path) for key in keys}
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as error:
        raise DatasetError(f"{path} is not a valid npz file (corrupt or truncated zip archive: {error}); "
                           "delete it and download it again") from error


def _numeric_member(archive: Any, key: str, path: Path) -> np.ndarray:
    where = f"{path} (array {key}.npy)"
    try:
        array = archive[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DatasetError(f"{where}: dtype object is not numeric (pickled Python objects are refused)") from error
        raise DatasetError(f"{where}: unreadable array ({error}); the file is corrupt") from error
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise DatasetError(f"{where}: dtype {array.dtype} is not numeric")
    return array


def _validated_split(path: Path, spec: DatasetSpec, split: str, array: np.ndarray) -> np.ndarray:
    """Check one split's shape and values against the registry; return it as float32 C-contiguous."""
    key = f"{split}_data"
    expected_rows = spec.split_sizes[split]
    if array.ndim != 2:
        raise DatasetError(f"{path}: {key} has shape {array.shape}; expected a 2-D array "
                           f"({expected_rows} rows x {spec.input_dim} columns)")
    rows, columns = array.shape
    if columns != spec.input_dim:
        raise DatasetError(f"{path}: {key} has {columns} columns; expected {spec.input_dim} "
                           f"(the input dimension of {spec.name!r})")
    if rows != expected_rows:
        raise DatasetError(f"{path}: wrong size of the {split} split: {key} has {rows} rows; "
                           f"expected {expected_rows} (the standard split of {spec.name!r})")
    _check_no_nans(path, key, array)
    _check_binary(path, key, array)
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_no_nans(path: Path, key: str, array: np.ndarray) -> None:
    """Refuse NaNs, naming how many and where the first one is."""
    if array.dtype.kind != "f":
        return
    nan_mask = np.isnan(array)
    if nan_mask.any():
        row, column = np.argwhere(nan_mask)[0]
        raise DatasetError(f"{path}: {key} contains {int(nan_mask.sum())} NaN value(s), "
                           f"the first at row {row}, column {column}")


def _check_binary(path: Path, key: str, array: np.ndarray) -> None:
    """Refuse any value other than 0 and 1, quoting the first offender."""
    if array.dtype.kind == "b":
        return
    bad_mask = (array != 0) & (array != 1)
    if bad_mask.any():
        row, column = np.argwhere(bad_mask)[0]
        raise DatasetError(f"{path}: {key} has non-binary values ({int(bad_mask.sum())} outside {{0, 1}}), "
                           f"e.g. {array[row, column].item()!r} at row {row}, column {column}")
