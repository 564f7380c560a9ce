"""Figures of one experiment or one dataset (matplotlib, Agg backend, PNG).

- ``<experiment>_curves.png``: validation NLL against epoch for every trial (curves.csv),
  the best trial highlighted, the paper's MADE (fixed masks) as a dashed line and its MADE
  mask sampling as a dash-dotted line when known.
- ``<experiment>_best_so_far.png``: each trial's best validation NLL in trial order and the
  running minimum, in the order the search created the trials (trials.csv's
  ``trial_number``; Ray's trial ids are random).
- ``<dataset>_nll_vs_masks.png``: validation (and, where evaluated, test) NLL against the
  number of training masks, one line per ordering; the analogue of the paper's Figure 2.
  "Mask sampling" (num_masks = 0, a fresh mask every minibatch) is drawn right of the
  largest mask count.

Every figure is written atomically (``made_core.files.atomic_write``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from made_core.files import atomic_write  # noqa: E402

PAPER_STYLE: dict[str, Any] = {"color": "black", "linestyle": "--", "linewidth": 1.0}
PAPER_MASK_SAMPLING_STYLE: dict[str, Any] = {"color": "dimgray", "linestyle": "-.", "linewidth": 1.0}
TRUE_STYLE: dict[str, Any] = {"color": "tab:green", "linestyle": ":", "linewidth": 1.2}


def save_figure(figure: plt.Figure, path: Path) -> Path:
    """Save ``figure`` as PNG at ``path`` atomically and close it."""
    try:
        return atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(figure)


def _reference_lines(
    axes: plt.Axes, paper_nll: float | None, true_nll: float | None, mask_sampling_nll: float | None = None
) -> None:
    if paper_nll is not None and math.isfinite(paper_nll):
        axes.axhline(paper_nll, label=f"paper MADE ({paper_nll:.2f})", **PAPER_STYLE)
    if mask_sampling_nll is not None and math.isfinite(mask_sampling_nll):
        axes.axhline(mask_sampling_nll, label=f"paper MADE mask sampling ({mask_sampling_nll:.2f})", **PAPER_MASK_SAMPLING_STYLE)
    if true_nll is not None and math.isfinite(true_nll):
        axes.axhline(true_nll, label=f"true distribution ({true_nll:.2f})", **TRUE_STYLE)


def _robust_ylim(axes: plt.Axes, values: np.ndarray, references: list[float | None]) -> None:
    """Zoom on the interesting range: first epochs' NLLs can dwarf the final differences."""
    finite = values[np.isfinite(values)]
    refs = [r for r in references if r is not None and math.isfinite(r)]
    if finite.size == 0:
        return
    low = min([float(finite.min()), *refs])
    high = max([float(np.percentile(finite, 90)), *refs])
    if high <= low:
        high = float(finite.max())
    if high > low:
        margin = 0.05 * (high - low)
        axes.set_ylim(low - margin, high + margin)


def plot_curves(
    curves: pd.DataFrame,
    path: Path,
    *,
    title: str,
    best_trial_id: str | None,
    paper_nll: float | None = None,
    true_nll: float | None = None,
    paper_mask_sampling_nll: float | None = None,
) -> Path:
    """Validation NLL against epoch, one line per trial, the best trial highlighted."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for trial_id, trial in curves.groupby("trial_id", sort=True):
        trial = trial.sort_values("epoch")
        if str(trial_id) == best_trial_id:
            continue
        axes.plot(trial["epoch"], trial["valid_nll"], color="tab:gray", alpha=0.35, linewidth=0.8)
    if best_trial_id is not None:
        best = curves[curves["trial_id"].astype(str) == best_trial_id].sort_values("epoch")
        if not best.empty:
            axes.plot(best["epoch"], best["valid_nll"], color="tab:red", linewidth=2.0, label=f"best trial {best_trial_id}")
    references = (paper_nll, true_nll, paper_mask_sampling_nll)
    title = f"{title}: {curves['trial_id'].nunique()} trials"
    return _finish_validation_figure(figure, axes, path, curves["valid_nll"].to_numpy(dtype=float), references, "epoch", title)


def plot_best_so_far(
    trials: pd.DataFrame,
    path: Path,
    *,
    title: str,
    paper_nll: float | None = None,
    true_nll: float | None = None,
    paper_mask_sampling_nll: float | None = None,
) -> Path:
    """Each trial's best validation NLL in the order the search created the trials, with the running minimum."""
    ordered = trials.sort_values("trial_number", kind="stable")
    values = pd.to_numeric(ordered["best_valid_nll"], errors="coerce").to_numpy(dtype=float)
    number = np.arange(1, len(values) + 1)
    running = np.fmin.accumulate(np.where(np.isfinite(values), values, np.inf)) if len(values) else values
    running = np.where(np.isfinite(running), running, np.nan)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter(number, values, s=14, color="tab:gray", alpha=0.6, label="trial's best valid NLL")
    axes.step(number, running, where="post", color="tab:blue", linewidth=2.0, label="best so far")
    references = (paper_nll, true_nll, paper_mask_sampling_nll)
    return _finish_validation_figure(figure, axes, path, values, references, "trial number", title)


def _finish_validation_figure(
    figure: Any, axes: Any, path: Path, values: np.ndarray, references: tuple[float | None, ...], xlabel: str, title: str
) -> Path:
    """What every validation-NLL figure shares: reference lines, y range, labels, legend, grid, atomic save."""
    _reference_lines(axes, *references)
    _robust_ylim(axes, values, list(references))
    axes.set_xlabel(xlabel)
    axes.set_ylabel("validation NLL (nats)")
    axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper right", fontsize="small")
    axes.grid(alpha=0.3)
    return save_figure(figure, path)


def plot_nll_vs_masks(
    by_masks: pd.DataFrame,
    path: Path,
    *,
    title: str,
    paper_nll: float | None = None,
    paper_mask_sampling_nll: float | None = None,
) -> Path:
    """Valid (lines) and test (hollow markers) NLL against mask count, per ordering."""
    masks = sorted({int(m) for m in by_masks["num_masks"].dropna()})
    fixed = [m for m in masks if m > 0]
    positions = {m: i for i, m in enumerate(fixed)}
    if 0 in masks:
        positions[0] = len(fixed)  # mask sampling: "infinitely many" masks, drawn last
    labels = [str(m) for m in fixed] + (["sampling"] if 0 in masks else [])

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, (ordering, group) in enumerate(by_masks.groupby("ordering", sort=True)):
        group = group.assign(x=[positions[int(m)] for m in group["num_masks"]]).sort_values("x")
        color = f"C{index % 10}"
        axes.plot(group["x"], group["valid_nll"], marker="o", color=color, label=f"{ordering} (valid)")
        test = pd.to_numeric(group["test_nll"], errors="coerce")
        if test.notna().any():
            axes.scatter(
                group["x"][test.notna()],
                test[test.notna()],
                marker="s",
                facecolors="none",
                edgecolors=color,
                s=50,
                label=f"{ordering} (test)",
            )
    _reference_lines(axes, paper_nll, None, paper_mask_sampling_nll)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_xlabel("masks used in training")
    axes.set_ylabel("NLL (nats)")
    axes.set_title(title)
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return save_figure(figure, path)
