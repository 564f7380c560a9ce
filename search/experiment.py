"""The files of an experiment folder (names and columns from results.schema), and the final test.

After the sweep (or after an interrupted one) the driver reads the experiment back with
Ray's ``ExperimentAnalysis``, writes ``trials.csv`` and ``curves.csv``, picks the best
trial by validation NLL (never by test NLL), evaluates it once on the test set with its
mask ensemble and writes ``best.json`` and the best model; and the mixture of the finalists
chosen on validation (``made_core.mixture``), also tested once.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from made_core.ensembles import choose_test_masks
from made_core.evaluate import example_log_probs, nll_of
from made_core.hyperparameters import capped_ensemble_size
from made_core.mixture import MADEMixture, mixture_log_prob, save_mixture, select_weights
from made_core.model import save_model
from made_core.train import load_best_model
from results import schema
from results.schema import OBJECTIVE
from results.storage import atomic_write_csv, atomic_write_text
from results.tables import order_hyperparameters

# Ray Tune's own key in every result: the trial's total training time in seconds.
RAY_TIME_TOTAL = "time_total_s"

logger = logging.getLogger("search")

EVALUATION_SHARE = 0.1
"""Of a sweep's time budget, what each evaluation after it beyond the sweep's best model may
take: validating the re-selection's further finalists, testing the mixture's further models."""
MIN_EVALUATION_SECONDS = 60.0


def evaluation_seconds(time_budget_seconds: float | None) -> float | None:
    """The seconds the re-selection's, and the mixture's, further evaluations may each take in a
    sweep with this budget (None: no budget, no limit)."""
    if time_budget_seconds is None:
        return None
    return max(MIN_EVALUATION_SECONDS, EVALUATION_SHARE * time_budget_seconds)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """One of the experiment's JSON files (experiment.json, best.json), written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as read back from Ray's experiment state."""

    trial_id: str
    status: str
    config: dict[str, Any]
    last_result: dict[str, Any]
    history: pd.DataFrame
    num_failures: int
    # The trial's last ray.tune.Checkpoint (it carries its own filesystem: local or a URI's).
    checkpoint: Any | None

    @property
    def checkpoint_path(self) -> str | None:
        """Where the checkpoint lies on its filesystem (a local path, or a bucket path for URI storage)."""
        return self.checkpoint.path if self.checkpoint is not None else None

    @property
    def best_valid_nll(self) -> float:
        value = self.last_result.get(OBJECTIVE)
        return float(value) if value is not None else math.nan


# A trial the time budget stopped before its first report has no result files and no
# checkpoint. Ray's ExperimentAnalysis logs that as a warning and an error at the end of every
# budget-driven sweep (when ``Tuner.fit`` builds its ResultGrid, and again when the sweep is read
# back); such a trial is read as one with no results, and any other problem reading a trial
# still gets Ray's warning.
_NOTHING_REPORTED = "both result.json and progress.csv were not found"


class _TrialsThatReportedNothing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("No checkpoints have been found for trial"):
            return False  # a TrialRecord without a checkpoint is never a finalist
        if message.startswith("Failed to fetch metrics for"):
            errors = message.splitlines()[1:]
            return not errors or not all(_NOTHING_REPORTED in line for line in errors)
        return True


@contextmanager
def quiet_about_trials_that_reported_nothing() -> Iterator[None]:
    """Inside: Ray's experiment analysis says nothing of trials that reported nothing (see above)."""
    analysis_logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    quiet = _TrialsThatReportedNothing()
    analysis_logger.addFilter(quiet)
    try:
        yield
    finally:
        analysis_logger.removeFilter(quiet)


