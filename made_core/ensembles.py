"""The test-time ensemble: how many masks the reported NLL averages, chosen on validation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from made_core.evaluate import NLL, ensemble_nlls
from made_core.hyperparameters import MASK_SAMPLING, ensemble_size_allowed
from made_core.model import MADE

# A mask-sampling model can be averaged over any number of masks, and more masks cost only
# evaluation time; its test ensemble is the size among these with the lowest validation NLL
# (on dna: validation 80.04 / 79.67 / 79.38 / 79.15 with 32 / 64 / 128 / 256 masks).
SAMPLING_TEST_MASK_CHOICES: tuple[int, ...] = (32, 64, 128, 256)


def check_test_masks(requested: int | None, num_masks: int, name: str = "test masks") -> None:
    """Raise ValueError unless ``requested`` (None: the default) is a possible test ensemble size."""
    if requested is not None and not ensemble_size_allowed(requested, num_masks):
        raise ValueError(f"{name} must be between 1 and num_masks ({num_masks}), got {requested}")


def describe_test_mask_choice(valid_by_size: Mapping[Any, float]) -> str:
    """'32 masks 80.038, 64 masks 79.672, ...': the validation NLL of each candidate ensemble size."""
    return ", ".join(f"{size} masks {nll:.3f}" for size, nll in valid_by_size.items())


@dataclass(frozen=True)
class TestEnsemble:
    """The test-time ensemble size, chosen on the validation set, and the validation NLLs behind it."""

    masks: int
    valid: NLL  # the validation NLL with ``masks`` masks
    valid_by_size: dict[int, float]  # every ensemble size evaluated on validation -> its NLL


def choose_test_masks(
    model: MADE, valid_rows: np.ndarray | torch.Tensor, requested: int | None = None, batch_size: int = 1000
) -> TestEnsemble:
    """The test ensemble of ``model``: ``requested`` masks when given, else all K masks of a
    cycled model, else (mask sampling) the size in ``SAMPLING_TEST_MASK_CHOICES`` with the
    lowest validation NLL (ties: the smaller). Never looks at test data."""
    num_masks = model.num_masks
    check_test_masks(requested, num_masks)
    if requested is not None:
        sizes: tuple[int, ...] = (requested,)
    else:
        sizes = SAMPLING_TEST_MASK_CHOICES if num_masks == MASK_SAMPLING else (num_masks,)
    by_size = ensemble_nlls(model, valid_rows, sizes, batch_size)
    masks = min(by_size, key=lambda size: (by_size[size].mean if math.isfinite(by_size[size].mean) else math.inf, size))
    return TestEnsemble(masks, by_size[masks], {size: nll.mean for size, nll in by_size.items()})
