"""Reading and validating a dataset's ``.npz`` file: three 0/1 splits of the registry's shape."""

from __future__ import annotations

import re
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from made_core.registry import SPLIT_NAMES, DatasetError, DatasetSpec

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


def read_own_npz(path: Path) -> tuple[DatasetSpec, dict[str, np.ndarray]]:
    """A user's own dataset file: the same layout and checks as a registry file, with the
    dimension and split sizes taken from the file (every split 2-D, non-empty, of one width)."""
    raw = read_npz_arrays(path, [f"{split}_data" for split in SPLIT_NAMES])
    train = raw["train_data"]
    if train.ndim != 2 or train.shape[1] < 2:
        raise DatasetError(f"{path}: train_data has shape {train.shape}; expected a 2-D array of at least 2 columns")
    sizes = {split: int(raw[f"{split}_data"].shape[0]) if raw[f"{split}_data"].ndim == 2 else -1 for split in SPLIT_NAMES}
    for split, rows in sizes.items():
        if rows == 0:
            raise DatasetError(f"{path}: {split}_data has no rows")
    spec = DatasetSpec(
        name=path.stem, input_dim=int(train.shape[1]), train_size=sizes["train"], valid_size=sizes["valid"],
        test_size=sizes["test"], filename=path.name, url=None, description=f"the dataset file {path}",
    )  # fmt: skip
    return spec, {split: _validated_split(path, spec, split, raw[f"{split}_data"]) for split in SPLIT_NAMES}


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
                    raise DatasetError(
                        f"{path}: missing key(s) {', '.join(missing)}; "
                        f"the file has {', '.join(sorted(archive.files)) or 'no arrays'}"
                    )
                return {key: _numeric_member(archive, key, path) for key in keys}
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as error:
        raise DatasetError(
            f"{path} is not a valid npz file (corrupt or truncated zip archive: {error}); delete it and download it again"
        ) from error


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
        raise DatasetError(
            f"{path}: {key} has shape {array.shape}; expected a 2-D array ({expected_rows} rows x {spec.input_dim} columns)"
        )
    rows, columns = array.shape
    if columns != spec.input_dim:
        raise DatasetError(
            f"{path}: {key} has {columns} columns; expected {spec.input_dim} (the input dimension of {spec.name!r})"
        )
    if rows != expected_rows:
        raise DatasetError(
            f"{path}: wrong size of the {split} split: {key} has {rows} rows; "
            f"expected {expected_rows} (the standard split of {spec.name!r})"
        )
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
        raise DatasetError(f"{path}: {key} contains {int(nan_mask.sum())} NaN value(s), the first at row {row}, column {column}")


def _check_binary(path: Path, key: str, array: np.ndarray) -> None:
    """Refuse any value other than 0 and 1, quoting the first offender."""
    if array.dtype.kind == "b":
        return
    bad_mask = (array != 0) & (array != 1)
    if bad_mask.any():
        row, column = np.argwhere(bad_mask)[0]
        raise DatasetError(
            f"{path}: {key} has non-binary values ({int(bad_mask.sum())} outside {{0, 1}}), "
            f"e.g. {array[row, column].item()!r} at row {row}, column {column}"
        )