def read_ray_trials(experiment_path: str | Path) -> list[TrialRecord]:
    """Every trial of the experiment, from Ray's own files (works without Ray running).

    ``experiment_path`` is a local folder or a URI (``s3://bucket/prefix/<name>``, query
    parameters allowed): ``ExperimentAnalysis`` reads either through pyarrow. A trial that
    reported nothing (the budget ended as it started) has no history and no checkpoint.
    """
    from ray.tune import ExperimentAnalysis

    records = []
    with quiet_about_trials_that_reported_nothing():
        analysis = ExperimentAnalysis(str(experiment_path))
        for trial in analysis.trials:
            records.append(
                TrialRecord(
                    trial_id=trial.trial_id,
                    status=str(trial.status),
                    config=_canonical_order(trial.config),
                    last_result=dict(trial.last_result or {}),
                    history=analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame()),
                    num_failures=int(getattr(trial, "num_failures", 0)),
                    checkpoint=analysis.get_last_checkpoint(trial),
                )
            )
    return records  # in creation order: Ray keeps its trials in the order the searcher made them


def _canonical_order(config: dict[str, Any]) -> dict[str, Any]:
    return {name: config[name] for name in order_hyperparameters(config)}


def hyperparameter_columns(records: list[TrialRecord]) -> list[str]:
    """Canonical hyperparameters first, then any other config keys a custom space added."""
    return order_hyperparameters({key for record in records for key in record.config})


def trials_table(records: list[TrialRecord]) -> pd.DataFrame:
    """trials.csv: one TrialRow per trial (from its last TrialMetrics report), then its hyperparameters."""
    columns = [*schema.TRIAL_COLUMNS, *hyperparameter_columns(records)]
    rows = []
    for number, record in enumerate(records, start=1):
        result = record.last_result
        row = schema.TrialRow(
            trial_id=record.trial_id,
            trial_number=number,
            status=record.status,
            epochs=result.get("epoch", 0),
            best_valid_nll=record.best_valid_nll,
            final_train_nll=result.get("train_nll", math.nan),
            wall_seconds=result.get(RAY_TIME_TOTAL, math.nan),
            node_ip=result.get("node_ip", ""),
            num_failures=record.num_failures,
        )
        rows.append({**row, **record.config})
    return pd.DataFrame(rows, columns=columns)


def curves_table(records: list[TrialRecord]) -> pd.DataFrame:
    """curves.csv: one CurveRow per (trial, epoch), from the trial's TrialMetrics history."""
    frames = []
    for record in records:
        history = record.history
        if history.empty or "epoch" not in history:
            continue
        # A trial restored from a checkpoint reports some epochs twice; keep the last report.
        history = history.drop_duplicates(subset="epoch", keep="last")
        frame = history[list(schema.CURVE_METRICS)].reset_index(drop=True)
        frame.insert(0, "trial_id", record.trial_id)
        frame["epoch"] = frame["epoch"].astype(int)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(schema.CURVE_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(schema.CURVE_COLUMNS)]


def write_trial_files(experiment_path: Path, records: list[TrialRecord]) -> None:
    atomic_write_csv(experiment_path / schema.TRIALS_FILE, trials_table(records))
    atomic_write_csv(experiment_path / schema.CURVES_FILE, curves_table(records))


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The trial with the lowest validation NLL that has a checkpoint; None if no trial qualifies."""
    return next(iter(finalist_trials(records, 1)), None)


def finalist_trials(records: list[TrialRecord], count: int) -> list[TrialRecord]:
    """The ``count`` trials with a checkpoint and the lowest sweep objective, best first."""
    candidates = [r for r in records if math.isfinite(r.best_valid_nll) and r.checkpoint is not None]
    return sorted(candidates, key=lambda r: r.best_valid_nll)[:count]


@dataclass(frozen=True)
class Finalist:
    """A finalist's model with its test-time ensemble chosen on validation."""

    record: TrialRecord
    model: Any  # made_core.MADE
    ensemble: Any  # made_core.ensembles.TestEnsemble
    seed: int  # its training seed

    @property
    def valid_nll(self) -> float:
        """Validation NLL with its test-time ensemble (inf when not finite, so it ranks last)."""
        value = self.ensemble.valid.mean
        return value if math.isfinite(value) else math.inf

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Its configuration without a retrained trial's seed."""
        return {key: value for key, value in self.record.config.items() if key != schema.TRIAL_SEED_KEY}

    def summary(self) -> dict[str, Any]:
        return {"trial_id": self.record.trial_id, "seed": self.seed, "sweep_valid_nll": self.record.best_valid_nll,
                "valid_nll": self.ensemble.valid.mean, "test_masks": self.ensemble.masks}  # fmt: skip


