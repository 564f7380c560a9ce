"""One training run's configuration: ``TrainConfig``, its validation, and the device it runs on.

The hyperparameter fields take their defaults, domains and checks from
``made_core.hyperparameters``; the run settings (epochs, patience, seed, device, ...) are
declared here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from made_core.hyperparameters import DEFAULTS, PARAMETERS, capped_ensemble_size, ensemble_size_allowed, hidden_sizes_problem
from made_core.precision import DEFAULT_PRECISION, precision_problem

# Validation runs often, so it uses fewer masks than the test (see choose_test_masks).
DEFAULT_VALID_MASKS = 8
# A validation may cost at most this share of the training work since the previous one
# (see TrainConfig.validation_interval).
VALIDATION_COST_SHARE = 1 / 3
# Early stopping sees at least this many validations within its patience.
VALIDATIONS_PER_PATIENCE = 4


# TrainConfig's fields that are hyperparameters of the vocabulary (hidden_sizes stands for
# hidden_layers x hidden_units); their defaults, domains and help live there.
HYPERPARAMETER_FIELDS = ("num_masks", "ordering", "direct_connection", "activation", "optimizer",
                          "learning_rate", "momentum", "weight_decay", "lr_decay", "batch_size")  # fmt: skip


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
    lr_decay: float = DEFAULTS["lr_decay"]
    batch_size: int = DEFAULTS["batch_size"]
    grad_clip: float | None = None  # max gradient norm; None: no clipping
    max_epochs: int = 200
    patience: int = 30  # epochs without a better validation NLL before stopping (the paper's 30)
    # Epochs between validations; None: as few as keep validation cheap (validation_interval).
    validate_every: int | None = None
    validate_at: tuple[int, ...] = ()  # epochs always validated (a sweep's ASHA rungs), besides the last
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
        object.__setattr__(self, "validate_at", tuple(sorted({int(e) for e in self.validate_at})))
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
        if self.validate_every is not None and self.validate_every < 1:
            problems.append(f"validate_every must be >= 1, got {self.validate_every}")
        if any(epoch < 1 for epoch in self.validate_at):
            problems.append(f"validate_at epochs must be >= 1, got {list(self.validate_at)}")
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
    def lr_plateau_epochs(self) -> int:
        """Epochs without a better validation NLL before the lr decays (``lr_decay``): a third of the patience."""
        return max(1, self.patience // 3)

    @property
    def validation_masks(self) -> int:
        if self.valid_masks is not None:
            return self.valid_masks
        return capped_ensemble_size(DEFAULT_VALID_MASKS, self.num_masks)

    def validation_interval(self, train_rows: int, valid_rows: int) -> int:
        """Epochs between validations: ``validate_every``, else the fewest that keep a validation's
        work within VALIDATION_COST_SHARE of the training work between two validations, and at most
        patience / VALIDATIONS_PER_PATIENCE.

        Work is counted in forward passes of one row: an epoch is about 3 per training row
        (forward and backward), a validation one per validation row and mask. So the interval is
        ceil(valid_rows x masks / train_rows): 1 for a single mask on a large training set, 4 for
        8 masks on dna (600 validation rows, 1,400 training rows), the cap for 8 masks on 500
        training rows and 2,000 validation rows, where validating every epoch took 91% of the time.
        """
        if self.validate_every is not None:
            return self.validate_every
        needed = math.ceil(valid_rows * self.validation_masks / (3 * VALIDATION_COST_SHARE * max(train_rows, 1)))
        return max(1, min(needed, self.patience // VALIDATIONS_PER_PATIENCE))

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
