"""Retrain the sweep's leading configuration with other seeds (``--reseeds N``).

A trial's result depends on its seed (initial weights, orderings, batches) as well as on its
configuration, and a validation set of a few hundred rows makes the single best trial partly
luck. After the search, the leading finalist's configuration is trained again with seeds
``seed + 1 ... seed + N``: a second Ray Tune experiment inside the experiment folder
(``results.schema.RESEEDS_FOLDER``), whose trials train like the sweep's (patience,
checkpoints, retries) but are never stopped by ASHA, within what is left of the time budget.
The delivered model is then the leader or one of its retrainings, whichever has the lowest
validation NLL with its test ensemble (``search.experiment.evaluate_best``).

Unasked (``--reseeds`` unset), it only spends budget the search left: a sweep whose trial count
ran out before its time budget retrains the leader once per trial slot (at most
``AUTO_RESEEDS_MAX``) when the time left holds the leader's own training. Asked for
(``--reseeds N``), it keeps ``--reseed-share`` of a time budget for itself.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from ray import tune

from results import schema
from results.storage import ExperimentFolder
from search.experiment import (
    Finalist,
    TrialRecord,
    evaluate_finalist,
    finalist_trials,
    quiet_about_trials_that_reported_nothing,
    read_ray_trials,
)
from search.tuner import ProgressPrinter, SweepPlan, make_reseed_tuner, restore_tuner

logger = logging.getLogger("search")

# Below this many seconds of budget left, retraining would only start trials the budget ends at once.
MIN_RESEED_SECONDS = 5.0
# Unasked, at most this many retrainings: one wave on a small machine; the best of many seeds
# on one validation set would start to fit that set.
AUTO_RESEEDS_MAX = 4


def reseed_count(requested: int | None, seconds_left: float | None, leader_seconds: float, slots: int) -> int:
    """How many retrainings to run: ``requested`` when given (``--reseeds``); unset, one per trial
    slot (at most AUTO_RESEEDS_MAX) if the time budget left (``seconds_left``; None: no budget,
    so none unasked) holds the leader's training time, else none."""
    if requested is not None:
        return requested
    if seconds_left is None or not seconds_left >= max(leader_seconds, MIN_RESEED_SECONDS):
        return 0
    return min(slots, AUTO_RESEEDS_MAX)


def reseed_seeds(seed: int, count: int) -> list[int]:
    """The seeds of the ``count`` retrainings of a sweep seeded ``seed``."""
    return [seed + offset for offset in range(1, count + 1)]


def retrain_leader(
    plan: SweepPlan,
    trainable: Any,
    leader: Finalist,
    count: int,
    folder: ExperimentFolder,
    valid_data: np.ndarray,
    time_budget_seconds: float | None,
) -> tuple[list[TrialRecord], list[Finalist]]:
    """Train ``leader``'s configuration with ``count`` other seeds (continuing an interrupted
    retraining in ``folder``'s RESEEDS_FOLDER if there is one); returns the retrained trials
    (for trials.csv) and those of them with a model, each evaluated like a finalist.

    ``folder``: the sweep's experiment folder; ``time_budget_seconds``: what is left of
    the sweep's budget (None: no limit). A retraining of another configuration found there (the
    sweep resumed with other settings) is left out with a warning."""
    if time_budget_seconds is not None and time_budget_seconds < MIN_RESEED_SECONDS:
        logger.info("no time budget left to retrain the leading configuration with other seeds (%.0f s)", time_budget_seconds)
        return [], []
    seeds = reseed_seeds(plan.seed, count)
    reseeds_location = folder.remote(schema.RESEEDS_FOLDER)
    progress = ProgressPrinter(len(seeds))
    if tune.Tuner.can_restore(reseeds_location):
        tuner = restore_tuner(reseeds_location, trainable)
    else:
        tuner = make_reseed_tuner(
            plan, trainable, leader.hyperparameters, seeds, folder.location, time_budget_seconds, progress, folder.local_path
        )
    budget = "" if time_budget_seconds is None else f", within the {time_budget_seconds:.0f} s left of the budget"
    logger.info(
        "retraining trial %s's configuration with seed%s %s%s",
        leader.record.trial_id,
        "s" if len(seeds) > 1 else "",
        ", ".join(map(str, seeds)),
        budget,
    )
    with quiet_about_trials_that_reported_nothing():
        tuner.fit()
    records = read_ray_trials(reseeds_location)
    retrained = []
    for record in finalist_trials(records, count):
        candidate = evaluate_finalist(record, valid_data, plan.test_masks, plan.seed)
        if candidate.hyperparameters != leader.hyperparameters:
            logger.warning(
                "left out the retraining %s: its configuration is not the leading one's (the sweep was resumed with "
                "other settings)",
                record.trial_id,
            )
            continue
        retrained.append(candidate)
    valid = ", ".join(f"seed {f.seed} {f.valid_nll:.3f}" for f in [leader, *retrained] if math.isfinite(f.valid_nll))
    logger.info("validation NLL with the test ensemble, by seed: %s", valid)
    return records, retrained
