"""Training one MADE: minibatches, one mask per minibatch, validation, early stopping, checkpoints.

``Trainer.epochs()`` yields an ``EpochResult`` after every validated epoch, so a caller (the
command line in ``made_core.train_cli``, or a Ray Tune trainable) reports and checkpoints without writing
its own loop. Validation runs every ``TrainConfig.validation_interval`` epochs (every epoch
unless a validation would cost more than a third of the training between two), at the
``validate_at`` epochs and at the last one; early stopping counts epochs, not validations. A checkpoint holds everything needed to continue bit for bit: weights,
optimiser, the shuffling generator, the step counter and the early-stopping state.

Run ``python -m made_core.train --dataset dna`` to train one model.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from made_core.allocator import keep_freed_memory
from made_core.config import TrainConfig, resolve_device
from made_core.ensembles import ensemble_size_curve, extrapolated_nll
from made_core.evaluate import NLL, as_tensor, evaluate_nll, mask_log_probs, nll_of
from made_core.files import atomic_write, load_torch_file
from made_core.fused_adam import MaskedAdam, masked_adam_applies
from made_core.model import MADE, ensemble_log_prob
from made_core.precision import effective_precision
from made_core.steps import make_training_step

CHECKPOINT_FILE = "trainer.pt"
_CHECKPOINT_KEYS = ("config", "model", "model_config", "optimizer", "shuffle_generator", "progress", "best_state")


def fused_kernel_supported(optimizer: str, device: torch.device) -> bool:
    """Whether torch has a fused kernel for ``optimizer`` on ``device``: Adam on CUDA, and Adam
    and Adagrad on the CPU (torch 2.4 and later).

    A fused optimizer updates a parameter in one pass instead of about ten. On the CPU it also
    avoids a slow path of the per-tensor kernels: torch's CPU sqrt is several times slower on
    exact zeros, and a MADE's masked weights get exactly zero gradients, so Adam's ``exp_avg_sq``
    and Adagrad's ``sum`` are full of zeros (Adam: see ``python -m benchmarks.throughput``; Adagrad's
    fused step on a 784 x 500 masked layer took 0.35 ms against 2.7 ms, one thread). Results
    differ from the per-tensor kernels by rounding only.
    """
    if device.type == "cuda":
        return optimizer == "adam"
    return device.type == "cpu" and optimizer in {"adam", "adagrad"} and torch.__version__ >= (2, 4)  # type: ignore[operator]


@dataclass(frozen=True)
class EpochResult:
    """What training up to a validated epoch produced. NLLs are nats per example; validation uses
    the mask ensemble. ``train_nll`` is the mean over the epochs since the previous result,
    ``epoch_seconds`` their time with the validation's, and ``examples_per_second`` training
    rows over that time.

    ``status``: "running", or why training ended after this epoch: "finished" (max_epochs),
    "early_stopped" (patience ran out) or "diverged" (a non-finite loss; NLLs are then inf).
    """

    epoch: int
    train_nll: float
    valid_nll: float
    best_valid_nll: float
    best_epoch: int
    is_best: bool
    epoch_seconds: float
    examples_per_second: float
    status: str

    @property
    def done(self) -> bool:
        return self.status != "running"


@dataclass
class _Progress:
    """Mutable training state that a checkpoint must carry besides weights and optimiser."""

    epoch: int = 0
    step: int = 0
    best_valid_nll: float = math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0
    last_lr_decay_epoch: int = 0  # the epoch of the last learning-rate decay (0: none yet)
    status: str = "running"
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains a MADE on (N, D) 0/1 rows. Data lives on the training device for the whole run."""

    def __init__(self, config: TrainConfig, train_data: np.ndarray | torch.Tensor, valid_data: np.ndarray | torch.Tensor) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        keep_freed_memory()  # per-step masked weights otherwise page-fault afresh every step
        torch.manual_seed(config.seed)  # weight initialisation is part of the seeded run
        input_dim = int(train_data.shape[1])
        if valid_data.shape[1] != input_dim:
            raise ValueError(f"train rows have {input_dim} columns but valid rows have {valid_data.shape[1]}")
        self.model = MADE(
            input_dim,
            config.hidden_sizes,
            config.num_masks,
            config.ordering,
            config.direct_connection,
            config.activation,
            config.seed,
        ).to(self.device)
        self.train_rows = as_tensor(train_data, self.device, torch.float32)
        self.valid_rows = as_tensor(valid_data, self.device, torch.float32)
        self.optimizer = self._make_optimizer()
        self.validation_interval = config.validation_interval(len(self.train_rows), len(self.valid_rows))
        self.precision = effective_precision(config.precision, self.device)
        steps_per_epoch = math.ceil(len(self.train_rows) / config.batch_size)
        self.train_step = make_training_step(
            self.model, self.optimizer, config.grad_clip, self.precision, steps_per_epoch * self.validation_interval
        )
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.progress = _Progress()
        self.best_state: dict[str, torch.Tensor] | None = None

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c, parameters = self.config, self.model.parameters()
        fused = fused_kernel_supported(c.optimizer, self.device) or None  # None: torch's default kernel
        if c.optimizer == "adam" and masked_adam_applies(self.model, self.device, c.grad_clip):
            return MaskedAdam(self.model, lr=c.learning_rate, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=c.learning_rate, weight_decay=c.weight_decay, fused=fused)
        if c.optimizer == "adagrad":
            return torch.optim.Adagrad(parameters, lr=c.learning_rate, weight_decay=c.weight_decay, fused=fused)
        if c.optimizer == "adadelta":
            return torch.optim.Adadelta(parameters, lr=c.learning_rate, weight_decay=c.weight_decay)
        return torch.optim.SGD(parameters, lr=c.learning_rate, momentum=c.momentum, weight_decay=c.weight_decay)

    # -- the loop ---------------------------------------------------------------------
    def epochs(self) -> Iterator[EpochResult]:
        """Train until max_epochs, early stopping or divergence; a result per validated epoch."""
        while self.progress.status == "running":
            yield self.run_to_validation()

    def next_validation_epoch(self) -> int:
        """The epoch after which training next validates (see the module docstring)."""
        epoch, c = self.progress.epoch, self.config
        candidates = [epoch + self.validation_interval, c.max_epochs, *(e for e in c.validate_at if e > epoch)]
        return min(candidates)

    def run_to_validation(self) -> EpochResult:
        """Train epoch by epoch up to ``next_validation_epoch()``, then validate."""
        if self.progress.status != "running":
            raise RuntimeError(f"training already ended ({self.progress.status})")
        start, epochs_before = time.perf_counter(), self.progress.epoch
        total_loss = 0.0
        try:
            for _ in range(epochs_before, self.next_validation_epoch()):
                total_loss += float(self.train_epoch())  # one device sync per epoch, not per step
                if not math.isfinite(total_loss):
                    break
        finally:
            self.train_step.settle()
        epochs = self.progress.epoch - epochs_before
        train_nll = total_loss / (len(self.train_rows) * epochs)
        if not math.isfinite(train_nll):
            return self._finish(start, epochs, math.inf, math.inf, "diverged")
        valid_nll = self.validation_nll()
        if not math.isfinite(valid_nll):
            return self._finish(start, epochs, train_nll, math.inf, "diverged")
        return self._finish(start, epochs, train_nll, valid_nll, None)

    def train_epoch(self) -> torch.Tensor:
        """One pass over the shuffled training rows, one mask per minibatch; returns the summed
        loss (nats, a float64 scalar on the device: no host sync)."""
        self.model.train()
        order = torch.randperm(len(self.train_rows), generator=self.shuffle_generator).to(self.device)
        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch_start in range(0, len(order), self.config.batch_size):
            batch = self.train_rows[order[batch_start : batch_start + self.config.batch_size]]
            loss = self.train_step(batch, self.progress.step)
            self.progress.step += 1
            total_loss += loss.double() * len(batch)
        self.progress.epoch += 1
        return total_loss

    def _finish(self, start: float, epochs: int, train_nll: float, valid_nll: float, status: str | None) -> EpochResult:
        p, c = self.progress, self.config
        is_best = valid_nll < p.best_valid_nll
        if is_best:
            p.best_valid_nll, p.best_epoch, p.epochs_since_best = valid_nll, p.epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            p.epochs_since_best += epochs
        if status is None:
            status = (
                "early_stopped" if p.epochs_since_best >= c.patience else "finished" if p.epoch >= c.max_epochs else "running"
            )
        if status == "running":
            self._decay_lr_on_plateau()
        p.status = status
        if status != "running":
            self.restore_best()
        seconds = time.perf_counter() - start
        result = EpochResult(
            p.epoch,
            train_nll,
            valid_nll,
            p.best_valid_nll,
            p.best_epoch,
            is_best,
            seconds,
            len(self.train_rows) * epochs / seconds,
            status,
        )
        p.history.append({"epoch": p.epoch, "train_nll": train_nll, "valid_nll": valid_nll, "epoch_seconds": seconds})
        return result

    def _decay_lr_on_plateau(self) -> None:
        """Multiply the lr by ``lr_decay`` once the validation NLL has not improved for
        ``lr_plateau_epochs`` since the best epoch or the last decay, whichever is later (a
        plateau gets up to two decays before early stopping ends it)."""
        p, c = self.progress, self.config
        if c.lr_decay < 1.0 and p.epoch - max(p.best_epoch, p.last_lr_decay_epoch) >= c.lr_plateau_epochs:
            for group in self.optimizer.param_groups:
                group["lr"] *= c.lr_decay
            p.last_lr_decay_epoch = p.epoch

    def restore_best(self) -> None:
        """Put the weights of the best validation epoch back (no-op before any finite epoch)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def validation_nll(self) -> float:
        """The validation NLL that selects epochs and stops training: the validation ensemble's,
        or extrapolated from it to ``valid_target_masks`` masks (ensemble_size_curve is free
        once the per-mask log-likelihoods are computed)."""
        masks, target = self.config.validation_masks, self.config.valid_target_masks
        per_mask = mask_log_probs(self.model, self.valid_rows, masks, self.config.eval_batch_size)
        if target is None or target == masks:
            return nll_of(ensemble_log_prob(per_mask).double().cpu()).mean
        return extrapolated_nll(ensemble_size_curve(per_mask), target)

    def evaluate(self, data: np.ndarray | torch.Tensor, n_masks: int) -> NLL:
        """NLL of ``data`` under the current weights with an ``n_masks`` ensemble. The test
        ensemble's size is chosen on validation data: see ``choose_test_masks``."""
        return evaluate_nll(self.model, data, n_masks, self.config.eval_batch_size)

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "model": self.model.state_dict(),
            "model_config": self.model.config(),
            "optimizer": self.optimizer.state_dict(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "progress": asdict(self.progress),
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.progress = _Progress(**state["progress"])
        self.best_state = state["best_state"]

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write ``trainer.pt`` into ``directory`` durably and atomically; returns its path.

        It holds tensors, plain containers and numbers only, so it loads with
        ``weights_only=True``."""
        state = self.state_dict()
        return atomic_write(Path(directory) / CHECKPOINT_FILE, lambda temporary: torch.save(state, temporary))

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | Path,
        train_data: np.ndarray | torch.Tensor,
        valid_data: np.ndarray | torch.Tensor,
        device: str | None = None,
        max_epochs: int | None = None,
    ) -> Trainer:
        """Rebuild a trainer from ``save_checkpoint``'s folder and continue where it stopped.

        ``max_epochs`` above the checkpoint's lets a run that reached its limit train on
        (from its best weights, which a finished run holds). Raises ``CheckpointError`` (one
        line naming the file) for a file that is corrupt, truncated or not safely loadable.
        """
        state = read_checkpoint(directory)
        config_values = dict(state["config"])
        if device is not None:
            config_values["device"] = device
        if max_epochs is not None:
            config_values["max_epochs"] = max_epochs
        trainer = cls(TrainConfig(**config_values), train_data, valid_data)
        trainer.load_state_dict(state)
        if trainer.progress.status == "finished" and trainer.progress.epoch < trainer.config.max_epochs:
            trainer.progress.status = "running"
        return trainer


def read_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state a ``save_checkpoint`` folder holds, loaded without arbitrary unpickling."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    return load_torch_file(path, map_location, required_keys=_CHECKPOINT_KEYS)


def load_best_model(directory: str | Path, map_location: str | torch.device = "cpu") -> MADE:
    """The best-validation weights held by a ``save_checkpoint`` folder, as a MADE (no data needed)."""
    state = read_checkpoint(directory, map_location)
    model = MADE(**state["model_config"])
    model.load_state_dict(state["best_state"] if state["best_state"] is not None else state["model"])
    return model.to(map_location)


if __name__ == "__main__":
    from made_core.train_cli import main

    sys.exit(main())
