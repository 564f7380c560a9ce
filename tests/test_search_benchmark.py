"""The search benchmark (benchmarks/search.py), the objective's ensemble extrapolation, the
sampler choice, own-file datasets, and when trials checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from driver_processes import ROOT

from benchmarks.derived import DERIVED_SETS, derive, pool_2x2
from benchmarks.oracle import known_structure_nll
from benchmarks.search import (
    SUITES,
    BaselineResult,
    DatasetRow,
    SweepFigures,
    best_so_far,
    combine_runs,
    compute_to_reach,
    delivered_the_same_model,
    ran_its_course,
    render_markdown,
    slot_use,
    table_rows,
    verdicts,
    winner_stopped_at,
    winner_stopped_at_seconds,
)
from made_core.config import TrainConfig
from made_core.data import Splits
from made_core.ensembles import ensemble_size_curve, extrapolated_nll
from made_core.evaluate import ensemble_nlls, mask_log_probs
from made_core.synthetic import BayesNetRecipe, MixtureRecipe, build_distribution, sample_splits
from made_core.train import Trainer
from search.run import main, make_plan, parse_args
from search.trainable import TrialSettings, objective_target_masks, should_checkpoint, should_report
from search.tuner import asha_rungs, make_sampler


# -- the objective: ensemble size curve and its extrapolation ----------------------------------
def test_extrapolation_is_exact_on_a_power_law_and_keeps_measured_sizes():
    law = {k: 80.0 + 6.0 * k**-0.5 for k in (1, 2, 4, 8)}
    assert extrapolated_nll(law, 8) == law[8] and extrapolated_nll(law, 2) == law[2]
    for target in (32, 256):
        assert extrapolated_nll(law, target) == pytest.approx(80.0 + 6.0 * target**-0.5, abs=1e-9)
    flat = {1: 50.0, 2: 50.0, 4: 50.0, 8: 50.0}
    assert extrapolated_nll(flat, 256) == 50.0  # no gain measured, none invented
    worse = {1: 50.0, 2: 49.0, 4: 49.5}
    assert extrapolated_nll(worse, 64) == 49.5
    # Gains shrinking by too little are capped, so the estimate stays finite and below the last point.
    slow = {1: 10.0, 2: 9.0, 4: 8.0, 8: 7.0}
    assert 7.0 - 1.0 * 0.9 * (1 - 0.9**5) / 0.1 == pytest.approx(extrapolated_nll(slow, 256))
    # Gains that grow from one doubling to the next are noise: the largest measured size stands.
    # (A curve measured on 100 validation rows: extrapolated, it put 32 masks 28 nats too low.)
    growing = {1: 298.9, 2: 293.2, 4: 285.2, 8: 236.5}
    assert extrapolated_nll(growing, 32) == 236.5
    assert extrapolated_nll({1: 50.0, 2: 50.5, 4: 49.0}, 16) == 49.0  # no first gain, then one


def test_ensemble_size_curve_averages_disjoint_groups():
    model_rows = torch.randn(8, 50, dtype=torch.float64) - 5.0  # (K, N) per-mask log-likelihoods
    curve = ensemble_size_curve(model_rows)
    assert list(curve) == [1, 2, 4, 8]
    assert curve[1] == pytest.approx(float(-model_rows.mean()))
    whole = torch.logsumexp(model_rows, 0) - math.log(8)
    assert curve[8] == pytest.approx(float(-whole.mean()))
    pairs = [torch.logsumexp(model_rows[i : i + 2], 0) - math.log(2) for i in range(0, 8, 2)]
    assert curve[2] == pytest.approx(float(-torch.stack(pairs).mean()))
    assert curve[1] > curve[2] > curve[4] > curve[8]  # Jensen: averaging probabilities only helps


def test_trainer_validates_with_the_extrapolated_test_ensemble(synthetic_rows):
    train, valid = synthetic_rows
    common = dict(hidden_sizes=(32,), num_masks=32, ordering="agnostic", max_epochs=2, patience=5, seed=3)
    measured = Trainer(TrainConfig(**common), train, valid)
    target = Trainer(TrainConfig(**common, valid_target_masks=32), train, valid)
    first, second = measured.run_to_validation(), target.run_to_validation()
    per_mask = mask_log_probs(target.model, valid, 8)
    assert first.valid_nll == pytest.approx(ensemble_nlls(measured.model, valid, [8])[8].mean)
    assert second.valid_nll == pytest.approx(extrapolated_nll(ensemble_size_curve(per_mask), 32))
    assert second.valid_nll < first.valid_nll  # same weights (same seed), more masks estimated
    with pytest.raises(ValueError, match="valid_target_masks=64 is not an ensemble size"):
        TrainConfig(**common, valid_target_masks=64)


@pytest.fixture
def synthetic_rows():
    generator = np.random.default_rng(0)
    return (generator.random((200, 12)) < 0.3).astype(np.float32), (generator.random((60, 12)) < 0.3).astype(np.float32)


def test_objective_targets_the_models_test_ensemble():
    settings = TrialSettings(max_epochs=10, patience=5, seed=0)
    assert objective_target_masks({"num_masks": 1}, settings) == 1
    assert objective_target_masks({"num_masks": 32}, settings) == 32
    assert objective_target_masks({"num_masks": 0}, settings) == 256  # mask sampling: the largest candidate
    capped = TrialSettings(max_epochs=10, patience=5, seed=0, test_masks=16)
    assert objective_target_masks({"num_masks": 8}, capped) == 8 and objective_target_masks({"num_masks": 0}, capped) == 16
    measured = TrialSettings(max_epochs=10, patience=5, seed=0, objective="valid-ensemble")
    assert objective_target_masks({"num_masks": 32}, measured) is None


# -- checkpoints and rungs ----------------------------------------------------------------------
def test_trials_checkpoint_at_rungs_by_time_and_at_the_end():
    assert asha_rungs(40, 200) == [40, 120] and asha_rungs(1, 8) == [1, 3] and asha_rungs(5, 5) == []
    timed = TrialSettings(max_epochs=200, patience=30, seed=0, checkpoint_seconds=10.0, rung_epochs=(40, 120))
    assert not should_checkpoint(timed, 7, done=False, seconds_since_last=2.0)
    assert should_checkpoint(timed, 7, done=False, seconds_since_last=10.5)
    assert should_checkpoint(timed, 40, done=False, seconds_since_last=0.1)  # ASHA may stop it here
    assert should_checkpoint(timed, 13, done=True, seconds_since_last=0.1)
    every = TrialSettings(max_epochs=200, patience=30, seed=0, checkpoint_every=5)
    assert should_checkpoint(every, 10, False, 0.0) and not should_checkpoint(every, 11, False, 99.0)
    # A trial validating every 4 epochs reports at 8 and 12: the multiple of 5 between them counts.
    assert should_checkpoint(every, 12, False, 0.0, previous_epoch=8) and not should_checkpoint(
        every, 9, False, 0.0, previous_epoch=6
    )


def test_a_trial_validating_every_few_epochs_reports_at_every_rung(monkeypatch):
    """ASHA judges trials at its rung epochs: a trial validating every 3 epochs still reports there."""
    from made_core.data import load_dataset
    from search import trainable

    reported: list[tuple[int, bool]] = []
    monkeypatch.setattr(
        trainable.tune, "report", lambda metrics, checkpoint=None: reported.append((metrics["epoch"], checkpoint is not None))
    )
    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trainable, "trial_device", lambda: "cpu")
    monkeypatch.setattr("ray.util.get_node_ip_address", lambda: "127.0.0.1")
    tiny = load_dataset("synthetic-tiny")
    config = {"hidden_layers": 1, "hidden_units": 8, "num_masks": 1, "ordering": "natural", "learning_rate": 1e-2}
    settings = TrialSettings(max_epochs=11, patience=30, seed=0, validate_every=3, rung_epochs=(2, 6), checkpoint_every=7)
    trainable.train_made(config, tiny.train, tiny.valid, settings)
    assert [epoch for epoch, _ in reported] == [2, 5, 6, 9, 11]
    # Checkpoints: at the rungs, after crossing a multiple of 7 (at 9), and at the end.
    assert [epoch for epoch, saved in reported if saved] == [2, 6, 9, 11]
    # Reports by time: a trial whose last report is recent skips the validation at 5 (not a
    # rung, no checkpoint) and still reports at the rungs, its checkpoint and its end.
    reported.clear()
    trainable.train_made(config, tiny.train, tiny.valid, dataclasses.replace(settings, report_seconds=3600.0))
    assert [epoch for epoch, _ in reported] == [2, 6, 9, 11]


def test_trials_report_by_time_besides_rungs_checkpoints_and_the_end():
    settings = TrialSettings(max_epochs=200, patience=30, seed=0, rung_epochs=(40, 120), report_seconds=1.0)
    assert not should_report(settings, 7, done=False, seconds_since_last=0.5)
    assert should_report(settings, 7, done=False, seconds_since_last=1.0)
    assert should_report(settings, 40, done=False, seconds_since_last=0.0)  # ASHA judges here
    assert should_report(settings, 9, done=True, seconds_since_last=0.0)
    every = dataclasses.replace(settings, report_seconds=0.0)
    assert should_report(every, 7, done=False, seconds_since_last=0.0)


# -- sampler and own dataset files --------------------------------------------------------------
def test_random_sampler_is_the_baseline_search(tmp_path):
    common = ["--dataset", "synthetic-tiny", "--storage", str(tmp_path / "runs")]
    guided, _ = make_plan(parse_args([*common, "--name", "guided"]))
    random, _ = make_plan(parse_args([*common, "--name", "random", "--sampler", "random"]))
    assert isinstance(make_sampler(guided), optuna.samplers.TPESampler)
    assert isinstance(make_sampler(random), optuna.samplers.RandomSampler)


def test_a_local_ray_starts_a_trial_per_slot_at_once_and_keeps_one_waiting(tmp_path):
    from dataclasses import replace

    from search.tuner import search_concurrency

    plan, _ = make_plan(parse_args(["--dataset", "synthetic-tiny", "--storage", str(tmp_path / "runs")]))
    assert plan.local_slots is None and search_concurrency(plan) is None  # a joined cluster: Ray's own rule
    assert search_concurrency(replace(plan, local_slots=2)) == 3
    assert search_concurrency(replace(plan, local_slots=2, concurrency=1)) == 1  # --concurrency rules


def test_an_own_npz_file_is_a_dataset_named_by_its_stem(tmp_path, capsys):
    rows = (np.random.default_rng(1).random((30, 6)) < 0.5).astype(np.float32)
    path = tmp_path / "coins.npz"
    np.savez(path, train_data=rows, valid_data=rows[:10], test_data=rows[:10])
    plan, _ = make_plan(parse_args(["--dataset", str(path), "--storage", str(tmp_path / "runs")]))
    assert plan.dataset == "coins" and plan.data_source == str(path.resolve()) and plan.name.startswith("coins-default-")
    assert main(["--dataset", str(tmp_path / "absent.npz"), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "absent.npz: no such file" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- derived sets -------------------------------------------------------------------------------
def test_pooling_is_a_2x2_or():
    image = np.zeros((1, 28, 28), dtype=np.float32)
    image[0, 0, 1] = 1.0  # block (0, 0)
    image[0, 27, 27] = 1.0  # block (13, 13)
    pooled = pool_2x2(image.reshape(1, 784)).reshape(14, 14)
    assert pooled.sum() == 2 and pooled[0, 0] == 1 and pooled[13, 13] == 1


def test_derived_sets_cut_the_first_rows_deterministically():
    generator = np.random.default_rng(2)
    split = lambda n: (generator.random((n, 784)) < 0.2).astype(np.float32)  # noqa: E731
    mnist = Splits("mnist", 784, split(600), split(2100), split(5100), None, None, "")
    small = derive(DERIVED_SETS["mnist-500"], mnist)
    assert small["train_data"].shape == (500, 784) and np.array_equal(small["train_data"], mnist.train[:500])
    assert small["valid_data"].shape == (2000, 784) and small["test_data"].shape == (2000, 784)
    assert derive(DERIVED_SETS["mnist-pooled"], mnist)["test_data"].shape == (5000, 196)


# -- the benchmark's figures --------------------------------------------------------------------
def _history(times, steps, values, epochs=None):
    epochs = epochs or list(range(1, len(values) + 1))
    return pd.DataFrame({"timestamp": times, "time_this_iter_s": steps, "best_valid_nll": values, "epoch": epochs})


def test_best_so_far_and_compute_to_reach():
    first = _history([1, 3, 5], [1.0, 1.0, 1.0], [10.0, 9.0, 8.0])
    second = _history([2, 4], [2.0, 2.0], [9.5, 7.0])
    curve = best_so_far([first, second, pd.DataFrame()])
    assert curve == [(1.0, 10.0), (3.0, 9.5), (4.0, 9.0), (6.0, 7.0), (7.0, 7.0)]
    assert compute_to_reach(curve, 9.0) == 4.0 and compute_to_reach(curve, 6.0) is None
    assert slot_use(90.0, 50.0, 2) == pytest.approx(0.9) and math.isnan(slot_use(1.0, 0.0, 2))


def test_winner_stopped_at_judges_the_winner_against_every_trial_at_the_rung():
    histories = {
        "a": _history([1, 2], [1, 1], [5.0, 4.0]),
        "b": _history([1, 2], [1, 1], [6.0, 5.0]),
        "c": _history([1, 2], [1, 1], [7.0, 3.0]),  # slow starter, best at the end
        "d": _history([1, 2], [1, 1], [8.0, 6.0]),
    }
    assert winner_stopped_at(histories, "c", [1, 2]) == {1: True, 2: False}
    assert winner_stopped_at(histories, "b", [1, 2]) == {1: False, 2: True}
    assert winner_stopped_at({"a": histories["a"]}, "a", [1]) == {}  # too few trials to judge


def test_rungs_on_time_judge_a_slow_good_trial_at_the_typical_trials_time():
    histories = {
        "a": _history([1, 2], [1, 1], [5.0, 4.0]),
        "b": _history([1, 2], [1, 1], [6.0, 5.0]),
        "c": _history([2, 4], [2, 2], [4.8, 3.0]),  # twice as slow per epoch, best per epoch
        "d": _history([1, 2], [1, 1], [8.0, 4.5]),
    }
    assert winner_stopped_at(histories, "c", [1, 2]) == {1: False, 2: False}
    # Epoch 2 took the median trial 2 s; by then c had done one epoch (4.8), behind a (4.0) and d (4.5).
    # Epoch 1 took it 1 s, before c's first report: c is not judged there.
    assert winner_stopped_at_seconds(histories, "c", [1, 2]) == {2: True}
    assert winner_stopped_at_seconds(histories, "a", [1, 2]) == {1: False, 2: False}


def _sweep(sampler, test, curve):
    return SweepFigures(sampler, f"x-{sampler}", test, 0.1, test, test, 10, 100.0, 190.0, 0.95, "1×500", {},
                        False, curve, {40: False})  # fmt: skip


def test_report_has_the_checks_and_the_reach_fraction():
    row = DatasetRow(
        "synthetic-x", 20, 1000, "true NLL", 10.0,
        {"defaults": BaselineResult("defaults", 10.5, 0.1, 8, 30, 3.0),
         "mask-sampling": BaselineResult("mask-sampling", 10.4, 0.1, 256, 30, 3.0)},
        {"tpe": _sweep("tpe", 10.05, [(10.0, 11.0), (40.0, 10.2), (100.0, 10.0)]),
         "random": _sweep("random", 10.2, [(10.0, 11.0), (100.0, 10.2)])},
    )  # fmt: skip
    assert row.baseline_nll == 10.4 and row.reach_fraction() == pytest.approx(0.4)
    assert verdicts(row) == {"beats_random": True, "beats_baseline": True, "within_1pct_of_true": True,
                             "reaches_random_in_half": True, "slot_use_ok": True}  # fmt: skip
    text = render_markdown([row], "smoke", SUITES["smoke"], {"command": "`x`"})
    assert (
        "| synthetic-x | 20 | 1000 | 10.00 (true NLL) | 10.40 |" in text
        and "| **passed** | 1/1 | 1/1 | 1/1 | 1/1 | 1/1 |" in text
    )
    frame = table_rows([row])
    assert frame.loc[0, "tpe_test_nll"] == 10.05 and frame.loc[0, "reach_fraction"] == pytest.approx(0.4)
    row.sweeps["tpe"].median_trial_nll, row.sweeps["tpe"].full_length_share = 10.5, 0.25
    text = render_markdown([row], "smoke", SUITES["smoke"], {"command": "`x`"})
    assert "| synthetic-x | 10.50 | - | 0.25 | - |" in text  # the typical trial; random's figures unknown
    assert "## Where the sweeps' slot time went" not in text  # no sweep measured it
    row.sweeps["tpe"].slot_time = {"slots": 2, "fit": 200.0, "training": 180.0, "in_trials": 4.0,
                                   "before_first": 8.0, "between": 6.0, "after_last": 2.0}  # fmt: skip
    text = render_markdown([row], "smoke", SUITES["smoke"], {"command": "`x`"})
    assert "| synthetic-x | tpe | 0.900 | 0.020 | 0.040 | 0.030 | 0.010 |" in text


def test_checks_say_when_guided_and_random_delivered_the_same_model():
    row = DatasetRow("synthetic-x", 20, 1000, "true NLL", 10.0, {},
                     {"tpe": _sweep("tpe", 10.2, [(100.0, 10.2)]), "random": _sweep("random", 10.2, [(100.0, 10.2)])})  # fmt: skip
    assert delivered_the_same_model(row) and verdicts(row)["beats_random"] is False
    text = render_markdown([row], "smoke", SUITES["smoke"], {"command": "`x`"})
    assert "| synthetic-x | **no**: the same model |" in text and "| **passed** | 0/1 (1 the same model) |" in text
    row.sweeps["random"].winner_config = {"hidden_units": 250}
    assert not delivered_the_same_model(row)
    text = render_markdown([row], "smoke", SUITES["smoke"], {"command": "`x`"})
    assert "| synthetic-x | **no** |" in text and "| **passed** | 0/1 |" in text


def _saved_run(folder, seed, results, command_seed=False, mixtures=None):
    """A run folder as write_report leaves it: dataset -> (guided test NLL, random test NLL), and
    ``mixtures``: dataset -> their mixtures' test NLLs (none written elsewhere)."""

    def sweep(sampler, test, mixture):
        return dataclasses.replace(_sweep(sampler, test, [(1.0, test)]), mixture_test_nll=mixture, mixture_models=2)

    mixtures = mixtures or {}
    rows = [DatasetRow(name, 20, 1000, "", math.nan, {},
                       {"tpe": sweep("tpe", guided, mixtures.get(name, (math.nan,) * 2)[0]),
                        "random": sweep("random", random, mixtures.get(name, (math.nan,) * 2)[1])})
            for name, (guided, random) in results.items()]  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "rows.json").write_text(json.dumps([dataclasses.asdict(row) for row in rows], default=str))
    header = {"command": f"`python -m benchmarks.search --seed {seed}`", "commit": "abc"}
    saved = {"header": header, "suite_name": "smoke", "suite": dataclasses.asdict(SUITES["smoke"])}
    (folder / "header.json").write_text(json.dumps(saved if command_seed else {**saved, "seed": seed}))
    return str(folder)


