"""Reading experiment folders written by ``search`` (layout: ``results.schema``).

An experiment folder ``<storage>/<name>/`` is usable when its ``experiment.json`` is a
JSON object naming a dataset and its ``trials.csv`` parses with every TRIAL_COLUMNS
column and a trial_id on every row. ``best.json`` is optional (a sweep that is still
running, or failed before its test evaluation, has none) but, when present, must be a
JSON object with a config and finite validation and test NLLs. ``curves.csv`` is optional
and only feeds the figures: a broken one costs the curves figure, not the experiment.

Anything else -- a folder without experiment.json (not ours), bad JSON, a CSV that does not
parse or lacks columns -- makes the folder *skipped*: ``scan_storages`` logs a warning that
names it and carries on; it never raises for a bad folder.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from results import schema
from results.paper import canonical_dataset
from results.storage import StorageError, as_local_path, fetch_experiments, is_uri

logger = logging.getLogger("results")

# What a usable curves.csv and best.json must hold at least (older files lack the rest).
_REQUIRED_CURVE_COLUMNS = ("trial_id", "epoch", "valid_nll")
_REQUIRED_BEST_KEYS = ("trial_id", "config", "valid_nll", "test_nll")
# Ray Tune prefixes config columns this way in its own tables; accept either spelling.
_CONFIG_PREFIX = "config/"


class ExperimentError(ValueError):
    """An experiment folder that cannot be used; the message says why."""


@dataclass
class Skipped:
    """A folder left out of the aggregation, and why."""

    path: Path
    reason: str


@dataclass
class Experiment:
    """One readable experiment folder.

    ``trials`` holds TRIAL_COLUMNS then the hyperparameter columns (``hyperparameters``),
    with ``trial_id`` as str. ``best`` is best.json (None if absent). ``curves`` is
    curves.csv (None if absent or unreadable).
    """

    name: str
    path: Path
    dataset: str
    info: dict[str, Any]
    trials: pd.DataFrame
    hyperparameters: list[str]
    best: dict[str, Any] | None = None
    curves: pd.DataFrame | None = None
    problems: list[str] = field(default_factory=list)  # non-fatal, already logged


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExperimentError(f"{path.name} is not readable JSON ({error})") from error
    if not isinstance(value, dict):
        raise ExperimentError(f"{path.name} is not a JSON object")
    return value


def _check_complete_rows(path: Path, text: str) -> None:
    """Refuse a CSV cut mid-row: pandas would silently pad the short last row with NaN."""
    if text and not text.endswith("\n"):
        raise ExperimentError(f"{path.name} ends mid-row (half-written?)")
    rows = csv.reader(io.StringIO(text))
    width = len(next(rows, []))
    for number, row in enumerate(rows, start=2):
        if row and len(row) != width:
            raise ExperimentError(f"{path.name} line {number} has {len(row)} fields, the header {width}")


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        text = path.read_text(encoding="utf-8")
        _check_complete_rows(path, text)
        frame = pd.read_csv(io.StringIO(text), dtype={"trial_id": str})
    except (OSError, UnicodeDecodeError, ValueError, csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        if isinstance(error, ExperimentError):
            raise
        raise ExperimentError(f"{path.name} does not parse ({type(error).__name__}: {error})") from error
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ExperimentError(f"{path.name} lacks columns {missing}")
    if frame["trial_id"].isna().any():
        raise ExperimentError(f"{path.name} has rows without a trial_id (half-written?)")
    return frame


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_trials_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """trials.csv as (frame, hyperparameter column names); raises ExperimentError."""
    frame = _read_csv(path, schema.TRIAL_COLUMNS)
    frame = frame.rename(columns={c: c[len(_CONFIG_PREFIX) :] for c in frame.columns if c.startswith(_CONFIG_PREFIX)})
    if frame.columns.duplicated().any():
        raise ExperimentError(f"{path.name} has duplicate columns")
    for column in schema.TRIAL_NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    hyperparameters = [column for column in frame.columns if column not in schema.TRIAL_COLUMNS]
    return frame, hyperparameters


def read_best(path: Path) -> dict[str, Any]:
    """best.json, checked; raises ExperimentError."""
    best = _read_json_object(path)
    missing = [key for key in _REQUIRED_BEST_KEYS if key not in best]
    if missing:
        raise ExperimentError(f"{path.name} lacks keys {missing}")
    if not isinstance(best["config"], dict):
        raise ExperimentError(f"{path.name}: config is not an object")
    for key in ("valid_nll", "test_nll"):
        if _finite_number(best[key]) is None:
            raise ExperimentError(f"{path.name}: {key} is not a finite number ({best[key]!r})")
    best["trial_id"] = str(best["trial_id"])
    return best


def read_curves(path: Path) -> pd.DataFrame:
    """curves.csv with numeric epoch/NLL columns; raises ExperimentError."""
    frame = _read_csv(path, _REQUIRED_CURVE_COLUMNS)
    for column in frame.columns:
        if column != "trial_id":
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def read_experiment(path: Path) -> Experiment:
    """Read one experiment folder; raises ExperimentError if it is unusable."""
    path = Path(path)
    experiment_file = path / schema.EXPERIMENT_FILE
    if not experiment_file.is_file():
        raise ExperimentError(f"no {schema.EXPERIMENT_FILE} (not an experiment folder)")
    info = _read_json_object(experiment_file)
    dataset = info.get("dataset")
    if not isinstance(dataset, str) or not dataset.strip():
        raise ExperimentError(f"{schema.EXPERIMENT_FILE} names no dataset")

    trials_file = path / schema.TRIALS_FILE
    if not trials_file.is_file():
        raise ExperimentError(f"no {schema.TRIALS_FILE}")
    trials, hyperparameters = read_trials_csv(trials_file)

    best_file = path / schema.BEST_FILE
    best = read_best(best_file) if best_file.exists() else None

    experiment = Experiment(
        name=path.name,
        path=path,
        dataset=canonical_dataset(dataset),
        info=info,
        trials=trials,
        hyperparameters=hyperparameters,
        best=best,
    )
    if best is not None:
        best_dataset = best.get("dataset")
        if isinstance(best_dataset, str) and canonical_dataset(best_dataset) != experiment.dataset:
            experiment.problems.append(
                f"{schema.BEST_FILE} says dataset {best_dataset!r}, {schema.EXPERIMENT_FILE} says {dataset!r}; using the latter"
            )
        if not (trials["trial_id"] == best["trial_id"]).any():
            experiment.problems.append(f"best trial {best['trial_id']!r} is not in {schema.TRIALS_FILE}")

    curves_file = path / schema.CURVES_FILE
    if curves_file.exists():
        try:
            experiment.curves = read_curves(curves_file)
        except ExperimentError as error:
            experiment.problems.append(f"{error}; no curves figure")
    return experiment


def scan_storages(storages: list[Path]) -> tuple[list[Experiment], list[Skipped]]:
    """Every readable experiment under the storages, and every folder skipped.

    Experiments are read in sorted folder order per storage, storages in the given order.
    A name seen twice (two storages holding the same experiment name) keeps the first:
    tables key experiments by name.
    """
    experiments: list[Experiment] = []
    skipped: list[Skipped] = []
    seen: dict[str, Path] = {}
    for storage in storages:
        storage = Path(storage)
        if not storage.is_dir():
            logger.warning("storage %s does not exist or is not a folder; nothing read from it", storage)
            continue
        folders = (
            p
            for p in storage.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in schema.STORAGE_OUTPUT_FOLDERS
        )
        for folder in sorted(folders):
            try:
                experiment = read_experiment(folder)
            except ExperimentError as error:
                skipped.append(Skipped(folder, str(error)))
                logger.warning("skipping %s: %s", folder, error)
                continue
            if experiment.name in seen:
                reason = f"an experiment named {experiment.name!r} was already read from {seen[experiment.name]}"
                skipped.append(Skipped(folder, reason))
                logger.warning("skipping %s: %s", folder, reason)
                continue
            for problem in experiment.problems:
                logger.warning("%s: %s", folder, problem)
            seen[experiment.name] = folder
            experiments.append(experiment)
    return experiments, skipped


@contextmanager
def local_storages(storages: list[str | Path]) -> Iterator[list[Path]]:
    """The storages as local folders: URIs are fetched into a temporary folder for the block.

    A URI that cannot be read is left out with a warning naming it and the reason (like a
    missing local folder): aggregation never fails for one storage.
    """
    with tempfile.TemporaryDirectory(prefix="made-aggregate-") as temp:
        local: list[Path] = []
        for number, storage in enumerate(storages):
            if not is_uri(storage):
                local.append(as_local_path(storage))
                continue
            try:
                local.append(fetch_experiments(str(storage), Path(temp) / str(number)))
                logger.info("read storage %s (copied to %s)", storage, local[-1])
            except StorageError as error:
                logger.warning("cannot read storage %s: %s; nothing read from it", storage, error)
        yield local
