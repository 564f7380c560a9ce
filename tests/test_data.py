"""Tests of the dataset layer: registry, data dir, loading, validation, download, synthetic data.

Real-data tests read the files in $MADE_DATA_DIR (CI points it at ../shared/datasets)
and are skipped, saying so, when the variable or the file is missing. Every other test
uses small files written to tmp_path and a small fake registry entry.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import struct
import urllib.error
import urllib.request
import warnings
import zipfile
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from made_core import data
from made_core.data import (
    DATASETS,
    DatasetError,
    DatasetSpec,
    Splits,
    canonical_name,
    load_dataset,
    resolve_data_dir,
    true_distribution,
)
from made_core.synthetic import (
    BayesNetRecipe,
    BernoulliMixture,
    MixtureRecipe,
    build_bayes_net,
    build_mixture,
    mean_nll_with_stderr,
    mixture_log_prob,
)

FAKE_NAME = "tinyfake"
FAKE_DIM = 4
FAKE_SIZES = {"train": 3, "valid": 2, "test": 2}
FAKE_URL = "https://example.invalid/made/tinyfake.npz"
FAKE_FILE = f"{FAKE_NAME}.npz"


# ----------------------------------------------------------------------------------
# helpers and fixtures
# ----------------------------------------------------------------------------------


def shared_file_or_skip(filename: str) -> Path:
    """The path of a file in $MADE_DATA_DIR, or skip the test saying how to provide it."""
    data_dir = os.environ.get("MADE_DATA_DIR")
    if not data_dir or not (Path(data_dir) / filename).is_file():
        pytest.skip(f"{filename} not found in MADE_DATA_DIR={data_dir!r}; set MADE_DATA_DIR to ../shared/datasets")
    return Path(data_dir) / filename


def valid_fake_arrays() -> dict[str, np.ndarray]:
    """Arrays that satisfy the fake spec: float32 0/1, FAKE_SIZES rows x FAKE_DIM columns."""
    rng = np.random.default_rng(0)
    return {f"{split}_data": (rng.random((rows, FAKE_DIM)) < 0.5).astype(np.float32) for split, rows in FAKE_SIZES.items()}


def write_npz(path: Path, **arrays: Any) -> Path:
    """Write arrays to an npz file with numpy's writer; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def npy_bytes_with_python2_header(array: np.ndarray) -> bytes:
    """A .npy (format 1.0) whose header spells the shape as Python 2 did: (3L, 4L)."""
    shape_text = "(" + "".join(f"{n}L, " for n in array.shape).rstrip(" ") + ")"
    header = f"{{'descr': '{array.dtype.str}', 'fortran_order': False, 'shape': {shape_text}, }}"
    # Pad so magic (6) + version (2) + length (2) + header is a multiple of 16, ending in "\n".
    header += " " * ((16 - (10 + len(header) + 1) % 16) % 16) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + array.tobytes()


@pytest.fixture
def fake_spec(monkeypatch: pytest.MonkeyPatch) -> DatasetSpec:
    """A tiny dataset registered for the duration of one test."""
    spec = DatasetSpec(
        name=FAKE_NAME,
        input_dim=FAKE_DIM,
        train_size=FAKE_SIZES["train"],
        valid_size=FAKE_SIZES["valid"],
        test_size=FAKE_SIZES["test"],
        filename=FAKE_FILE,
        url=FAKE_URL,
        description="a fake for tests",
    )
    monkeypatch.setitem(DATASETS, FAKE_NAME, spec)
    return spec


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every urlopen fail as offline; returns the URLs that were attempted."""
    attempted: list[str] = []

    def offline_urlopen(url: str, *args: object, **kwargs: object) -> None:
        attempted.append(url)
        raise urllib.error.URLError(OSError("[Errno -3] Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline_urlopen)
    return attempted


class FakeResponse(io.BytesIO):
    """What urlopen returns, reduced to what the downloader uses: read() and headers."""

    def __init__(self, body: bytes, content_length: int | None = None, fail_after: int | None = None) -> None:
        super().__init__(body)
        self.headers = Message()
        if content_length is not None:
            self.headers["Content-Length"] = str(content_length)
        self._fail_after = fail_after

    def read(self, size: int | None = -1) -> bytes:
        if self._fail_after is not None and self.tell() >= self._fail_after:
            raise ConnectionResetError("connection reset by peer")
        if self._fail_after is not None:
            remaining = self._fail_after - self.tell()
            size = remaining if size is None or size < 0 else min(size, remaining)
        return super().read(size)


def serve(monkeypatch: pytest.MonkeyPatch, response: FakeResponse) -> None:
    """Make urlopen return ``response``."""
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: response)


def leftovers(folder: Path) -> list[str]:
    """Names of everything in a folder (hidden temporary files included)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_binary_float32(array: np.ndarray, shape: tuple[int, int]) -> None:
    """The loader's contract for every split."""
    assert array.shape == shape
    assert array.dtype == np.float32
    assert array.flags.c_contiguous
    assert np.all((array == 0) | (array == 1))