def test_combined_seeds_compare_guided_and_random_per_dataset(tmp_path):
    runs = [
        _saved_run(tmp_path / "a", 0, {"dna": (80.0, 81.0), "bn": (10.0, 9.0)}, mixtures={"dna": (79.0, 80.5)}),
        _saved_run(tmp_path / "b", 1, {"dna": (80.5, 81.5), "bn": (10.0, 9.5)}, mixtures={"dna": (79.5, 79.0)}),
        _saved_run(tmp_path / "c", 2, {"dna": (82.0, 81.0)}, command_seed=True),  # a run saved before seeds were
    ]
    text = combine_runs(runs, tmp_path / "out")
    assert (tmp_path / "out" / "search_benchmark_seeds.md").read_text() == text
    # dna: differences -1, -1, +1 -> mean -0.33, stderr 0.67 over seeds; guided lower on 2 of 3.
    assert "| dna | 0, 1, 2 | 80.00 / 80.50 / 82.00 | 81.00 / 81.50 / 81.00 | 80.83 | 81.17 | -0.33 ± 0.67 | 2/3 |" in text
    assert "| bn | 0, 1 | 10.00 / 10.00 | 9.00 / 9.50 | 10.00 | 9.25 | 0.75 ± 0.25 | 0/2 |" in text
    assert (
        "The delivered model: guided lower on the mean over seeds on 1 of 2 datasets; lower in 2 of 5 (dataset, seed) pairs"
        in text
    )
    # The mixtures: only dna's seeds 0 and 1 have both; differences -1.5 and +0.5.
    mixtures = text[text.index("## The finalists' mixture over seeds") :]
    assert "| dna | 0, 1 | 79.00 / 79.50 | 80.50 / 79.00 | 79.25 | 79.75 | -0.50 ± 1.00 | 1/2 |" in mixtures
    assert "| bn |" not in mixtures and "The mixture: guided lower on the mean over seeds on 1 of 1 datasets" in mixtures
    assert "| 40 | 10 | 0 | 0 | 0 |" in text  # the rung verdicts pooled over every run's sweeps
    with pytest.raises(ValueError, match="share a seed on a dataset \\(dna seed 0\\)"):
        combine_runs([runs[0], _saved_run(tmp_path / "d", 0, {"dna": (1.0, 2.0)})], tmp_path / "out")
    # One seed's datasets may come from several runs.
    split = combine_runs([*runs, _saved_run(tmp_path / "e", 2, {"bn": (9.0, 10.0)})], tmp_path / "out")
    assert "| bn | 0, 1, 2 |" in split
    refused = subprocess.run([sys.executable, "-m", "benchmarks.search", "--combine", f"{runs[0]},{tmp_path}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "holds no rows.json" in refused.stderr and refused.stderr.count("\n") == 1


def test_a_trial_ran_its_course_at_max_epochs_or_when_it_stopped_itself():
    assert ran_its_course({"epoch": 200, "stopped_early": False}, 200)
    assert ran_its_course({"epoch": 73, "stopped_early": True}, 200)
    assert not ran_its_course({"epoch": 40, "stopped_early": False}, 200)  # cut at a rung
    assert not ran_its_course({}, 200)  # never reported


@pytest.mark.parametrize("recipe", [BayesNetRecipe(max_parents=2, seed=7), MixtureRecipe(num_components=3, seed=7)])
def test_the_known_structure_fit_nears_the_true_nll_with_enough_rows(recipe):
    truth = build_distribution(8, recipe)
    splits = sample_splits(truth, {"train": 20_000, "valid": 2_000, "test": 5_000}, seed=7)
    true_nll = -float(truth.log_prob(splits["test"]).mean())
    many = known_structure_nll(recipe, splits["train"], splits["valid"], splits["test"])
    few = known_structure_nll(recipe, splits["train"][:40], splits["valid"][:40], splits["test"])
    assert abs(many / true_nll - 1) < 0.005 and few > many + 0.05  # a fit, not the truth: it needs rows


def test_unknown_benchmark_input_is_one_line_and_exit_2():
    run = subprocess.run([sys.executable, "-m", "benchmarks.search", "--datasets", "imagenet"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and "not benchmark datasets: imagenet" in run.stderr and run.stderr.count("\n") == 1


@pytest.mark.slow
def test_smoke_suite_writes_its_table_csv_and_figure(tmp_path, ray_env):
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.search", "--suite", "smoke", "--budget", "15", "--baselines", "single-mask",
         "--output", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
        cwd=ROOT, env=ray_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    text = (tmp_path / "out" / "search_benchmark.md").read_text()
    assert "| synthetic-tiny | 10 | 1000 |" in text and "## Would ASHA have stopped the final winner?" in text
    frame = pd.read_csv(tmp_path / "out" / "search_benchmark.csv")
    assert frame.loc[0, "tpe_trials"] >= 2 and frame.loc[0, "random_trials"] >= 2
    assert json.loads(frame.loc[0, "tpe_winner_config"])["hidden_layers"] >= 1
    assert (tmp_path / "out" / "search_benchmark.png").stat().st_size > 10_000
    assert "baseline single-mask" in run.stdout and "tpe search: test" in run.stdout
    assert "## Synthetic sets: what their training rows allow" in text and "known-structure fit" in run.stdout
    assert "## Where the sweeps' slot time went" in text and "| synthetic-tiny | random | " in text
    # The report is rebuilt from the run's saved rows alone, the same as written.
    (run_folder,) = (tmp_path / "work").glob("2*")
    rendered = subprocess.run(
        [sys.executable, "-m", "benchmarks.search", "--suite", "smoke", "--render", str(run_folder), "--output", str(tmp_path / "again")],
        cwd=ROOT, env=ray_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert (tmp_path / "again" / "search_benchmark.md").read_text() == text
    refused = subprocess.run([sys.executable, "-m", "benchmarks.search", "--render", str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "holds no rows.json" in refused.stderr and refused.stderr.count("\n") == 1


def test_the_fused_kernels_are_built_by_the_driver_before_cpu_trials(tmp_path, monkeypatch):
    from made_core import fused_adam
    from search.run import prepare_fused_kernels

    calls = []
    monkeypatch.setattr(fused_adam, "load_kernels", lambda: calls.append(1))
    plan, _ = make_plan(parse_args(["--dataset", "synthetic-tiny", "--storage", str(tmp_path / "r")]))
    assert prepare_fused_kernels(plan) is not None and calls == [1]
    gpu_plan, _ = make_plan(
        parse_args(["--dataset", "synthetic-tiny", "--gpus-per-trial", "1", "--storage", str(tmp_path / "r")])
    )
    assert prepare_fused_kernels(gpu_plan) is None and calls == [1]
    monkeypatch.setenv(fused_adam.OPT_OUT_VARIABLE, "0")
    assert prepare_fused_kernels(plan) is None and calls == [1]


def test_asha_never_stops_the_spaces_start_points(tmp_path):
    from types import SimpleNamespace

    from search.tuner import make_scheduler

    plan, _ = make_plan(
        parse_args(["--dataset", "dna", "--max-epochs", "9", "--grace-period", "1", "--storage", str(tmp_path / "r")])
    )
    scheduler = make_scheduler(plan)
    scheduler.set_search_properties("best_valid_nll", "min")
    defaults = dict(plan.space.start_points(plan.dataset)[1], activation="relu", optimizer="adam", momentum=0.0)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={**defaults, "learning_rate": 0.01 + i}) for i in range(4)]
    slow = SimpleNamespace(trial_id="start", config=defaults)  # the library's defaults, learning slowly
    for trial in [*trials, slow]:
        scheduler.on_trial_add(None, trial)
    for trial in trials:
        scheduler.on_trial_result(None, trial, {"epoch": 1, "best_valid_nll": 80.0})
    assert scheduler.on_trial_result(None, slow, {"epoch": 1, "best_valid_nll": 95.0}) == scheduler.CONTINUE
    # The same result from a trial that is no start point is stopped: ASHA itself is unchanged.
    assert scheduler.on_trial_result(None, trials[0], {"epoch": 3, "best_valid_nll": 80.0}) == scheduler.CONTINUE
    assert scheduler.on_trial_result(None, trials[1], {"epoch": 3, "best_valid_nll": 79.0}) == scheduler.CONTINUE
    assert scheduler.on_trial_result(None, trials[2], {"epoch": 3, "best_valid_nll": 95.0}) == scheduler.STOP
    assert scheduler.on_trial_result(None, slow, {"epoch": 3, "best_valid_nll": 95.0}) == scheduler.CONTINUE


def test_brackets_give_some_trials_a_later_first_rung(tmp_path):
    from search.tuner import make_scheduler

    plan, _ = make_plan(parse_args(["--dataset", "synthetic-tiny", "--brackets", "2", "--storage", str(tmp_path / "r")]))
    scheduler = make_scheduler(plan)
    first_rungs = sorted(min(milestone for milestone, _ in bracket._rungs) for bracket in scheduler._brackets)
    assert plan.brackets == 2 and first_rungs == [40, 120]  # grace 200 // 5, then x 3


def test_a_budget_driven_sweep_is_guided_once_its_start_points_are_done(tmp_path):
    common = ["--dataset", "synthetic-tiny", "--storage", str(tmp_path / "r")]
    budget, _ = make_plan(parse_args([*common, "--time-budget", "3m"]))
    counted, _ = make_plan(parse_args([*common, "--num-samples", "60"]))
    assert len(budget.space.start_points(budget.dataset)) == 2
    assert make_sampler(budget)._n_startup_trials == 2 and make_sampler(counted)._n_startup_trials == 10
    warm = dataclasses.replace(budget, warm_start=({"num_masks": 1}, {"num_masks": 4}))
    assert make_sampler(warm)._n_startup_trials == 4


# -- the ablation benchmark ---------------------------------------------------------------------
def test_the_seed_chosen_on_validation_is_the_lowest_validation_nll():
    from benchmarks.ablation import chosen_on_validation

    runs = [BaselineResult("base", test, 0.1, 8, 30, 3.0, valid) for test, valid in ((10.0, 9.5), (10.2, 9.4), (9.8, 9.6))]
    assert chosen_on_validation(runs) == (1, runs[1])  # by validation, never by test


def test_ablation_assignments_are_checked_by_the_vocabulary():
    from benchmarks.ablation import parse_assignments

    assert parse_assignments("activation=tanh, num_masks=32,direct_connection=false,learning_rate=3e-3") == {
        "activation": "tanh", "num_masks": 32, "direct_connection": False, "learning_rate": 0.003,
    }  # fmt: skip
    for bad, message in (("activation=sigmoid", "activation must be one of relu, tanh"), ("depth=3", "expected name=value"),
                         ("num_masks=-1", "num_masks must be"), ("num_masks", "expected name=value")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_assignments(bad)


def test_ablation_runs_both_configurations_per_seed_and_writes_its_table(tmp_path):
    out = tmp_path / "ablation.md"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.ablation", "--change", "activation=tanh", "--base", "hidden_units=16,num_masks=2",
         "--datasets", "synthetic-tiny", "--seeds", "2", "--max-epochs", "2", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    text = out.read_text()
    assert text.startswith("# Ablation: activation=tanh on hidden_units=16, num_masks=2")
    row = next(line for line in text.splitlines() if line.startswith("| synthetic-tiny |"))
    assert "/2 |" in row and run.stdout.count("synthetic-tiny seed") == 4
    chosen = [
        line for line in text.split("## Choosing among the seeds on validation")[1].splitlines() if "synthetic-tiny" in line
    ]
    assert [line.split(" | ")[1] for line in chosen] == ["base", "changed"]
    refused = subprocess.run([sys.executable, "-m", "benchmarks.ablation", "--change", "activation=sigmoid"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "activation must be one of" in refused.stderr
