"""The Ray Tune trainable: a plain function that trains one MADE with made_core, epoch by epoch.

Every epoch it reports ``results.schema.TrialMetrics`` and a checkpoint (made_core's trainer state,
which also holds the best weights so far), so ASHA pauses, node failures and driver
restarts continue from the last epoch. Data arrives through ``tune.with_parameters``:
the driver puts it in Ray's object store once, trials never read the disk.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import torch
from ray import tune

from made_core.config import TrainConfig
from made_core.ensembles import SAMPLING_TEST_MASK_CHOICES
from made_core.files import CheckpointError
from made_core.hyperparameters import MASK_SAMPLING, capped_ensemble_size
from made_core.precision import DEFAULT_PRECISION
from made_core.train import Trainer
from results.schema import TRIAL_SEED_KEY, TrialMetrics
from results.storage import subfolders

# How Ray Tune names a trial's checkpoint folders (StorageContext._make_checkpoint_dir_name).
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


class TrialDiverged(RuntimeError):
    """Raised so Ray records a diverged trial as failed (a NaN objective would hang Optuna's trial)."""


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a sweep shares besides its hyperparameters."""

    max_epochs: int
    patience: int
    seed: int
    valid_masks: int | None = None
    # When a trial checkpoints: at its last epoch, at every ASHA rung (where the scheduler may
    # stop it, so its checkpoint holds its best weights so far), every ``checkpoint_every``
    # epochs if set, and otherwise once ``checkpoint_seconds`` have passed since the last one:
    # a checkpoint per epoch cost a fifth of the trial time on dna-sized sets.
    checkpoint_every: int | None = None
    test_masks: int | None = None  # the sweep's --test-masks (None: each model's default test ensemble)
    objective: str = "test-ensemble"  # results.schema.OBJECTIVES: what the reported validation NLL measures
    checkpoint_seconds: float = 10.0
    rung_epochs: tuple[int, ...] = ()
    precision: str = DEFAULT_PRECISION  # training steps on a GPU (made_core.precision); CPU trials use fp32
    validate_every: int | None = None  # epochs between validations; None: TrainConfig.validation_interval's rule
    # A report is a round trip to the driver that the trial waits for (about 5 ms on 2 cores, a
    # sixth of a 30 ms epoch on a 2,000-row set): after a validation, a trial reports at ASHA's
    # rungs, with a checkpoint, at its end, and otherwise once ``report_seconds`` have passed
    # since its last report (0: after every validation; the CLI's --report-seconds sets it).
    report_seconds: float = 0.0


def should_checkpoint(
    settings: TrialSettings, epoch: int, done: bool, seconds_since_last: float, previous_epoch: int | None = None
) -> bool:
    """Whether the trial checkpoints at the report of ``epoch`` (see TrialSettings); the previous
    report was at ``previous_epoch`` (default ``epoch - 1``: trials validate every epoch or
    every few, so a multiple of ``checkpoint_every`` may fall between two reports)."""
    every = settings.checkpoint_every
    previous = epoch - 1 if previous_epoch is None else previous_epoch
    return (
        done
        or epoch in settings.rung_epochs
        or (every is not None and epoch // every > previous // every)
        or (every is None and seconds_since_last >= settings.checkpoint_seconds)
    )


def should_report(settings: TrialSettings, epoch: int, done: bool, seconds_since_last: float) -> bool:
    """Whether a trial that does not checkpoint now reports the validation of ``epoch`` (a checkpoint
    always comes with a report; see TrialSettings.report_seconds)."""
    return done or epoch in settings.rung_epochs or seconds_since_last >= settings.report_seconds


def trial_device() -> str:
    """CUDA when Ray assigned this trial a GPU (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    import ray

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def train_made(config: dict[str, Any], train_data: np.ndarray, valid_data: np.ndarray, settings: TrialSettings) -> None:
    """Train one configuration; reports its TrialMetrics (OBJECTIVE: ``best_valid_nll``) after a
    validation (``made_core.train``: every epoch, or every few where validating costs more) at
    ASHA's rungs, at the end and about every ``settings.report_seconds`` (``should_report``).

    The seed is the sweep's (``settings.seed``) unless the config carries its own under
    ``TRIAL_SEED_KEY`` (a retraining of the leading configuration, ``search.reseed``)."""
    import logging

    import ray

    # Ray logs every checkpoint at INFO from inside the trial: one line per epoch per trial.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)

    cpus = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if cpus > 0:
        torch.set_num_threads(cpus)  # Ray sets OMP_NUM_THREADS to the trial's CPU count
    device = trial_device()
    seed = int(config.get(TRIAL_SEED_KEY, settings.seed))
    hyperparameters = {key: value for key, value in config.items() if key != TRIAL_SEED_KEY}
    train_config = TrainConfig.from_hyperparameters(
        hyperparameters,
        max_epochs=settings.max_epochs,
        patience=settings.patience,
        validate_every=settings.validate_every,
        validate_at=settings.rung_epochs,  # ASHA judges every trial at the same epochs
        seed=seed,
        valid_masks=_valid_masks(config, settings),
        valid_target_masks=objective_target_masks(config, settings),
        device=device,
        # A CPU trial of a GPU sweep (e.g. a CPU-only node) trains in fp32 without a warning.
        precision=settings.precision if device == "cuda" else DEFAULT_PRECISION,
    )
    checkpoint = tune.get_checkpoint()
    trainer = restore_trainer(checkpoint, train_data, valid_data, device) if checkpoint is not None else None
    if trainer is None:
        trainer = Trainer(train_config, train_data, valid_data)
    node_ip = ray.util.get_node_ip_address()
    last_checkpoint = last_report = time.monotonic()
    previous_epoch = trainer.progress.epoch
    for result in trainer.epochs():
        if result.status == "diverged":
            raise TrialDiverged(
                f"training diverged at epoch {result.epoch} (non-finite loss) with {config}; "
                f"best valid NLL before that: {result.best_valid_nll}"
            )
        metrics = TrialMetrics(
            best_valid_nll=result.best_valid_nll,
            valid_nll=result.valid_nll,
            train_nll=result.train_nll,
            epoch=result.epoch,
            epoch_seconds=result.epoch_seconds,
            examples_per_second=result.examples_per_second,
            stopped_early=result.status == "early_stopped",
            node_ip=node_ip,
            pid=os.getpid(),
            device=device,
        )
        now = time.monotonic()
        checkpoint_now = should_checkpoint(settings, result.epoch, result.done, now - last_checkpoint, previous_epoch)
        previous_epoch = result.epoch
        if checkpoint_now:
            with tempfile.TemporaryDirectory() as folder:
                trainer.save_checkpoint(folder)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            last_checkpoint = last_report = time.monotonic()
        elif should_report(settings, result.epoch, result.done, now - last_report):
            tune.report(metrics)
            last_report = time.monotonic()


def restore_trainer(checkpoint: tune.Checkpoint, train_data: np.ndarray, valid_data: np.ndarray, device: str) -> Trainer | None:
    """The trainer of the trial's newest readable checkpoint, or None when none can be read.

    Ray hands a retried or resumed trial its newest checkpoint only; when that one is corrupt
    (a node died while writing it, a truncated copy), the older ones Ray keeps beside it are
    tried, newest first, and each fallback is said in one line on the trial's stderr.
    """
    candidates = [checkpoint, *older_checkpoints(checkpoint)]
    for index, candidate in enumerate(candidates):
        try:
            with candidate.as_directory() as folder:
                return Trainer.from_checkpoint(folder, train_data, valid_data, device=device)
        except (CheckpointError, FileNotFoundError) as error:
            fallback = (
                f"falling back to {candidates[index + 1].path}" if index + 1 < len(candidates) else "starting the trial over"
            )
            print(f"warning: checkpoint {candidate.path} unusable ({error}); {fallback}", file=sys.stderr, flush=True)
    return None


def older_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's checkpoints older than ``checkpoint``, newest first (on its own filesystem)."""
    name = PurePosixPath(checkpoint.path)
    current = _CHECKPOINT_NAME.fullmatch(name.name)
    if current is None:
        return []
    try:
        siblings = subfolders(checkpoint.filesystem, str(name.parent))
    except OSError:
        return []
    older = []
    for info in siblings:
        match = _CHECKPOINT_NAME.fullmatch(info.base_name)
        if match and int(match[1]) < int(current[1]):
            older.append((int(match[1]), info.path))
    return [tune.Checkpoint(path, filesystem=checkpoint.filesystem) for _, path in sorted(older, reverse=True)]


def objective_target_masks(config: dict[str, Any], settings: TrialSettings) -> int | None:
    """The ensemble size the trial's validation NLL estimates: its test-time ensemble (the sweep's
    --test-masks, else all K masks, else mask sampling's largest candidate), or None ("valid-ensemble")."""
    if settings.objective == "valid-ensemble":
        return None
    num_masks = int(config["num_masks"])
    if settings.test_masks is not None:
        return capped_ensemble_size(settings.test_masks, num_masks)
    return num_masks if num_masks != MASK_SAMPLING else max(SAMPLING_TEST_MASK_CHOICES)


def _valid_masks(config: dict[str, Any], settings: TrialSettings) -> int | None:
    """A sweep-wide validation ensemble size, capped by the trial's own mask count."""
    if settings.valid_masks is None:
        return None
    return capped_ensemble_size(settings.valid_masks, int(config["num_masks"]))  # spaces give every hyperparameter
