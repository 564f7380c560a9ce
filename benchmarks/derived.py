"""Datasets derived from the MNIST stand-in for the search benchmark (not in the public registry).

Each is a deterministic function of ``binarized_mnist.npz`` (first rows of each split, no
randomness), written once as an ``.npz`` file in the benchmark's work folder and handed to
the sweep as ``--dataset PATH``:

- ``mnist-pooled``: 14x14 images, each pixel the OR of a 2x2 block (196 dims), 10,000
  training rows: a mid-sized, strongly structured set;
- ``mnist-500``: the full 784 dims with only 500 training rows: many dimensions, few rows,
  where mask ensembles should pay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from made_core.data import Splits, load_dataset
from made_core.files import atomic_write


@dataclass(frozen=True)
class DerivedSet:
    """How one derived set is cut from MNIST: rows kept per split and a per-row transform."""

    name: str
    rows: tuple[int, int, int]  # first rows of train / valid / test kept
    transform: Callable[[np.ndarray], np.ndarray]  # (N, 784) 0/1 -> (N, D) 0/1
    description: str


def pool_2x2(rows: np.ndarray) -> np.ndarray:
    """(N, 784) 28x28 binary images -> (N, 196) 14x14: each pixel is the OR (max) of a 2x2 block."""
    images = rows.reshape(-1, 14, 2, 14, 2)
    return images.max(axis=(2, 4)).reshape(-1, 196)


def identity(rows: np.ndarray) -> np.ndarray:
    return rows


DERIVED_SETS: dict[str, DerivedSet] = {
    "mnist-pooled": DerivedSet(
        "mnist-pooled", (10_000, 2_000, 5_000), pool_2x2, "MNIST stand-in pooled to 14x14 (2x2 OR), 196 dims"
    ),
    "mnist-500": DerivedSet("mnist-500", (500, 2_000, 2_000), identity, "MNIST stand-in, 784 dims, 500 training rows"),
}


def derive(spec: DerivedSet, mnist: Splits) -> dict[str, np.ndarray]:
    """The three splits of ``spec`` as float32 0/1 arrays (keys train_data, valid_data, test_data)."""
    splits = (mnist.train, mnist.valid, mnist.test)
    return {
        f"{name}_data": np.ascontiguousarray(spec.transform(rows[:count]), dtype=np.float32)
        for name, rows, count in zip(("train", "valid", "test"), splits, spec.rows, strict=True)
    }


def derived_file(name: str, folder: Path, data_dir: str | Path | None = None) -> Path:
    """``folder/<name>.npz``, written (atomically) from the MNIST stand-in unless already there."""
    spec = DERIVED_SETS[name]
    path = folder / f"{name}.npz"
    if not path.exists():
        arrays = derive(spec, load_dataset("mnist", data_dir=data_dir, download=False, progress=False))
        folder.mkdir(parents=True, exist_ok=True)

        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:  # a file object: savez would append ".npz" to a name
                np.savez_compressed(handle, train_data=arrays["train_data"], valid_data=arrays["valid_data"],
                                    test_data=arrays["test_data"])  # fmt: skip

        atomic_write(path, write)
    return path