# ----------------------------------------------------------------------------------
# real data from $MADE_DATA_DIR
# ----------------------------------------------------------------------------------


def test_dna_loads_from_made_data_dir_with_python2_header_and_no_warning(capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_file_or_skip("dna.npz")
    with zipfile.ZipFile(path) as archive:  # the test is only meaningful on a Python 2 file
        assert b"(1400L, 180L)" in archive.read("train_data.npy")[:128]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_dataset("dna", download=False, progress=False)
    assert caught == []
    assert capsys.readouterr() == ("", "")
    assert isinstance(splits, Splits)
    assert (splits.name, splits.input_dim) == ("dna", 180)
    assert_binary_float32(splits.train, (1400, 180))
    assert_binary_float32(splits.valid, (600, 180))
    assert_binary_float32(splits.test, (1186, 180))
    assert splits.true_test_nll is None and splits.true_test_nll_stderr is None
    assert splits.description


def test_dna_arrays_equal_what_numpy_reads() -> None:
    path = shared_file_or_skip("dna.npz")
    splits = load_dataset("dna", data_dir=path.parent, download=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's own reader warns about the Python 2 header
        reference = np.load(path)
        for split in ("train", "valid", "test"):
            np.testing.assert_array_equal(splits.split(split), reference[f"{split}_data"])


def test_mnist_loads_through_its_alias() -> None:
    shared_file_or_skip("binarized_mnist.npz")
    splits = load_dataset("binarized_mnist", download=False, progress=False)
    assert (splits.name, splits.input_dim) == ("mnist", 784)
    assert_binary_float32(splits.train, (50_000, 784))
    assert_binary_float32(splits.valid, (10_000, 784))
    assert_binary_float32(splits.test, (10_000, 784))
    # The shared file is a known stand-in, and every result built on it must say so.
    assert "STAND-IN" in splits.description
    assert "STAND-IN" not in load_dataset("dna", download=False).description


# ----------------------------------------------------------------------------------
# registry and names
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, dim, sizes",
    [
        ("mnist", 784, (50_000, 10_000, 10_000)),
        ("adult", 123, (5_000, 1_414, 26_147)),
        ("connect4", 126, (16_000, 4_000, 47_557)),
        ("dna", 180, (1_400, 600, 1_186)),
        ("mushrooms", 112, (2_000, 500, 5_624)),
        ("nips", 500, (400, 100, 1_240)),
        ("ocr_letters", 128, (32_152, 10_000, 10_000)),
        ("rcv1", 150, (40_000, 10_000, 150_000)),
        ("web", 300, (14_000, 3_188, 32_561)),
    ],
)
def test_registry_holds_the_standard_splits(name: str, dim: int, sizes: tuple[int, int, int]) -> None:
    spec = DATASETS[name]
    assert (spec.name, spec.input_dim) == (name, dim)
    assert (spec.train_size, spec.valid_size, spec.test_size) == sizes
    assert spec.url is not None and spec.filename is not None and spec.url.endswith("/" + spec.filename)
    assert spec.url.startswith("https://")


def test_large_files_come_from_the_icml2015_release() -> None:
    release = "https://github.com/mgermain/MADE/releases/download/ICML2015/"
    assert DATASETS["mnist"].url == release + "binarized_mnist.npz"
    assert DATASETS["mnist"].filename == "binarized_mnist.npz"
    assert DATASETS["rcv1"].url == release + "rcv1.npz"
    assert DATASETS["adult"].url == "https://raw.githubusercontent.com/mgermain/MADE/master/datasets/adult.npz"


def test_synthetic_datasets_are_listed_without_a_file() -> None:
    for name in ("synthetic-mob", "synthetic-tiny"):
        spec = DATASETS[name]
        assert spec.filename is None and spec.url is None and spec.is_synthetic
    assert not DATASETS["dna"].is_synthetic


@pytest.mark.parametrize(
    "given, expected",
    [
        ("binarized_mnist", "mnist"),
        ("MNIST", "mnist"),
        ("Binarized-MNIST", "mnist"),
        ("  dna ", "dna"),
        ("OCR-Letters", "ocr_letters"),
        ("synthetic_tiny", "synthetic-tiny"),
    ],
)
def test_canonical_name_resolves_aliases_case_insensitively(given: str, expected: str) -> None:
    assert canonical_name(given) == expected


def test_unknown_name_lists_the_known_names() -> None:
    with pytest.raises(DatasetError) as raised:
        canonical_name("cifar10")
    message = str(raised.value)
    assert "unknown dataset 'cifar10'" in message
    for name in DATASETS:
        assert name in message
    assert "binarized_mnist -> mnist" in message
    assert isinstance(raised.value, ValueError)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cifar10")


# ----------------------------------------------------------------------------------
# data directory
# ----------------------------------------------------------------------------------


def test_data_dir_argument_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MADE_DATA_DIR", str(tmp_path / "from-env"))
    assert resolve_data_dir(tmp_path / "given") == tmp_path / "given"
    assert resolve_data_dir(str(tmp_path / "given")) == tmp_path / "given"


def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MADE_DATA_DIR", str(tmp_path / "from-env"))
    assert resolve_data_dir() == tmp_path / "from-env"


def test_data_dir_defaults_to_the_xdg_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MADE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir() == tmp_path / "xdg" / "made-search" / "datasets"


def test_data_dir_defaults_to_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MADE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "made-search" / "datasets"
    assert not (tmp_path / "home").exists()  # resolving never creates anything


# ----------------------------------------------------------------------------------
# reading files: formats that must load
# ----------------------------------------------------------------------------------


def test_valid_file_with_extra_keys_loads(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    write_npz(
        tmp_path / FAKE_FILE, **arrays, inputsize=np.int32(FAKE_DIM), train_length=np.int32(3), comment=np.array([1.5, 2.5])
    )
    splits = load_dataset(FAKE_NAME, data_dir=tmp_path, download=False)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(splits.split(split), arrays[f"{split}_data"])
        assert_binary_float32(splits.split(split), (FAKE_SIZES[split], FAKE_DIM))


def test_python2_header_loads_without_warning(fake_spec: DatasetSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arrays = valid_fake_arrays()
    with zipfile.ZipFile(tmp_path / FAKE_FILE, "w") as archive:
        for key, array in arrays.items():
            archive.writestr(f"{key}.npy", npy_bytes_with_python2_header(array))
        archive.writestr("inputsize.npy", npy_bytes_with_python2_header(np.array(FAKE_DIM, dtype="<i4")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_dataset(FAKE_NAME, data_dir=tmp_path, download=False)
    assert caught == []
    assert capsys.readouterr() == ("", "")
    np.testing.assert_array_equal(splits.train, arrays["train_data"])


def test_other_numeric_layouts_are_converted(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    as_stored = {
        "train_data": np.asfortranarray(arrays["train_data"].astype(">f8")),  # big-endian, Fortran order
        "valid_data": arrays["valid_data"].astype(np.uint8),
        "test_data": arrays["test_data"].astype(bool),
    }
    write_npz(tmp_path / FAKE_FILE, **as_stored)
    splits = load_dataset(FAKE_NAME, data_dir=tmp_path, download=False)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(splits.split(split), arrays[f"{split}_data"])
        assert_binary_float32(splits.split(split), (FAKE_SIZES[split], FAKE_DIM))


def test_compressed_npz_loads(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays: dict[str, Any] = valid_fake_arrays()
    np.savez_compressed(tmp_path / FAKE_FILE, **arrays)
    splits = load_dataset(FAKE_NAME, data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(splits.test, arrays["test_data"])


# ----------------------------------------------------------------------------------
# reading files: every refusal names the file and the problem
# ----------------------------------------------------------------------------------


def load_fake_expecting_error(path: Path) -> str:
    """Load the fake dataset from path's folder; return the DatasetError message."""
    with pytest.raises(DatasetError) as raised:
        load_dataset(FAKE_NAME, data_dir=path.parent, download=False)
    message = str(raised.value)
    assert str(path) in message
    return message


def test_not_a_zip_is_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    path = tmp_path / FAKE_FILE
    path.write_bytes(b"<html>404 Not Found</html>")
    assert "not a valid npz file" in load_fake_expecting_error(path)


def test_truncated_file_is_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    path = write_npz(tmp_path / FAKE_FILE, **valid_fake_arrays())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = load_fake_expecting_error(path)
    assert "not a valid npz file" in message and "truncated" in message


def test_corrupted_data_bytes_are_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    path = write_npz(tmp_path / FAKE_FILE, **valid_fake_arrays())
    content = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("train_data.npy")
    # The last data byte of train_data.npy (stored uncompressed): the zip CRC no longer matches.
    local_header_size = 30 + len(info.filename.encode()) + len(info.extra)
    content[info.header_offset + local_header_size + info.file_size - 1] ^= 0xFF
    path.write_bytes(bytes(content))
    message = load_fake_expecting_error(path)
    assert "not a valid npz file" in message and "CRC" in message


def test_missing_keys_are_named(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    del arrays["valid_data"], arrays["test_data"]
    path = write_npz(tmp_path / FAKE_FILE, **arrays, inputsize=np.int32(FAKE_DIM))
    message = load_fake_expecting_error(path)
    assert "missing key(s) valid_data, test_data" in message
    assert "inputsize, train_data" in message


def test_wrong_number_of_columns_is_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    arrays["train_data"] = np.zeros((3, FAKE_DIM + 1), dtype=np.float32)
    message = load_fake_expecting_error(write_npz(tmp_path / FAKE_FILE, **arrays))
    assert f"train_data has {FAKE_DIM + 1} columns; expected {FAKE_DIM}" in message


def test_wrong_split_size_is_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    arrays["valid_data"] = np.zeros((5, FAKE_DIM), dtype=np.float32)
    message = load_fake_expecting_error(write_npz(tmp_path / FAKE_FILE, **arrays))
    assert "wrong size of the valid split" in message
    assert "valid_data has 5 rows; expected 2" in message


def test_one_dimensional_split_is_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    arrays["test_data"] = np.zeros(8, dtype=np.float32)
    message = load_fake_expecting_error(write_npz(tmp_path / FAKE_FILE, **arrays))
    assert "test_data has shape (8,); expected a 2-D array" in message


def test_non_binary_values_are_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    arrays["test_data"][1, 2] = 0.5
    message = load_fake_expecting_error(write_npz(tmp_path / FAKE_FILE, **arrays))
    assert "test_data has non-binary values (1 outside {0, 1})" in message
    assert "e.g. 0.5 at row 1, column 2" in message


def test_integer_values_other_than_0_1_are_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    arrays["train_data"] = (arrays["train_data"] * 255).astype(np.uint8)  # 0/255 pixels
    message = load_fake_expecting_error(write_npz(tmp_path / FAKE_FILE, **arrays))
    assert "train_data has non-binary values" in message and "e.g. 255" in message


def test_nans_are_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    arrays["valid_data"][0, 3] = np.nan
    message = load_fake_expecting_error(write_npz(tmp_path / FAKE_FILE, **arrays))
    assert "valid_data contains 1 NaN value(s), the first at row 0, column 3" in message


def test_pickled_object_arrays_are_refused(fake_spec: DatasetSpec, tmp_path: Path) -> None:
    arrays = valid_fake_arrays()
    arrays["train_data"] = np.array([[0, 1, 0, 1]] * 3, dtype=object)
    message = load_fake_expecting_error(write_npz(tmp_path / FAKE_FILE, **arrays))
    assert "train_data.npy" in message and "pickled Python objects are refused" in message


# ----------------------------------------------------------------------------------
# missing files and downloads
# ----------------------------------------------------------------------------------


def test_offline_download_says_what_to_put_where(fake_spec: DatasetSpec, tmp_path: Path, no_network: list[str]) -> None:
    with pytest.raises(DatasetError) as raised:
        load_dataset(FAKE_NAME, data_dir=tmp_path, progress=False)
    message = str(raised.value)
    assert no_network == [FAKE_URL]
    assert "tinyfake.npz" in message
    assert f"put it at {tmp_path / 'tinyfake.npz'}" in message
    assert f"Download {FAKE_URL}" in message
    assert "name resolution" in message
    assert leftovers(tmp_path) == []


def test_download_timeout_is_reported(fake_spec: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow_urlopen(url: str, *args: object, **kwargs: object) -> None:
        raise TimeoutError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", slow_urlopen)
    with pytest.raises(DatasetError, match="timed out") as raised:
        load_dataset(FAKE_NAME, data_dir=tmp_path, progress=False)
    assert str(tmp_path / "tinyfake.npz") in str(raised.value)


def test_http_error_is_reported(fake_spec: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.HTTPError(url, 404, "Not Found", Message(), None)

    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(DatasetError, match="HTTP 404 Not Found"):
        load_dataset(FAKE_NAME, data_dir=tmp_path, progress=False)


def test_missing_file_without_download_does_not_touch_the_network(
    fake_spec: DatasetSpec, tmp_path: Path, no_network: list[str]
) -> None:
    with pytest.raises(DatasetError) as raised:
        load_dataset(FAKE_NAME, data_dir=tmp_path, download=False)
    message = str(raised.value)
    assert no_network == []
    assert "download=False" in message
    assert f"put it at {tmp_path / 'tinyfake.npz'}" in message and FAKE_URL in message


def test_missing_file_is_downloaded_from_a_file_url(
    fake_spec: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    arrays = valid_fake_arrays()
    source = write_npz(tmp_path / "server" / "tinyfake.npz", **arrays)
    monkeypatch.setitem(DATASETS, FAKE_NAME, DatasetSpec(**{**fake_spec.__dict__, "url": source.as_uri()}))
    data_dir = tmp_path / "cache" / "nested"  # created on demand
    splits = load_dataset(FAKE_NAME, data_dir=data_dir, progress=True)
    np.testing.assert_array_equal(splits.valid, arrays["valid_data"])
    assert leftovers(data_dir) == ["tinyfake.npz"]  # no temporary file left
    assert (data_dir / "tinyfake.npz").read_bytes() == source.read_bytes()
    assert "downloading tinyfake.npz" in capsys.readouterr().err
    # Second load reads the cached file.
    source.unlink()
    load_dataset(FAKE_NAME, data_dir=data_dir)


def test_download_from_served_bytes_without_progress(
    fake_spec: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = write_npz(tmp_path / "source.npz", **valid_fake_arrays()).read_bytes()
    serve(monkeypatch, FakeResponse(body, content_length=len(body)))
    load_dataset(FAKE_NAME, data_dir=tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == ["tinyfake.npz"]
    assert capsys.readouterr().err == ""


def test_short_download_leaves_nothing(fake_spec: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = write_npz(tmp_path / "source.npz", **valid_fake_arrays()).read_bytes()
    serve(monkeypatch, FakeResponse(body[:100], content_length=len(body)))
    with pytest.raises(DatasetError, match=f"incomplete \\(100 of {len(body)} bytes\\)"):
        load_dataset(FAKE_NAME, data_dir=tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == []


def test_connection_dropped_mid_download_leaves_nothing(
    fake_spec: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = write_npz(tmp_path / "source.npz", **valid_fake_arrays()).read_bytes()
    serve(monkeypatch, FakeResponse(body, content_length=len(body), fail_after=200))
    with pytest.raises(DatasetError, match="connection reset"):
        load_dataset(FAKE_NAME, data_dir=tmp_path / "data", progress=True)
    assert leftovers(tmp_path / "data") == []


def test_download_that_is_not_a_zip_leaves_nothing(
    fake_spec: DatasetSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve(monkeypatch, FakeResponse(b"<html>rate limited</html>"))  # no Content-Length
    with pytest.raises(DatasetError, match="did not return an npz"):
        load_dataset(FAKE_NAME, data_dir=tmp_path / "data", progress=False)
    assert leftovers(tmp_path / "data") == []


# ----------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------


def all_binary_vectors(input_dim: int) -> np.ndarray:
    """Every x in {0, 1}^D, shape (2^D, D), float64."""
    return np.array(list(itertools.product((0.0, 1.0), repeat=input_dim)))


def brute_force_probability(weights: np.ndarray, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """p(x) = sum_k w_k prod_d q_kd^x_d (1 - q_kd)^(1 - x_d), by direct products (no logs)."""
    per_component = np.prod(np.where(rows[:, None, :] == 1.0, probs[None], 1.0 - probs[None]), axis=2)
    return per_component @ weights


@pytest.mark.parametrize("name", ["synthetic-tiny", "synthetic-mob"])
def test_synthetic_splits_have_the_registry_shapes(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MADE_DATA_DIR", str(tmp_path / "nowhere"))  # needs no file, no network
    spec = DATASETS[name]
    splits = load_dataset(name)
    assert (splits.name, splits.input_dim) == (name, spec.input_dim)
    for split, rows in spec.split_sizes.items():
        assert_binary_float32(splits.split(split), (rows, spec.input_dim))
    assert splits.true_test_nll is not None and splits.true_test_nll > 0
    assert splits.true_test_nll_stderr is not None and 0 < splits.true_test_nll_stderr < 1
    assert not (tmp_path / "nowhere").exists()


def test_synthetic_data_is_deterministic() -> None:
    first, second = load_dataset("synthetic-mob"), load_dataset("synthetic-mob")
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(first.split(split), second.split(split))
    assert first.true_test_nll == second.true_test_nll
    assert not np.array_equal(first.train[:2000], first.test)  # splits are distinct draws


# Fingerprint of synthetic-tiny's bytes (train, valid, test concatenated) and its true test NLL.
SYNTHETIC_TINY_SHA256 = "9ccb08a658f6c088e4cc012d9c349cdbea6bcf329244c4422cd5b17a2f70df21"
SYNTHETIC_TINY_TRUE_TEST_NLL = 4.98438187824359


def test_synthetic_tiny_is_the_same_on_every_machine() -> None:
    # A fingerprint of the exact bytes: changes only if the generator (or numpy's
    # PCG64 / uniform stream) changes, which would silently change the benchmark.
    splits = load_dataset("synthetic-tiny")
    digest = hashlib.sha256(b"".join(splits.split(s).tobytes() for s in ("train", "valid", "test"))).hexdigest()
    assert digest == SYNTHETIC_TINY_SHA256
    assert splits.true_test_nll == pytest.approx(SYNTHETIC_TINY_TRUE_TEST_NLL, abs=1e-9)


def test_synthetic_tiny_true_nll_matches_brute_force() -> None:
    splits = load_dataset("synthetic-tiny")
    mixture = true_distribution("synthetic-tiny")
    assert isinstance(mixture, BernoulliMixture)
    weights = np.exp(mixture.log_weights)
    everything = all_binary_vectors(splits.input_dim)
    assert brute_force_probability(weights, mixture.probs, everything).sum() == pytest.approx(1.0, abs=1e-12)
    test_probability = brute_force_probability(weights, mixture.probs, splits.test.astype(np.float64))
    nll = -np.log(test_probability)
    assert splits.true_test_nll == pytest.approx(nll.mean(), rel=1e-12)
    assert splits.true_test_nll_stderr == pytest.approx(nll.std(ddof=1) / np.sqrt(nll.size), rel=1e-9)
    np.testing.assert_allclose(
        mixture.log_prob(everything), np.log(brute_force_probability(weights, mixture.probs, everything)), rtol=1e-12
    )


def test_samples_follow_the_true_distribution() -> None:
    # The test NLL estimates the entropy: it must lie within a few standard errors of the
    # exact entropy, which checks the sampler against log_prob.
    splits = load_dataset("synthetic-tiny")
    mixture = true_distribution("synthetic-tiny")
    log_p = mixture.log_prob(all_binary_vectors(splits.input_dim))
    entropy = -np.sum(np.exp(log_p) * log_p)
    assert splits.true_test_nll is not None and splits.true_test_nll_stderr is not None
    assert abs(splits.true_test_nll - entropy) < 4 * splits.true_test_nll_stderr
    train_nll, train_stderr = mean_nll_with_stderr(mixture.log_prob(splits.train))
    assert abs(train_nll - entropy) < 4 * train_stderr


def test_true_distribution_scores_any_rows_and_matches_the_reported_nll() -> None:
    splits = load_dataset("synthetic-mob")
    mixture = true_distribution("synthetic-mob")
    assert isinstance(mixture, BernoulliMixture)
    assert (mixture.input_dim, mixture.num_components) == (32, 10)
    assert -mixture.log_prob(splits.test).mean() == pytest.approx(splits.true_test_nll, rel=1e-12)
    assert mixture.log_prob(splits.test[:1].astype(np.int64)).shape == (1,)
    assert np.exp(mixture.log_weights).sum() == pytest.approx(1.0)
    assert mixture.probs.min() >= 0.05 and mixture.probs.max() <= 0.95
    with pytest.raises(ValueError, match="shape"):
        mixture.log_prob(np.zeros((2, 31)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        mixture.log_prob(np.full((2, 32), 0.5))


def test_true_distribution_of_real_data_is_refused() -> None:
    with pytest.raises(DatasetError, match="real data"):
        true_distribution("dna")


def test_different_seeds_give_different_mixtures() -> None:
    first = build_mixture(6, MixtureRecipe(num_components=2, seed=1))
    second = build_mixture(6, MixtureRecipe(num_components=2, seed=2))
    assert not np.allclose(first.probs, second.probs)
    rows = all_binary_vectors(6)
    assert np.exp(mixture_log_prob(first, rows)).sum() == pytest.approx(1.0, abs=1e-12)


def test_mean_nll_with_stderr() -> None:
    mean, stderr = mean_nll_with_stderr(np.array([-1.0, -2.0, -3.0]))
    assert mean == pytest.approx(2.0)
    assert stderr == pytest.approx(1.0 / np.sqrt(3.0))
    assert mean_nll_with_stderr(np.array([-4.0])) == (4.0, 0.0)


def test_data_module_imports_nothing_of_the_other_packages() -> None:
    source = Path(data.__file__).read_text() + Path(data.__file__).with_name("synthetic.py").read_text()
    for forbidden in ("import ray", "import optuna", "from search", "from spaces", "from results"):
        assert forbidden not in source


# ----------------------------------------------------------------------------------
# the Bayesian-network family
# ----------------------------------------------------------------------------------


def test_bayes_net_is_normalised_and_respects_its_ordering() -> None:
    net = build_bayes_net(10, BayesNetRecipe(max_parents=3, seed=7))
    probabilities = np.exp(net.log_prob(all_binary_vectors(10)))
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    position = np.empty(10, dtype=int)
    position[net.order] = np.arange(10)
    parents, children = np.nonzero(net.weights.T)  # weights[child, parent]
    assert np.all(position[parents] < position[children])
    assert np.all((net.weights != 0).sum(axis=1) <= 3) and (net.weights != 0).sum() > 10
    assert not np.array_equal(net.order, np.arange(10))  # a hidden ordering, not the natural one


def test_bayes_net_samples_follow_its_log_prob() -> None:
    net = build_bayes_net(10, BayesNetRecipe(max_parents=3, seed=7))
    log_p = net.log_prob(all_binary_vectors(10))
    entropy = -np.sum(np.exp(log_p) * log_p)
    rows = net.sample(20_000, np.random.default_rng(0))
    nll, stderr = mean_nll_with_stderr(net.log_prob(rows))
    assert abs(nll - entropy) < 4 * stderr
    # Each variable's frequency matches its exact marginal.
    marginals = np.exp(log_p) @ all_binary_vectors(10)
    assert np.allclose(rows.mean(axis=0), marginals, atol=0.02)


@pytest.mark.parametrize("name", ["synthetic-bn-20", "synthetic-bn-100", "synthetic-bn-500"])
def test_bayes_net_datasets_are_registered_deterministic_and_scored(name: str) -> None:
    first, second = load_dataset(name), load_dataset(name)
    assert np.array_equal(first.train, second.train) and first.true_test_nll == second.true_test_nll
    truth = true_distribution(name).log_prob(first.test)
    assert first.true_test_nll == pytest.approx(-truth.mean(), abs=1e-9)
    # Real structure: well below the entropy of independent bits with the same marginals.
    marginal = first.train.mean(axis=0).clip(1e-6, 1 - 1e-6)
    independent = -(first.test * np.log(marginal) + (1 - first.test) * np.log1p(-marginal)).sum(axis=1).mean()
    assert first.true_test_nll < 0.9 * independent


# ----------------------------------------------------------------------------------
# a dataset file of one's own
# ----------------------------------------------------------------------------------


def own_arrays(rows: tuple[int, int, int] = (30, 10, 12), dim: int = 6) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {
        f"{split}_data": (rng.random((n, dim)) < 0.4).astype(np.float32) for split, n in zip(("train", "valid", "test"), rows)
    }


def test_an_own_npz_file_loads_by_path_with_its_own_sizes(tmp_path: Path) -> None:
    arrays = own_arrays()
    path = write_npz(tmp_path / "my_votes.npz", **arrays)
    splits = load_dataset(str(path))
    assert splits.name == "my_votes" and splits.input_dim == 6
    assert [len(splits.train), len(splits.valid), len(splits.test)] == [30, 10, 12]
    np.testing.assert_array_equal(splits.test, arrays["test_data"])
    assert splits.true_test_nll is None and str(path) in splits.description


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: a.update(valid_data=np.zeros((4, 7), np.float32)), "valid_data has 7 columns; expected 6"),
        (lambda a: a.update(test_data=np.zeros(5, np.float32)), "test_data has shape (5,); expected a 2-D array"),
        (lambda a: a.update(train_data=a["train_data"] * 3), "train_data has non-binary values"),
        (lambda a: a.update(valid_data=np.zeros((0, 6), np.float32)), "valid_data has no rows"),
        (lambda a: a.pop("test_data"), "missing key(s) test_data"),
    ],
)
def test_a_bad_own_npz_file_is_refused_naming_the_problem(tmp_path: Path, change, message: str) -> None:
    arrays = own_arrays()
    change(arrays)
    path = write_npz(tmp_path / "mine.npz", **arrays)
    with pytest.raises(DatasetError) as raised:
        load_dataset(str(path))
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_a_missing_own_npz_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "nowhere.npz"))
