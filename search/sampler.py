"""The guided search's sampler: TPE whose start-up trials are neighbours of the start points.

Optuna's TPE draws its first ``n_startup_trials`` uniformly at random, which makes a short
sweep's start-up trials exactly random search's, seed for seed. Here each start-up trial
instead takes the start point that looks best so far (the lowest validation NLL it has
reported) and redraws one or two of its parameters at random: a local search around the
space's author's strong configurations until TPE has enough trials to model. On the
search benchmark's larger sets, whose 3-minute sweeps hold 8-14 trials, the models that
beat the start points in longer sweeps were such neighbours (two layers instead of one,
another batch size or learning rate). Optuna has no sampler for this (CMA-ES's ``x0`` does
not cover categorical parameters), hence this subclass of its TPE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

MAX_CHANGES = 2  # a neighbour redraws 1 or 2 of the start point's parameters
_REDRAWS = 32  # tries for a value other than the start point's


class StartPointNeighboursTPE(optuna.samplers.TPESampler):
    """Multivariate TPE; its start-up trials redraw 1-``MAX_CHANGES`` parameters of a start point.

    ``start_points``: the configurations enqueued first (the sweep evaluates them itself;
    Optuna never asks the sampler for an enqueued trial's values). Without any, start-up
    trials are TPE's own uniform draws.
    """

    def __init__(self, start_points: Sequence[Mapping[str, Any]], *, seed: int | None = None, **tpe_options: Any) -> None:
        super().__init__(seed=seed, **tpe_options)
        self.start_points = [dict(point) for point in start_points]
        self._seed = seed
        self._neighbour_of: dict[int, tuple[dict[str, Any], frozenset[str]]] = {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if not self.start_points or self._finished(study) >= self._n_startup_trials:
            return super().sample_independent(study, trial, param_name, param_distribution)
        point, changed = self.neighbour_plan(study, trial)
        value = point.get(param_name)
        kept = param_name in point and admits(param_distribution, value)
        draw = self._random_sampler.sample_independent
        if kept and param_name not in changed:
            return value
        for _ in range(_REDRAWS):
            drawn = draw(study, trial, param_name, param_distribution)
            if not kept or drawn != value:
                return drawn
        return drawn  # a single-valued parameter: nothing else to draw

    def neighbour_plan(self, study: optuna.Study, trial: FrozenTrial) -> tuple[dict[str, Any], frozenset[str]]:
        """The start point ``trial`` is a neighbour of and the parameters it redraws, fixed on its first call."""
        if trial.number not in self._neighbour_of:
            rng = np.random.default_rng(None if self._seed is None else [self._seed, trial.number])
            point = self.leading_start_point(study, trial.number)
            names = sorted(point)
            count = min(len(names), int(rng.integers(1, MAX_CHANGES + 1)))
            changed = frozenset(str(name) for name in rng.choice(names, size=count, replace=False)) if names else frozenset()
            self._neighbour_of[trial.number] = (point, changed)
        return self._neighbour_of[trial.number]

    def leading_start_point(self, study: optuna.Study, number: int) -> dict[str, Any]:
        """The start point whose trial has reported the lowest value so far (its final value once
        finished, else its best intermediate one); before any has reported, each in turn."""
        scores = [math.inf] * len(self.start_points)
        for trial in study.get_trials(deepcopy=False):
            value = trial.value if trial.state == TrialState.COMPLETE else min(trial.intermediate_values.values(), default=None)
            if value is None or not math.isfinite(value):
                continue
            for index, point in enumerate(self.start_points):
                if all(trial.params.get(name) == wanted for name, wanted in point.items()):
                    scores[index] = min(scores[index], value)
        if all(math.isinf(score) for score in scores):
            return self.start_points[number % len(self.start_points)]
        return self.start_points[int(np.argmin(scores))]

    @staticmethod
    def _finished(study: optuna.Study) -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def admits(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one of ``distribution``'s values."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):  # a categorical's to_internal_repr refuses a value it lacks
        return False