def evaluate_finalist(record: TrialRecord, valid_data: np.ndarray, test_masks: int | None, seed: int) -> Finalist:
    """Load a trial's best model (it must have a checkpoint) and choose its test ensemble on
    validation. ``seed``: the sweep's, which a retrained trial's config overrides."""
    assert record.checkpoint is not None
    with record.checkpoint.as_directory() as checkpoint_folder:
        model = load_best_model(checkpoint_folder)
    requested = None if test_masks is None else capped_ensemble_size(test_masks, model.num_masks)
    seed = int(record.config.get(schema.TRIAL_SEED_KEY, seed))
    return Finalist(record, model, choose_test_masks(model, valid_data, requested), seed)


def reselect(
    records: list[TrialRecord],
    valid_data: np.ndarray,
    test_masks: int | None,
    finalists: int,
    seed: int,
    seconds: float | None = None,
) -> list[Finalist]:
    """The top ``finalists`` trials by sweep objective, each re-evaluated on validation with its
    full test-time ensemble, best first by that NLL (ties: the better sweep objective).

    The sweep objective is measured (or extrapolated) with a small ensemble on a validation
    set that may hold a few hundred rows; re-evaluating the leaders with the ensemble that
    will be delivered makes the final choice less a matter of that noise. ``seed``: the sweep's.
    ``seconds``: once the evaluations have taken that long, the finalists not yet evaluated are
    left out (the sweep's best is always evaluated): a 256-mask validation pass on 10,000 rows
    takes 8-29 s on 2 cores, and a time budget should bound what follows the sweep."""
    started = time.perf_counter()
    evaluated: list[Finalist] = []
    for record in finalist_trials(records, finalists):
        if evaluated and seconds is not None and time.perf_counter() - started >= seconds:
            break
        evaluated.append(evaluate_finalist(record, valid_data, test_masks, seed))
    return sorted(evaluated, key=lambda f: (f.valid_nll, f.record.best_valid_nll))


def evaluate_best(
    experiment_path: Path,
    ranked: list[Finalist],
    dataset: str,
    test_data: np.ndarray,
    extra: schema.BestOptional | None = None,
    *,
    checkpoint_path: str | None = None,
    reseeded: list[Finalist] | None = None,
    mix: bool = False,
    mixture_seconds: float | None = None,
) -> schema.BestTrial | None:
    """Evaluate the chosen model once on the test set; write best_model/ and best.json. Returns best.json's data.

    ``ranked``: the finalists (``reselect``), best first; best.json lists them as ``finalists``.
    ``reseeded``: the leading finalist's configuration retrained with other seeds, evaluated
    the same way; the leader or one of them, whichever has the lowest validation NLL with its
    test ensemble, is the chosen model (best.json's ``reseeds`` lists them, the leader first).
    best.json's ``valid_nll`` is the chosen model's validation NLL with that ensemble, so it
    and ``test_nll`` describe the same model; the sweep's figure is kept as ``sweep_valid_nll``.

    With ``mix``, the finalists and retrainings are also mixed (``made_core.mixture``: weights
    chosen on validation by greedy forward selection, starting from the chosen model), the mixture is
    tested once and written to best_mixture/, and best.json's ``mixture`` describes it. With
    ``mixture_seconds``, the models besides the chosen one enter the mixture only while their test
    evaluations, projected from their validation ones, fit in that many seconds.

    ``experiment_path`` is the local folder written to. best.json's ``checkpoint_path`` is the
    absolute best_model/ folder unless ``checkpoint_path`` is given (URI storage: the path
    relative to the experiment folder). None when there is no finalist.
    """
    if not ranked:
        return None
    candidates = [ranked[0], *(reseeded or [])]
    chosen = min(candidates, key=lambda f: f.valid_nll)  # the leader wins ties
    best, model, ensemble = chosen.record, chosen.model, chosen.ensemble
    chosen_test_log_probs = example_log_probs(model, test_data, ensemble.masks)
    test = nll_of(chosen_test_log_probs)
    model_folder = experiment_path / schema.BEST_MODEL_FOLDER
    save_model(model, model_folder)
    summary: schema.BestTrial = {
        "dataset": dataset,
        "experiment": experiment_path.name,
        "trial_id": best.trial_id,
        "config": chosen.hyperparameters,
        "valid_nll": ensemble.valid.mean,
        "test_nll": test.mean,
        "test_nll_stderr": test.stderr,
        "test_masks": ensemble.masks,
        "sweep_valid_nll": best.best_valid_nll,
        "valid_nll_by_test_masks": {str(size): nll for size, nll in ensemble.valid_by_size.items()},
        "checkpoint_path": checkpoint_path or str(model_folder),
        "finished_at": utc_now(),
        "finalists": [finalist.summary() for finalist in ranked],
        "seed": chosen.seed,
        "reseeds": [candidate.summary() for candidate in candidates] if reseeded else [],
    }
    if mix:
        pool = [chosen, *(f for f in [*ranked, *(reseeded or [])] if f is not chosen)]
        mixture = mix_finalists(experiment_path, pool, test_data, chosen_test_log_probs, mixture_seconds)
        # Named like the model: relative to the experiment folder when checkpoint_path is (URI storage).
        mixture["path"] = schema.BEST_MIXTURE_FOLDER if checkpoint_path else str(experiment_path / schema.BEST_MIXTURE_FOLDER)
        summary["mixture"] = mixture
    summary.update(extra or {})
    write_json(experiment_path / schema.BEST_FILE, summary)
    return summary


