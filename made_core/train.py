"""Training one MADE: minibatches, one mask per minibatch, validation, early stopping, checkpoints.

``Trainer.epochs()`` yields an ``EpochResult`` after every epoch, so a caller (the
command line below, or a Ray Tune trainable) reports and checkpoints without writing
its own loop. A checkpoint holds everything needed to continue bit for bit: weights,
optimiser, the shuffling generator, the step counter and the early-stopping state.

Run ``python -m made_core.train --dataset dna`` to train one model.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from made_core.allocator import keep_freed_memory
from made_core.evaluate import NLL, as_tensor, ensemble_nlls, evaluate_nll
from made_core.files import atomic_write, load_torch_file
from made_core.fused_adam import MaskedAdam, masked_adam_applies
from made_core.hyperparameters import DEFAULTS, MASK_SAMPLING, PARAMETERS, add_flags, ensemble_size_allowed
from made_core.model import MADE
from made_core.steps import make_training_step
# Validation runs every epoch, so it uses fewer masks than the test (see choose_test_masks).
DEFAULT_VALID_MASKS = 8
# A mask-sampling model can be averaged over any number of masks, and more masks cost only
# evaluation time; its test ensemble is the size among these with the lowest validation NLL
# (on dna: validation 80.04 / 79.67 / 79.38 / 79.15 with 32 / 64 / 128 / 256 masks).
SAMPLING_TEST_MASK_CHOICES: tuple[int, ...] = (32, 64, 128, 256)
CHECKPOINT_FILE = "trainer.pt"
_CHECKPOINT_KEYS = ("config", "model", "model_config", "optimizer", "shuffle_generator", "progress", "best_state")


# TrainConfig's fields that are hyperparameters of the vocabulary (hidden_sizes stands for
# hidden_layers x hidden_units); their defaults, domains and help live there.
_HYPERPARAMETER_FIELDS = ("num_masks", "ordering", "direct_connection", "activation", "optimizer",
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
    valid_masks: int | None = None  # validation ensemble; None: min(num_masks, 8), 8 for mask sampling
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        problems = []
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            problems.append(f"hidden_sizes must be positive sizes, got {list(self.hidden_sizes)}")
        for name in _HYPERPARAMETER_FIELDS:
            problem = PARAMETERS[name].problem_for_setting(getattr(self, name))
            if problem:
                problems.append(problem)
        for name in ("max_epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.valid_masks is not None and not ensemble_size_allowed(self.valid_masks, self.num_masks):
            limit = f"exceeds num_masks={self.num_masks}" if self.valid_masks >= 1 else "must be >= 1"
            problems.append(f"valid_masks={self.valid_masks} {limit}")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    @property
    def validation_masks(self) -> int:
        if self.valid_masks is not None:
            return self.valid_masks
        return DEFAULT_VALID_MASKS if self.num_masks == MASK_SAMPLING else min(self.num_masks, DEFAULT_VALID_MASKS)

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, Any], **settings: Any) -> "TrainConfig":
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


def resolve_device(requested: str) -> torch.device:
    """"auto" picks CUDA when available; a CUDA request without CUDA falls back to the CPU with a warning."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device {requested!r} requested but CUDA is not available; training on the CPU", stacklevel=2)
        return torch.device("cpu")
    return device


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
    return device.type == "cpu" and optimizer in {"adam", "adagrad"} and torch.__version__ >= (2, 4)


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced. NLLs are nats per example; validation uses the mask ensemble.

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
            input_dim, config.hidden_sizes, config.num_masks, config.ordering, config.direct_connection, config.activation, config.seed
        ).to(self.device)
        self.train_rows = as_tensor(train_data, self.device, torch.float32)
        self.valid_rows = as_tensor(valid_data, self.device, torch.float32)
        self.optimizer = self._make_optimizer()
        self.train_step = make_training_step(self.model, self.optimizer, config.grad_clip)
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
        """Train epoch by epoch until max_epochs, early stopping or divergence."""
        while self.progress.status == "running":
            yield self.run_epoch()

    def run_epoch(self) -> EpochResult:
        """One pass over the shuffled training rows, one mask per minibatch, then validation."""
        if self.progress.status != "running":
            raise RuntimeError(f"training already ended ({self.progress.status})")
        start = time.perf_counter()
        self.model.train()
        order = torch.randperm(len(self.train_rows), generator=self.shuffle_generator).to(self.device)
        total_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        for batch_start in range(0, len(order), self.config.batch_size):
            batch = self.train_rows[order[batch_start : batch_start + self.config.batch_size]]
            loss = self.train_step(batch, self.progress.step)
            self.progress.step += 1
            total_loss += loss.double() * len(batch)
        train_nll = float(total_loss) / len(order)  # one device sync per epoch, not per step
        self.progress.epoch += 1
        if not math.isfinite(train_nll):
            return self._finish_epoch(start, math.inf, math.inf, "diverged")
        valid_nll = self.evaluate(self.valid_rows, self.config.validation_masks).mean
        if not math.isfinite(valid_nll):
            return self._finish_epoch(start, train_nll, math.inf, "diverged")
        return self._finish_epoch(start, train_nll, valid_nll, None)

    def _finish_epoch(self, start: float, train_nll: float, valid_nll: float, status: str | None) -> EpochResult:
        p, c = self.progress, self.config
        is_best = valid_nll < p.best_valid_nll
        if is_best:
            p.best_valid_nll, p.best_epoch, p.epochs_since_best = valid_nll, p.epoch, 0
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            p.epochs_since_best += 1
        if status is None:
            status = "early_stopped" if p.epochs_since_best >= c.patience else "finished" if p.epoch >= c.max_epochs else "running"
        p.status = status
        if status != "running":
            self.restore_best()
        seconds = time.perf_counter() - start
        result = EpochResult(
            p.epoch, train_nll, valid_nll, p.best_valid_nll, p.best_epoch, is_best, seconds, len(self.train_rows) / seconds, status
        )
        p.history.append({"epoch": p.epoch, "train_nll": train_nll, "valid_nll": valid_nll, "epoch_seconds": seconds})
        return result

    def restore_best(self) -> None:
        """Put the weights of the best validation epoch back (no-op before any finite epoch)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

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
    ) -> "Trainer":
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

# -- command line ---------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    from made_core.cli import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog="made-train", description="Train one MADE and report its test NLL.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--dataset", required=True, help="dataset name (e.g. dna, mnist, synthetic-mob)")
    parser.add_argument("--data-dir", default=None, help="folder of .npz files (default: $MADE_DATA_DIR, else a cache dir)")
    parser.add_argument("--hidden", type=int, nargs="+", default=list(defaults.hidden_sizes), help="hidden layer sizes, e.g. 500 500")
    add_flags(parser, _HYPERPARAMETER_FIELDS)
    parser.add_argument("--grad-clip", type=float, default=None, help="clip gradients to this norm (unset: no clipping)")
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument("--valid-masks", type=int, default=None, help="validation ensemble size (unset: min(num_masks, 8))")
    parser.add_argument("--test-masks", type=int, default=None, help="test ensemble size (unset: all num_masks masks; for mask sampling, the size among "
                        f"{', '.join(map(str, SAMPLING_TEST_MASK_CHOICES))} with the lowest validation NLL)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--checkpoint-dir", default=None, help="write a checkpoint here every epoch (unset: none)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    parser.add_argument("--save-model", default=None, help="folder to write the best model (model.pt) to (unset: not saved)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from made_core.data import DatasetError, load_dataset  # the CLI needs data; the library does not

    args = build_parser().parse_args(argv)
    try:
        if args.resume and not args.checkpoint_dir:
            raise ValueError("--resume needs --checkpoint-dir")
        config = TrainConfig(
            hidden_sizes=tuple(args.hidden), **{name: getattr(args, name) for name in _HYPERPARAMETER_FIELDS},
            grad_clip=args.grad_clip, max_epochs=args.max_epochs, patience=args.patience,
            valid_masks=args.valid_masks, seed=args.seed, device=args.device,
        )  # fmt: skip
        check_test_masks(args.test_masks, config.num_masks, "--test-masks")
        data = load_dataset(args.dataset, data_dir=args.data_dir)
        if args.resume:
            trainer = Trainer.from_checkpoint(args.checkpoint_dir, data.train, data.valid, args.device, args.max_epochs)
        else:
            trainer = Trainer(config, data.train, data.valid)
    except (ValueError, DatasetError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"{data.name}: {data.train.shape[0]}/{data.valid.shape[0]}/{data.test.shape[0]} rows, D={data.input_dim}; "
          f"training on {trainer.device}; {trainer.config}", flush=True)  # fmt: skip
    for result in trainer.epochs():
        marker = " *" if result.is_best else ""
        print(
            f"epoch {result.epoch:4d}  train {result.train_nll:9.3f}  valid {result.valid_nll:9.3f}  "
            f"best {result.best_valid_nll:9.3f} (epoch {result.best_epoch})  "
            f"{result.epoch_seconds:6.2f}s  {result.examples_per_second:8.0f} ex/s{marker}",
            flush=True,
        )
        if args.checkpoint_dir:
            trainer.save_checkpoint(args.checkpoint_dir)
    if trainer.progress.best_epoch == 0:
        print(f"training diverged at epoch {trainer.progress.epoch}: no finite validation NLL; no test NLL reported", file=sys.stderr)
        return 1
    print(f"stopped: {trainer.progress.status} after {trainer.progress.epoch} epochs; best valid NLL "
          f"{trainer.progress.best_valid_nll:.3f} at epoch {trainer.progress.best_epoch}")  # fmt: skip
    if args.save_model:
        from made_core.model import save_model

        print(f"model written to {save_model(trainer.model, args.save_model)}")
    ensemble = choose_test_masks(trainer.model, data.valid, args.test_masks, trainer.config.eval_batch_size)
    if len(ensemble.valid_by_size) > 1:
        print(f"test ensemble chosen on validation: {describe_test_mask_choice(ensemble.valid_by_size)}")
    test = trainer.evaluate(data.test, ensemble.masks)
    line = f"test NLL ({ensemble.masks} mask{'s' if ensemble.masks > 1 else ''}): {test}"
    if data.true_test_nll is not None:
        line += f"   (true NLL of the test set: {data.true_test_nll:.2f})"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
