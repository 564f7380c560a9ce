"""One training run's configuration: ``TrainConfig``, its validation, and the device it runs on.

The hyperparameter fields take their defaults, domains and checks from
``made_core.hyperparameters``; the run settings (epochs, patience, seed, device, ...) are
declared here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from made_core.hyperparameters import DEFAULTS, PARAMETERS, capped_ensemble_size, ensemble_size_allowed, hidden_sizes_problem
from made_core.precision import DEFAULT_PRECISION, precision_problem

# Validation runs every epoch, so it uses fewer masks than the test (see choose_test_masks).
DEFAULT_VALID_MASKS = 8


# TrainConfig's fields that are hyperparameters of the vocabulary (hidden_sizes stands for
# hidden_layers x hidden_units); their defaults, domains and help live there.
HYPERPARAMETER_FIELDS = ("num_masks", "ordering", "direct_connection", "activation", "optimizer",
                          "learning_rate", "momentum", "weight_decay", "batch_size")  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run. Field names match the search spaces'
    hyperparameters, except ``hidden_sizes`` (spaces give ``hidden_layers`` x ``hidden_units``).
    Their defaults are ``made_core.hyperparameters.DEFAULTS``.
    """

    hidden_sizes: tuple[int, ...] = (DEFAULTS["hidden_units"],) * DEFAULTS["hidden_layers"]
    num_masks: int = DEFAULTS["num_masks"]
    ordering: str = DEFAULTS["ordering"]
    direct_connection: bool = DEFAULTS["direct_connection"]
    activation: str = DEFAULTS["activation"]
    optimizer: str = DEFAULTS["optimizer"]
    learning_rate: float = DEFAULTS["learning_rate"]
    momentum: float = DEFAULTS["momentum"]
    weight_decay: float = DEFAULTS["weight_decay"]
    batch_size: int = DEFAULTS["batch_size"]
    grad_clip: float | None = None  # max gradient norm; None: no clipping
    max_epochs: int = 200
    patience: int = 30  # epochs without a better validation NLL before stopping (the paper's 30)
    valid_masks: int | None = None  # validation ensemble; None: DEFAULT_VALID_MASKS, capped at num_masks
    # The ensemble size whose NLL validation estimates, extrapolated from the validation
    # ensemble's (made_core.ensembles.extrapolated_nll); None: the validation ensemble's own.
    valid_target_masks: int | None = None
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = DEFAULT_PRECISION  # training steps on CUDA: made_core.precision.PRECISIONS
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        problems = []
        if problem := hidden_sizes_problem(self.hidden_sizes):
            problems.append(problem)
        for name in HYPERPARAMETER_FIELDS:
            problem = PARAMETERS[name].problem_for_setting(getattr(self, name))
            if problem:
                problems.append(problem)
        for name in ("max_epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problem := precision_problem(self.precision):
            problems.append(problem)
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.valid_masks is not None and not ensemble_size_allowed(self.valid_masks, self.num_masks):
            limit = f"exceeds num_masks={self.num_masks}" if self.valid_masks >= 1 else "must be >= 1"
            problems.append(f"valid_masks={self.valid_masks} {limit}")
        if self.valid_target_masks is not None and not ensemble_size_allowed(self.valid_target_masks, self.num_masks):
            problems.append(f"valid_target_masks={self.valid_target_masks} is not an ensemble size of num_masks={self.num_masks}")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    @property
    def validation_masks(self) -> int:
        if self.valid_masks is not None:
            return self.valid_masks
        return capped_ensemble_size(DEFAULT_VALID_MASKS, self.num_masks)

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, Any], **settings: Any) -> TrainConfig:
        """Build from a search-space config (``hidden_layers``, ``hidden_units``, ...) plus run settings.

        Keys that are not training fields raise, so a misspelt hyperparameter is never ignored.
        """
        values = dict(hyperparameters)
        if "hidden_layers" in values or "hidden_units" in values:
            layers = int(values.pop("hidden_layers", DEFAULTS["hidden_layers"]))
            units = int(values.pop("hidden_units", DEFAULTS["hidden_units"]))
            values["hidden_sizes"] = (units,) * layers
        values.update(settings)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)


def resolve_device(requested: str) -> torch.device:
    """ "auto" picks CUDA when available; a CUDA request without CUDA falls back to the CPU with a warning."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device {requested!r} requested but CUDA is not available; training on the CPU", stacklevel=2)
        return torch.device("cpu")
    return device
