"""Samples of the best model beside their nearest training examples (paper's Figure 3).

The model-free parts -- ``nearest_neighbours`` and ``render_samples_figure`` -- work on
0/1 numpy arrays of shape (N, D). ``samples_figure`` loads the best model with
``made_core.load_model`` and the training data with ``made_core.data.load_dataset``, both
imported lazily: when either is unavailable it logs a warning and returns None.

Distances are Hamming distances between binary rows, computed with one matrix product:
``|a - b|_1 = |a| + |b| - 2 a·b`` for 0/1 vectors.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from results.figures import plt, save_figure

logger = logging.getLogger("results")

# Datasets whose rows are images, and their (height, width); rows are row-major pixels.
IMAGE_SHAPES: dict[str, tuple[int, int]] = {"mnist": (28, 28)}
GRID_SIDE = 10  # a 10 x 10 grid of samples
SAMPLES_SEED = 1234  # fixed so the figure only changes when the model does
_CHUNK_ROWS = 8192  # training rows per matrix product, bounds memory on big training sets


def nearest_neighbours(samples: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each sample row, the index of the training row at the smallest Hamming distance.

    Returns (indices, distances), both of shape (len(samples),); ties go to the lowest index.
    """
    samples = np.asarray(samples, dtype=np.float32)
    train = np.asarray(train, dtype=np.float32)
    if samples.ndim != 2 or train.ndim != 2 or samples.shape[1] != train.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) arrays, got {samples.shape} and {train.shape}")
    if len(train) == 0:
        raise ValueError("no training rows to compare with")
    sample_ones = samples.sum(axis=1)
    best_index = np.zeros(len(samples), dtype=np.int64)
    best_distance = np.full(len(samples), np.inf)
    for start in range(0, len(train), _CHUNK_ROWS):
        chunk = train[start : start + _CHUNK_ROWS]
        distance = sample_ones[:, None] + chunk.sum(axis=1)[None, :] - 2.0 * (samples @ chunk.T)
        local = distance.argmin(axis=1)
        local_distance = distance[np.arange(len(samples)), local]
        better = local_distance < best_distance  # strict: earlier chunks win ties
        best_index[better] = local[better] + start
        best_distance[better] = local_distance[better]
    return best_index, np.rint(best_distance).astype(np.int64)


def image_grid(rows: np.ndarray, image_shape: tuple[int, int], side: int = GRID_SIDE, pad: int = 1) -> np.ndarray:
    """Tile up to side*side rows as images into one 2-D array (padding = 0.5 grey)."""
    height, width = image_shape
    grid = np.full((side * (height + pad) + pad, side * (width + pad) + pad), 0.5, dtype=np.float32)
    for k, row in enumerate(np.asarray(rows)[: side * side]):
        r, c = divmod(k, side)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[top : top + height, left : left + width] = np.asarray(row, dtype=np.float32).reshape(height, width)
    return grid


def render_samples_figure(
    samples: np.ndarray,
    neighbours: np.ndarray,
    image_shape: tuple[int, int],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """Two grids side by side: model samples, and each one's nearest training example."""
    side = max(1, min(GRID_SIDE, math.ceil(math.sqrt(len(samples)))))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 5.4))
    for axes, rows, label in ((left, samples, "samples"), (right, neighbours, "nearest training example")):
        axes.imshow(image_grid(rows, image_shape, side), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        axes.set_title(label)
        axes.axis("off")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def samples_figure(dataset: str, checkpoint_dir: Path, path: Path, *, title: str = "") -> Path | None:
    """Draw samples from the model in ``checkpoint_dir`` and render them; None if impossible."""
    image_shape = IMAGE_SHAPES.get(dataset)
    if image_shape is None:
        return None
    try:
        import torch

        from made_core.data import load_dataset
        from made_core.model import load_model

        model = load_model(Path(checkpoint_dir))
        model.eval()
        generator = torch.Generator(device=model.device)
        generator.manual_seed(SAMPLES_SEED)
        drawn = model.sample(GRID_SIDE * GRID_SIDE, mask_index=0, generator=generator)
        samples = drawn.detach().cpu().numpy().astype(np.float32)
        splits = load_dataset(dataset, download=False)  # never download in an aggregation
        train = np.asarray(splits.train, dtype=np.float32)
    except Exception as error:  # a missing file or a damaged model must not stop the tables
        logger.warning("no samples figure for %s (model %s): %s: %s", dataset, checkpoint_dir, type(error).__name__, error)
        return None
    if samples.shape[1] != image_shape[0] * image_shape[1] or train.shape[1] != samples.shape[1]:
        logger.warning("no samples figure for %s: rows of %d values are not %s images", dataset, samples.shape[1], image_shape)
        return None
    indices, _ = nearest_neighbours(samples, train)
    return render_samples_figure(samples, train[indices], image_shape, path, title=title)
