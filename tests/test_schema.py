"""What the writers in ``search`` write is what ``results.schema`` declares, and ``results`` reads it back.

The writers run for real without a Ray cluster: the trainable trains a tiny MADE with
``ray.tune.report`` captured, its reports and checkpoints become the trial records the driver
reads back from Ray, and from those the driver's functions write experiment.json, trials.csv,
curves.csv, best.json and best_model/. Fast, offline.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from ray import tune

from made_core.data import load_dataset
from results import schema
from results.experiments import read_experiment
from results.tables import order_hyperparameters
from search import trainable
from search.experiment import (
    TrialRecord,
    curves_table,
    evaluate_best,
    reselect,
    trials_table,
    write_json,
    write_trial_files,
)
from search.provenance import provenance
from search.run import experiment_info, make_plan, parse_args, resolved_settings
from search.trainable import TrialSettings, train_made

CONFIG = {"hidden_layers": 1, "hidden_units": 16, "num_masks": 2, "ordering": "agnostic", "learning_rate": 1e-2}
EPOCHS = 3


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic-tiny")


@pytest.fixture
def trial(tiny, tmp_path, monkeypatch) -> TrialRecord:
    """One trial trained by the real trainable; what it reported, as the driver reads it back from Ray."""
    reports: list[dict] = []
    checkpoints: list[tune.Checkpoint] = []

    def report(metrics, checkpoint=None):
        reports.append(dict(metrics))
        if checkpoint is not None:  # the trainable's folder is temporary: keep a copy, as Ray does
            kept = tmp_path / "trial" / f"checkpoint_{len(checkpoints):06d}"
            shutil.copytree(checkpoint.path, kept)
            checkpoints.append(tune.Checkpoint.from_directory(str(kept)))

    monkeypatch.setattr(trainable.tune, "report", report)
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trainable, "trial_device", lambda: "cpu")
    monkeypatch.setattr("ray.util.get_node_ip_address", lambda: "127.0.0.1")
    train_made(CONFIG, tiny.train, tiny.valid, TrialSettings(max_epochs=EPOCHS, patience=30, seed=0, checkpoint_every=1))
    assert len(reports) == EPOCHS and len(checkpoints) == EPOCHS
    for metrics in reports:
        assert tuple(metrics) == schema.TRIAL_METRICS
    last = {**reports[-1], "time_total_s": 1.5}  # Ray adds its own keys to every result
    return TrialRecord(
        trial_id="abc_00000", status="TERMINATED", config=dict(CONFIG), last_result=last,
        history=pd.DataFrame(reports), num_failures=0, checkpoint=checkpoints[-1],
    )  # fmt: skip


def test_schema_tuples_come_from_the_types():
    assert schema.OBJECTIVE in schema.TRIAL_METRICS
    assert set(schema.CURVE_METRICS) <= set(schema.TRIAL_METRICS)
    assert schema.CURVE_COLUMNS == ("trial_id", *schema.CURVE_METRICS)
    assert set(schema.TRIAL_NUMERIC_COLUMNS) <= set(schema.TRIAL_COLUMNS) and "node_ip" not in schema.TRIAL_NUMERIC_COLUMNS
    assert schema.EXPERIMENT_KEYS + schema.EXPERIMENT_RUN_KEYS + schema.EXPERIMENT_OPTIONAL_KEYS == tuple(
        schema.ExperimentInfo.__annotations__
    )
    assert schema.BEST_KEYS + schema.BEST_OPTIONAL_KEYS == tuple(schema.BestTrial.__annotations__)
    assert schema.EXPERIMENT_KEYS[:2] == ("experiment", "dataset") and "optuna_storage" in schema.EXPERIMENT_RUN_KEYS


def test_trial_tables_have_the_schema_columns(trial):
    trials = trials_table([trial])
    assert list(trials.columns) == [*schema.TRIAL_COLUMNS, *order_hyperparameters(CONFIG)]
    row = trials.iloc[0]
    assert row["epochs"] == EPOCHS and row["best_valid_nll"] == trial.last_result[schema.OBJECTIVE] and row["wall_seconds"] == 1.5
    curves = curves_table([trial])
    assert list(curves.columns) == list(schema.CURVE_COLUMNS) and list(curves["epoch"]) == list(range(1, EPOCHS + 1))


def test_experiment_folder_written_is_the_schema_and_reads_back(trial, tiny, tmp_path):
    storage = tmp_path / "runs"
    args = parse_args(["--dataset", "synthetic-tiny", "--space", "quick", "--storage", str(storage), "--name", "exp",
                       "--num-samples", "2", "--max-epochs", str(EPOCHS)])  # fmt: skip
    plan, previous = make_plan(args)
    run = {"command": "made-search ...", "settings": resolved_settings(plan, args), "provenance": provenance()}
    folder = storage / "exp"
    declared = {*schema.EXPERIMENT_KEYS, *schema.EXPERIMENT_RUN_KEYS, *schema.EXPERIMENT_OPTIONAL_KEYS}

    running = experiment_info(plan, previous, "running", time.time(), tiny, run)
    assert set(running) <= declared and set(schema.EXPERIMENT_KEYS) <= set(running)
    assert set(schema.EXPERIMENT_RUN_KEYS) - set(running) == {"stopped_by_time_budget"}  # known only at the end
    finished = experiment_info(plan, previous, "finished", time.time(), tiny, run, num_trials=1)
    assert set(finished) <= declared and set(schema.EXPERIMENT_KEYS) | set(schema.EXPERIMENT_RUN_KEYS) <= set(finished)
    assert finished["stopped_by_time_budget"] is True and finished["num_trials"] == 1  # 1 of --num-samples 2
    assert tuple(finished["provenance"]) == schema.PROVENANCE_KEYS
    assert {"true_test_nll", "data_note"} <= set(finished)  # synthetic-tiny knows its true NLL and has a note

    write_json(folder / schema.EXPERIMENT_FILE, finished)
    write_trial_files(folder, [trial])
    extra: schema.BestOptional = {"true_test_nll": float(tiny.true_test_nll), "checkpoint_uri": "s3://bucket/runs/exp/best_model",
                                  "finalists_left_out_for_time": ["t2"]}  # fmt: skip
    ranked = reselect([trial], tiny.valid, None, 3, plan.seed)
    best = evaluate_best(folder, ranked, plan.dataset, tiny.test, extra, mix=True)
    assert best is not None
    assert set(best) == {*schema.BEST_KEYS, *schema.BEST_OPTIONAL_KEYS}
    assert Path(best["checkpoint_path"]) == folder / schema.BEST_MODEL_FOLDER and (folder / schema.BEST_MODEL_FOLDER).is_dir()
    # One finalist: its mixture is that model alone, with the same figures.
    assert [m["weight"] for m in best["mixture"]["models"]] == [1.0]
    assert best["mixture"]["test_nll"] == pytest.approx(best["test_nll"])
    assert Path(best["mixture"]["path"]) == folder / schema.BEST_MIXTURE_FOLDER

    experiment = read_experiment(folder)
    assert (
        experiment.problems == []
        and experiment.dataset == "synthetic-tiny"
        and experiment.hyperparameters == order_hyperparameters(CONFIG)
    )
    assert experiment.best is not None and experiment.best["trial_id"] == trial.trial_id
    assert experiment.curves is not None and list(experiment.curves.columns) == list(schema.CURVE_COLUMNS)
    assert experiment.info["optuna_storage"] == plan.optuna_storage  # what --resume reads back


def test_the_final_pick_is_the_best_finalist_on_validation_with_its_test_ensemble(trial, tiny, tmp_path):
    from dataclasses import replace

    from made_core.ensembles import choose_test_masks
    from made_core.train import load_best_model

    # Two trials of the same run: "early" holds the first epoch's weights (a worse model) but claims
    # the better sweep objective, as a noisy small-ensemble validation NLL can.
    early = replace(trial, trial_id="early", checkpoint=tune.Checkpoint.from_directory(str(tmp_path / "trial" / "checkpoint_000000")),
                    last_result={**trial.last_result, schema.OBJECTIVE: trial.best_valid_nll - 1.0})  # fmt: skip
    with early.checkpoint.as_directory() as folder:
        early_valid = choose_test_masks(load_best_model(folder), tiny.valid).valid.mean
    with trial.checkpoint.as_directory() as folder:
        final_valid = choose_test_masks(load_best_model(folder), tiny.valid).valid.mean
    assert final_valid < early_valid
    best = evaluate_best(tmp_path / "exp", reselect([early, trial], tiny.valid, None, 3, 0), "synthetic-tiny", tiny.test)
    assert best is not None and best["trial_id"] == trial.trial_id and best["valid_nll"] == pytest.approx(final_valid)
    assert [f["trial_id"] for f in best["finalists"]] == [trial.trial_id, "early"]
    assert best["finalists"][1]["sweep_valid_nll"] == pytest.approx(trial.best_valid_nll - 1.0)
    only_top = evaluate_best(tmp_path / "exp1", reselect([early, trial], tiny.valid, None, 1, 0), "synthetic-tiny", tiny.test)
    assert only_top is not None and only_top["trial_id"] == "early"
    # Out of time: the sweep's best is still evaluated, the others are left out.
    assert [f.record.trial_id for f in reselect([early, trial], tiny.valid, None, 3, 0, seconds=0.0)] == ["early"]
    assert len(reselect([early, trial], tiny.valid, None, 3, 0, seconds=600.0)) == 2


def test_the_finalists_mixture_is_chosen_on_validation_tested_once_and_loads_back(trial, tiny, tmp_path):
    from dataclasses import replace

    from made_core.evaluate import nll_of
    from made_core.mixture import load_mixture

    early = replace(
        trial, trial_id="early", checkpoint=tune.Checkpoint.from_directory(str(tmp_path / "trial" / "checkpoint_000000"))
    )
    ranked = reselect([early, trial], tiny.valid, None, 3, 0)
    best = evaluate_best(tmp_path / "exp", ranked, "synthetic-tiny", tiny.test, mix=True)
    assert best is not None
    mixture = best["mixture"]
    assert mixture["models"][0]["trial_id"] == best["trial_id"]  # selection starts from the chosen model
    assert sum(m["weight"] for m in mixture["models"]) == pytest.approx(1.0)
    assert mixture["valid_nll"] <= best["valid_nll"] + 1e-9  # never worse than the chosen model on validation
    loaded = load_mixture(mixture["path"])
    assert list(loaded.weights) == pytest.approx([m["weight"] for m in mixture["models"]])
    assert nll_of(loaded.log_prob(tiny.test)).mean == pytest.approx(mixture["test_nll"], rel=1e-6)
    assert nll_of(loaded.log_prob(tiny.valid)).mean == pytest.approx(mixture["valid_nll"], rel=1e-6)
    assert "left_out_for_time" not in mixture  # no time budget: no limit
    # Not asked for: no mixture.
    plain = evaluate_best(tmp_path / "exp1", ranked, "synthetic-tiny", tiny.test)
    assert plain is not None and "mixture" not in plain and not (tmp_path / "exp1" / schema.BEST_MIXTURE_FOLDER).exists()


def test_a_retraining_with_another_seed_is_chosen_only_when_it_validates_better(trial, tiny, tmp_path):
    from dataclasses import replace

    # "early" (the first epoch's weights) leads the sweep; "trial" stands for its retraining with seed 7.
    early = replace(
        trial, trial_id="early", checkpoint=tune.Checkpoint.from_directory(str(tmp_path / "trial" / "checkpoint_000000"))
    )
    retrained = replace(trial, config={**trial.config, schema.TRIAL_SEED_KEY: 7})
    [leader] = reselect([early], tiny.valid, None, 1, seed=3)
    [better] = reselect([retrained], tiny.valid, None, 1, seed=3)
    assert (leader.seed, better.seed) == (3, 7) and better.valid_nll < leader.valid_nll

    best = evaluate_best(tmp_path / "exp", [leader], "synthetic-tiny", tiny.test, reseeded=[better])
    assert best is not None and best["trial_id"] == trial.trial_id and best["seed"] == 7
    assert best["config"] == trial.config  # the seed is not a hyperparameter
    assert [(r["trial_id"], r["seed"]) for r in best["reseeds"]] == [("early", 3), (trial.trial_id, 7)]
    assert best["valid_nll"] == pytest.approx(better.valid_nll)

    kept = evaluate_best(tmp_path / "exp1", [better], "synthetic-tiny", tiny.test, reseeded=[leader])
    assert kept is not None and kept["seed"] == 7 and [r["seed"] for r in kept["reseeds"]] == [7, 3]
    alone = evaluate_best(tmp_path / "exp2", [leader], "synthetic-tiny", tiny.test)
    assert alone is not None and alone["seed"] == 3 and alone["reseeds"] == []


def test_a_trial_config_may_carry_its_own_seed(tiny, monkeypatch):
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trainable, "trial_device", lambda: "cpu")
    monkeypatch.setattr("ray.util.get_node_ip_address", lambda: "127.0.0.1")

    def valid_nlls(config: dict, seed: int) -> list[float]:
        reports: list[dict] = []
        monkeypatch.setattr(trainable.tune, "report", lambda metrics, checkpoint=None: reports.append(dict(metrics)))
        train_made(config, tiny.train, tiny.valid, TrialSettings(max_epochs=2, patience=30, seed=seed, checkpoint_every=1))
        return [report["valid_nll"] for report in reports]

    own_seed = valid_nlls({**CONFIG, schema.TRIAL_SEED_KEY: 5}, seed=0)
    assert own_seed == valid_nlls(CONFIG, seed=5) and own_seed != valid_nlls(CONFIG, seed=0)


def test_the_mixture_leaves_out_models_whose_test_evaluation_would_not_fit_the_time(trial, tiny, tmp_path):
    from dataclasses import replace

    early = replace(
        trial, trial_id="early", checkpoint=tune.Checkpoint.from_directory(str(tmp_path / "trial" / "checkpoint_000000"))
    )
    ranked = reselect([early, trial], tiny.valid, None, 3, 0)
    # Validation figures good on complementary halves of the rows, so that both models are mixed.
    half = len(tiny.valid) // 2
    for index, finalist in enumerate(ranked):
        crafted = torch.full((len(tiny.valid),), -20.0, dtype=torch.float64)
        crafted[index * half : (index + 1) * half] = -5.0
        ranked[index] = replace(finalist, ensemble=replace(finalist.ensemble, valid_log_probs=crafted))
    unlimited = evaluate_best(tmp_path / "exp", ranked, "synthetic-tiny", tiny.test, mix=True)
    assert unlimited is not None and len(unlimited["mixture"]["models"]) == 2
    # The second model's test evaluation, projected from its validation one, takes more than no time.
    assert ranked[1].ensemble.projected_seconds(len(tiny.test)) > 0
    timed = evaluate_best(tmp_path / "exp1", ranked, "synthetic-tiny", tiny.test, mix=True, mixture_seconds=0.0)
    assert timed is not None
    assert [m["trial_id"] for m in timed["mixture"]["models"]] == [timed["trial_id"]]
    assert timed["mixture"]["left_out_for_time"] == [ranked[1].record.trial_id]
    assert timed["mixture"]["test_seconds_allowed"] == 0.0
    # Room for it: mixed as without a limit.
    roomy = evaluate_best(tmp_path / "exp2", ranked, "synthetic-tiny", tiny.test, mix=True, mixture_seconds=3600.0)
    assert roomy is not None and len(roomy["mixture"]["models"]) == 2 and roomy["mixture"]["left_out_for_time"] == []