def mix_finalists(
    experiment_path: Path, pool: list[Finalist], test_data: np.ndarray, first_test_log_probs: Any, seconds: float | None = None
) -> dict[str, Any]:
    """Mix ``pool`` (the chosen model first, whose test log-probabilities are given) with weights
    chosen on validation, the others' test evaluations within ``seconds`` (projected; None: no
    limit); test the mixture once; write it to best_mixture/. Returns best.json's ``mixture`` but
    its ``path``: the models with their weights, the mixture's validation and test NLL, and with a
    limit, the seconds allowed and the models the limit left out."""
    import torch

    valid = torch.stack([f.ensemble.valid_log_probs for f in pool])  # computed when the test ensembles were chosen
    weights = select_weights(valid)
    extra: dict[str, Any] = {}
    if seconds is not None:
        # A large test set (150,000 rows) makes each further model's test evaluation minutes long.
        costs = [0.0] + [f.ensemble.projected_seconds(len(test_data)) for f in pool[1:]]
        unlimited = weights
        weights = select_weights(valid, costs=[c if math.isfinite(c) else 0.0 for c in costs], budget=seconds)
        left_out = [pool[i].record.trial_id for i in range(len(pool)) if unlimited[i] > 0 and weights[i] == 0]
        extra = {"test_seconds_allowed": seconds, "left_out_for_time": left_out}
        if left_out:
            logger.info("mixture: left out %s, whose test evaluations would not fit in %.0f s", ", ".join(left_out), seconds)
    used = [i for i in range(len(pool)) if weights[i] > 0]
    test_by_model = [first_test_log_probs if i == 0 else example_log_probs(pool[i].model, test_data, pool[i].ensemble.masks)
                     for i in used]  # fmt: skip
    mixture = MADEMixture(
        tuple(pool[i].model for i in used), tuple(pool[i].ensemble.masks for i in used), tuple(float(weights[i]) for i in used)
    )
    valid_nll = nll_of(mixture_log_prob(valid, weights))
    test = nll_of(mixture_log_prob(torch.stack(test_by_model), weights[used]))
    save_mixture(mixture, experiment_path / schema.BEST_MIXTURE_FOLDER)
    return {
        "models": [{**pool[i].summary(), "weight": float(weights[i])} for i in used],
        "valid_nll": valid_nll.mean,
        "test_nll": test.mean,
        "test_nll_stderr": test.stderr,
        **extra,
    }
