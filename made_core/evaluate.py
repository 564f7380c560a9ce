"""Negative log-likelihood of a data set under a MADE, with its standard error."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from made_core.blocked import blocked_evaluation_pays, blocked_network
from made_core.model import MADE, ensemble_log_prob


@dataclass(frozen=True)
class NLL:
    """Mean negative log-likelihood in nats per example, and the standard error of that mean."""

    mean: float
    stderr: float
    examples: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.stderr:.2f} nats"


def as_tensor(data: np.ndarray | torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """(N, D) rows as a tensor on ``device``; numpy arrays are not copied on the CPU.

    Read-only arrays (Ray's object store hands those out) are shared, not copied: data
    tensors are only ever read, so torch's warning about non-writable memory does not apply.
    """
    if isinstance(data, np.ndarray):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            data = torch.from_numpy(np.ascontiguousarray(data))
    return data.to(device=device, dtype=dtype)


@torch.no_grad()
def mask_log_probs(model: MADE, data: np.ndarray | torch.Tensor, n_masks: int = 1, batch_size: int = 1000) -> torch.Tensor:
    """(K, N) log p_k(x) per mask k < ``n_masks`` and row (nats), in the model's dtype and device.

    Masks are the outer loop: each mask's masked weights are computed once and reused for
    every batch, instead of once per (batch, mask). Where it pays (``blocked_evaluation_pays``)
    each mask's network skips the zero blocks of its masked weights (``made_core.blocked``).
    """
    was_training = model.training
    model.eval()
    weight = model.output_layer.weight
    rows = as_tensor(data, weight.device, weight.dtype)
    mask_indices = model.ensemble_indices(n_masks)
    per_mask = torch.empty(len(mask_indices), len(rows), device=weight.device, dtype=weight.dtype)
    columns = rows.t().contiguous() if blocked_evaluation_pays(model, len(rows)) else None  # (D, N), once for all masks
    for row, mask_index in enumerate(mask_indices):
        weights = model.masked_weights(mask_index)
        if columns is None:
            for start in range(0, len(rows), batch_size):
                per_mask[row, start : start + batch_size] = model.log_prob_with(rows[start : start + batch_size], weights)
        else:
            network = blocked_network(model, mask_index, weights)
            for start in range(0, len(rows), batch_size):
                per_mask[row, start : start + batch_size] = network.log_prob_of_columns(columns[:, start : start + batch_size])
    model.train(was_training)
    return per_mask


def _ensembled(per_mask: torch.Tensor) -> torch.Tensor:
    """(N,) float64 CPU ensemble log-probabilities from (K, N) per-mask ones."""
    return ensemble_log_prob(per_mask).double().cpu()


def example_log_probs(model: MADE, data: np.ndarray | torch.Tensor, n_masks: int = 1, batch_size: int = 1000) -> torch.Tensor:
    """(N,) float64 log p(x) per row (nats), the ensemble over ``n_masks`` masks."""
    return _ensembled(mask_log_probs(model, data, n_masks, batch_size))


def nll_of(log_probs: torch.Tensor) -> NLL:
    """The mean NLL and its standard error from (N,) per-row log-probabilities."""
    count = log_probs.numel()
    if count == 0:
        raise ValueError("cannot evaluate an NLL on an empty data set")
    stderr = float(log_probs.std(unbiased=True)) / math.sqrt(count) if count > 1 else float("nan")
    return NLL(mean=float(-log_probs.mean()), stderr=stderr, examples=count)


def evaluate_nll(model: MADE, data: np.ndarray | torch.Tensor, n_masks: int = 1, batch_size: int = 1000) -> NLL:
    """Average NLL over the rows of ``data`` with the probability-space ensemble of ``n_masks`` masks."""
    return nll_of(example_log_probs(model, data, n_masks, batch_size))


def ensemble_log_probs(
    model: MADE, data: np.ndarray | torch.Tensor, sizes: Sequence[int], batch_size: int = 1000
) -> dict[int, torch.Tensor]:
    """(N,) float64 log p(x) per row for every ensemble size in ``sizes`` (masks 0..K-1 each), from
    one pass over max(sizes) masks."""
    if not sizes:
        raise ValueError("an ensemble evaluation needs at least one ensemble size")
    per_mask = mask_log_probs(model, data, max(sizes), batch_size)
    return {size: _ensembled(per_mask[:size]) for size in sorted(set(sizes))}


def ensemble_nlls(model: MADE, data: np.ndarray | torch.Tensor, sizes: Sequence[int], batch_size: int = 1000) -> dict[int, NLL]:
    """The NLL of every ensemble size in ``sizes`` (``ensemble_log_probs``)."""
    return {size: nll_of(log_probs) for size, log_probs in ensemble_log_probs(model, data, sizes, batch_size).items()}
