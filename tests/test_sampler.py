"""The guided search's sampler (search/sampler.py): start-up trials are neighbours of the leading
start point, then TPE; on the default space, with plain Optuna (no Ray), fast."""

from __future__ import annotations

import optuna
import pytest

from search.sampler import MAX_CHANGES, StartPointNeighboursTPE, admits
from spaces import get_space

DATASET = "synthetic-tiny"


def changed_names(config: dict, point: dict) -> set[str]:
    return {name for name, value in point.items() if config[name] != value}


def run_study(sampler: StartPointNeighboursTPE, trials: int, objective) -> optuna.Study:
    space = get_space("default")
    study = optuna.create_study(sampler=sampler)
    for point in sampler.start_points:
        study.enqueue_trial(point)
    define = space.define_by_run(DATASET)
    study.optimize(lambda trial: objective(define(trial)), n_trials=trials)
    return study


def space_and_points():
    space = get_space("default")
    points = space.start_points(DATASET)
    assert len(points) == 2 and points[0] != points[1]
    return space, points


def test_start_up_trials_redraw_one_or_two_parameters_of_the_leading_start_point():
    space, points = space_and_points()
    # The second start point scores lower, so every start-up trial after the two is its neighbour.
    better = points[1]

    def objective(config: dict) -> float:
        return 1.0 if all(config[k] == v for k, v in better.items()) else 2.0 + config["learning_rate"]

    sampler = StartPointNeighboursTPE(points, seed=3, multivariate=True, group=True, n_startup_trials=10)
    study = run_study(sampler, 10, objective)
    distributions = space.distributions(DATASET)
    counts = []
    for trial in study.trials[2:]:
        changed = changed_names(trial.params, better)
        counts.append(len(changed))
        assert 1 <= len(changed) <= MAX_CHANGES, (trial.number, changed)
        assert all(admits(distributions[name], trial.params[name]) for name in trial.params)
    assert set(counts) == {1, 2}  # both neighbourhood sizes occur in 8 draws


def test_the_leading_start_point_is_the_one_with_the_lowest_value_so_far():
    _, points = space_and_points()
    sampler = StartPointNeighboursTPE(points, seed=0)
    study = optuna.create_study()
    assert sampler.leading_start_point(study, 0) == points[0]  # nothing reported: each in turn
    assert sampler.leading_start_point(study, 1) == points[1]
    space = get_space("default")
    distributions = {name: dist for name, dist in space.distributions(DATASET).items() if name in points[0]}
    study.add_trial(optuna.trial.create_trial(params=points[0], distributions=distributions, value=5.0))
    running = optuna.trial.create_trial(
        params=points[1], distributions=distributions, state=optuna.trial.TrialState.RUNNING, intermediate_values={4: 7.0, 8: 4.5}
    )
    study.add_trial(running)
    # The running trial's best intermediate value (4.5) is below the finished one's 5.0.
    assert sampler.leading_start_point(study, 0) == points[1]
    assert sampler.leading_start_point(study, 1) == points[1]


def test_after_start_up_tpe_samples_freely_and_runs_repeat_with_a_seed():
    _, points = space_and_points()

    def objective(config: dict) -> float:
        return config["learning_rate"] * 100 + config["hidden_layers"]

    def params(seed: int) -> list[dict]:
        sampler = StartPointNeighboursTPE(points, seed=seed, multivariate=True, group=True, n_startup_trials=4)
        return [trial.params for trial in run_study(sampler, 24, objective).trials]

    first = params(5)
    assert first == params(5)
    later = [max(len(changed_names(config, point)) for point in points) for config in first[4:]]
    assert max(later) > MAX_CHANGES  # TPE's draws are not confined to the neighbourhood


def test_without_start_points_it_is_tpe():
    space = get_space("default")
    define = space.define_by_run(DATASET)

    def params(sampler: optuna.samplers.BaseSampler) -> list[dict]:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda trial: define(trial)["learning_rate"], n_trials=6)
        return [trial.params for trial in study.trials]

    assert params(StartPointNeighboursTPE([], seed=1, n_startup_trials=3)) == params(
        optuna.samplers.TPESampler(seed=1, n_startup_trials=3)
    )


@pytest.mark.parametrize(("value", "expected"), [(500, True), (123, False), ("relu", False)])
def test_admits_names_values_outside_a_distribution(value, expected):
    assert admits(optuna.distributions.CategoricalDistribution([250, 500]), value) is expected
