"""Loading a dataset for MADE: the registry entry, the file (downloaded if missing), its validated splits.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from made_core.download import download_file
from made_core.npz import read_npz_splits, read_own_npz
from made_core.registry import (
    DATA_DIR_ENV,
    DATASETS,
    SPLIT_NAMES,
    DatasetError,
    DatasetSpec,
    canonical_name,
    get_spec,
    resolve_data_dir,
)
from made_core.synthetic import TrueDistribution, build_distribution, mean_nll_with_stderr, sample_splits

# The registry's names, re-exported: made_core.data is where callers load data from.
__all__ = ["DATA_DIR_ENV", "DATASETS", "SPLIT_NAMES", "DatasetError", "DatasetSpec", "Splits", "canonical_name",
           "download_file", "get_spec", "is_dataset_file", "load_dataset", "resolve_data_dir", "true_distribution"]  # fmt: skip


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


def is_dataset_file(name: str) -> bool:
    """Whether ``name`` names a file of one's own (a path ending in .npz) rather than the registry."""
    return str(name).lower().endswith(".npz")


def true_distribution(name: str) -> TrueDistribution:
    """The exact data distribution of a synthetic dataset; ``.log_prob(rows)`` scores any rows.

    Raises:
        DatasetError: the name is unknown or the dataset is not synthetic.
    """
    spec = get_spec(name)
    if spec.synthetic is None:
        raise DatasetError(f"dataset {spec.name!r} is real data: its true distribution is unknown")
    return build_distribution(spec.input_dim, spec.synthetic)


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True, progress: bool = True) -> Splits:
    """Load a dataset's train/valid/test splits, downloading its file if missing.

    Args:
        name: dataset name or alias, case-insensitive (see :data:`DATASETS`), or the path
            of a ``.npz`` file of one's own in the same layout (``train_data``,
            ``valid_data``, ``test_data``: 0/1 rows of one width, any split sizes).
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
    if is_dataset_file(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise DatasetError(f"dataset file {path} does not exist")
        own_spec, own_arrays = read_own_npz(path)
        return Splits(own_spec.name, own_spec.input_dim, own_arrays["train"], own_arrays["valid"], own_arrays["test"],
                      None, None, own_spec.description)  # fmt: skip
    spec = get_spec(name)
    if spec.synthetic is not None:
        return _generate_synthetic(spec)
    path = _ensure_file(spec, resolve_data_dir(data_dir), download=download, progress=progress)
    arrays = read_npz_splits(path, spec)
    note = KNOWN_FILE_NOTES.get(_sha256(path))
    return Splits(
        name=spec.name,
        input_dim=spec.input_dim,
        train=arrays["train"],
        valid=arrays["valid"],
        test=arrays["test"],
        true_test_nll=None,
        true_test_nll_stderr=None,
        description=spec.description if note is None else f"{spec.description}; {note}",
    )


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
    mixture = build_distribution(spec.input_dim, spec.synthetic)
    arrays = sample_splits(mixture, spec.split_sizes, spec.synthetic.seed)
    test_nll, test_nll_stderr = mean_nll_with_stderr(mixture.log_prob(arrays["test"]))
    return Splits(
        name=spec.name,
        input_dim=spec.input_dim,
        train=arrays["train"],
        valid=arrays["valid"],
        test=arrays["test"],
        true_test_nll=test_nll,
        true_test_nll_stderr=test_nll_stderr,
        description=spec.description,
    )


def _manual_fetch_hint(spec: DatasetSpec, destination: Path) -> str:
    """The sentence telling a user how to provide a file by hand."""
    return (
        f"Download {spec.url} and put it at {destination} "
        f"(or set {DATA_DIR_ENV} / --data-dir to a folder that holds {spec.filename})."
    )


def _ensure_file(spec: DatasetSpec, data_dir: Path, download: bool, progress: bool) -> Path:
    """Return the path of the dataset's file, downloading it first if it is missing."""
    assert spec.filename is not None and spec.url is not None
    destination = data_dir / spec.filename
    if destination.is_file():
        return destination
    if not download:
        raise DatasetError(
            f"dataset {spec.name!r}: {spec.filename} not found at {destination} "
            f"and download=False. {_manual_fetch_hint(spec, destination)}"
        )
    try:
        download_file(spec.url, destination, progress=progress)
    except DatasetError as error:
        raise DatasetError(
            f"dataset {spec.name!r}: {spec.filename} is not in {data_dir} and could not "
            f"be downloaded: {error}. {_manual_fetch_hint(spec, destination)}"
        ) from error
    return destination
