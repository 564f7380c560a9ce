"""search.run end to end through a real local Ray: a sweep, a diverging trial, resume after a kill, bad input."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from driver_processes import finish, kill_after_finished, kill_group, start_driver

from results import schema
from results.experiments import read_experiment
from search.experiment import read_ray_trials
from search.run import DEFAULT_NUM_SAMPLES, UsageError, main, make_plan, parse_args, parse_duration, trial_count
from spaces import HYPERPARAMETERS


def start_sweep(tmp_path: Path, env: dict, *extra: str) -> subprocess.Popen:
    return start_driver(["--storage", str(tmp_path / "runs"), "--tables-dir", str(tmp_path / "tables"),
                         "--figures-dir", str(tmp_path / "figures"), "--num-cpus", "2", *extra], env)  # fmt: skip


@pytest.mark.slow
def test_sweep_writes_results_and_study(tmp_path, ray_env):
    process = start_sweep(tmp_path, ray_env, "--dataset", "synthetic-tiny", "--space", "quick", "--num-samples", "4",
                          "--max-epochs", "4", "--grace-period", "2", "--name", "tiny", "--seed", "3")  # fmt: skip
    output = finish(process)
    assert process.returncode == 0, output
    experiment = tmp_path / "runs" / "tiny"
    trials = pd.read_csv(experiment / schema.TRIALS_FILE)
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert list(trials["trial_number"]) == [1, 2, 3, 4]  # creation order: the start point is trial 1
    assert list(trials.columns[: len(schema.TRIAL_COLUMNS)]) == list(schema.TRIAL_COLUMNS)
    assert set(HYPERPARAMETERS) <= set(trials.columns)
    assert (trials["status"] == "TERMINATED").all() and trials["best_valid_nll"].map(math.isfinite).all()
    curves = pd.read_csv(experiment / schema.CURVES_FILE)
    assert set(curves["trial_id"]) == set(trials["trial_id"]) and curves["epoch"].max() <= 4
    best = json.loads((experiment / schema.BEST_FILE).read_text())
    assert set(schema.BEST_KEYS) <= set(best)
    assert best["sweep_valid_nll"] == pytest.approx(trials["best_valid_nll"].min())
    assert best["valid_nll"] == best["valid_nll_by_test_masks"][str(best["test_masks"])]  # the reported ensemble
    assert math.isfinite(best["test_nll"]) and best["test_nll_stderr"] > 0
    assert best["true_test_nll"] < best["test_nll"] + 3 * best["test_nll_stderr"]
    assert (Path(best["checkpoint_path"]) / "model.pt").exists()
    assert best["seed"] == 3 and best["reseeds"] == [] and not (experiment / schema.RESEEDS_FOLDER).exists()  # no budget
    # The finalists' mixture: chosen on validation, never worse there than the chosen model, loadable.
    mixture = best["mixture"]
    assert len(best["finalists"]) == 4 and 1 <= len(mixture["models"]) <= 4
    assert mixture["models"][0]["trial_id"] == best["trial_id"] and mixture["valid_nll"] <= best["valid_nll"] + 1e-9
    assert sum(m["weight"] for m in mixture["models"]) == pytest.approx(1.0) and math.isfinite(mixture["test_nll"])
    assert (
        Path(mixture["path"]) == experiment / schema.BEST_MIXTURE_FOLDER
        and (experiment / schema.BEST_MIXTURE_FOLDER / "mixture.json").exists()
    )
    info = json.loads((experiment / schema.EXPERIMENT_FILE).read_text())
    assert info["status"] == "finished" and info["num_trials"] == 4 and info["wall_seconds"] > 0
    # ISO 8601 UTC strings of one format compare in time order.
    assert info["started_at"] < info["finished_at"]
    # Where the slots' fit time went: the parts add up, the trials trained, and the slots idled before the first.
    parts = info["slot_time"]
    assert set(parts) == set(schema.SlotTime.__annotations__)
    assert parts["fit"] == pytest.approx(parts["slots"] * info["fit_seconds"], abs=0.5)
    assert sum(parts[k] for k in schema.SLOT_TIME_PARTS) == pytest.approx(parts["fit"], abs=0.5)
    assert parts["training"] > 0 and parts["before_first"] > 0
    # The Optuna study lives in SQLite inside the experiment, readable by optuna-dashboard.
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{experiment / schema.STUDY_FILE}")
    assert len(study.trials) == 4
    # Trials ASHA stopped before max_epochs are PRUNED; the others ran their course.
    epochs_by_value = dict(zip(trials["best_valid_nll"].round(9), trials["epochs"]))
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert max(trial.intermediate_values) < 4
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert epochs_by_value[round(trial.value, 9)] == 4
    assert study.best_value >= best["sweep_valid_nll"] - 1e-9
    # The aggregated figures were drawn.
    figures = list((tmp_path / "figures").glob("*.png"))
    assert any(f.name.startswith("tiny_curves") for f in figures) and all(f.stat().st_size > 1000 for f in figures)
    # The aggregated tables were refreshed.
    table = pd.read_csv(tmp_path / "tables" / schema.BEST_TABLE)
    assert table.loc[0, "dataset"] == "synthetic-tiny" and table.loc[0, "test_nll"] == pytest.approx(best["test_nll"])
    assert "sweep best" in output and "best trial" in output
    assert "Failed to fetch metrics" not in output and "No checkpoints have been found" not in output

    # A trial the budget stops before its first report leaves no result files and no checkpoint:
    # read as a trial with no results, without Ray's warning and error about it; other problems
    # reading a trial keep Ray's warning.
    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    def read_with_ray_warnings() -> tuple[dict, list[str]]:
        catch, ray_analysis = Collect(), logging.getLogger("ray.tune.analysis.experiment_analysis")
        ray_analysis.addHandler(catch)
        try:
            read = {record.trial_id: record for record in read_ray_trials(experiment)}
        finally:
            ray_analysis.removeHandler(catch)
        return read, catch.messages

    silent, corrupt = trials["trial_id"][1], trials["trial_id"][2]
    for checkpoint in (experiment / f"trial_{silent}").glob("checkpoint_*"):
        shutil.rmtree(checkpoint)
    for leftover in ("result.json", "progress.csv"):
        (experiment / f"trial_{silent}" / leftover).unlink()
    read, warnings = read_with_ray_warnings()
    assert warnings == [] and read[silent].history.empty and not read[trials["trial_id"][0]].history.empty
    for leftover in ("result.json", "progress.csv"):
        (experiment / f"trial_{corrupt}" / leftover).write_text("{not json")
    read, warnings = read_with_ray_warnings()
    assert len(warnings) == 1 and "Failed to fetch metrics" in warnings[0] and corrupt in warnings[0], warnings


_SILENT_TRIALS_SCRIPT = """
import contextlib, logging, sys, time
import ray
from ray import tune
from search.experiment import quiet_about_trials_that_reported_nothing

class Count(logging.Handler):
    count = 0
    def emit(self, record):
        Count.count += "Failed to fetch metrics" in record.getMessage()

logging.getLogger("ray.tune.analysis.experiment_analysis").addHandler(Count())

def silent(config):  # never reports: one trial runs, the other waits for the one CPU
    time.sleep(600)

ray.init(num_cpus=1, include_dashboard=False)
for name, quiet in (("loud", False), ("quiet", True)):
    before = Count.count
    tuner = tune.Tuner(silent, tune_config=tune.TuneConfig(num_samples=2, time_budget_s=8),
                       run_config=tune.RunConfig(storage_path=sys.argv[1], name=name, verbose=0))
    with quiet_about_trials_that_reported_nothing() if quiet else contextlib.nullcontext():
        tuner.fit()
    print(name, Count.count - before, flush=True)
ray.shutdown()
"""


@pytest.mark.slow
def test_fit_says_nothing_of_trials_the_budget_stopped_before_their_first_report(tmp_path, ray_env):
    # run_sweep fits inside quiet_about_trials_that_reported_nothing: Tune's ResultGrid would
    # otherwise warn at the end of a budget-driven sweep about the trial still waiting for a slot
    # (the "loud" fit shows it does).
    process = subprocess.Popen([sys.executable, "-c", _SILENT_TRIALS_SCRIPT, str(tmp_path)], env=ray_env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    output = finish(process, timeout=240)
    assert process.returncode == 0, output
    counts = dict(line.split() for line in output.splitlines() if line.startswith(("loud ", "quiet ")))
    assert counts == {"loud": "1", "quiet": "0"}, output


@pytest.mark.slow
def test_diverging_trial_fails_and_sweep_still_reports(tmp_path, ray_env):
    space = tmp_path / "diverge.yaml"
    space.write_text(
        "params:\n"
        "  learning_rate: {choice: [1.0e+30, 0.05]}\n"
        "fixed: {optimizer: sgd, momentum: 0.0, hidden_units: 16, num_masks: 1, batch_size: 100}\n"
    )
    process = start_sweep(tmp_path, ray_env, "--dataset", "synthetic-tiny", "--space", str(space), "--num-samples", "6",
                          "--max-epochs", "3", "--grace-period", "3", "--name", "diverge", "--max-failures", "1")  # fmt: skip
    output = finish(process)
    assert process.returncode == 0, output
    trials = pd.read_csv(tmp_path / "runs" / "diverge" / schema.TRIALS_FILE)
    absurd = trials[trials["learning_rate"] > 1e20]
    sane = trials[trials["learning_rate"] < 1]
    assert len(absurd) >= 1 and len(sane) >= 1, trials
    assert (absurd["status"] == "ERROR").all()
    assert (sane["status"] == "TERMINATED").all()
    best = json.loads((tmp_path / "runs" / "diverge" / schema.BEST_FILE).read_text())
    assert best["config"]["learning_rate"] == 0.05 and math.isfinite(best["test_nll"])
    study = optuna.load_study(study_name="diverge", storage=f"sqlite:///{tmp_path / 'runs' / 'diverge' / schema.STUDY_FILE}")
    states = {t.params["learning_rate"]: t.state for t in study.trials}
    assert states[1e30] == optuna.trial.TrialState.FAIL
    assert "FAILED" in output


@pytest.mark.slow
def test_resume_after_driver_killed_loses_nothing(tmp_path, ray_env):
    # 150 epochs (a few seconds a trial): with actors reused, trials of a few epochs all finish
    # within the moment between the second one finishing and the kill.
    common = ["--dataset", "synthetic-tiny", "--space", "quick", "--num-samples", "6", "--max-epochs", "150",
              "--grace-period", "150", "--patience", "1000", "--name", "resumable", "--concurrency", "1"]  # fmt: skip
    process = start_sweep(tmp_path, ray_env, *common)
    finished_before_kill = kill_after_finished(process, 2, timeout=240)
    experiment = tmp_path / "runs" / "resumable"
    assert not (experiment / schema.BEST_FILE).exists()

    resumed = start_sweep(tmp_path, ray_env, *common, "--resume")
    output = finish(resumed)
    assert resumed.returncode == 0, output
    trials = pd.read_csv(experiment / schema.TRIALS_FILE)
    assert len(trials) == 6 and trials["trial_id"].is_unique, trials
    assert (trials["status"] == "TERMINATED").all(), trials
    assert set(finished_before_kill) <= set(trials["trial_id"])
    study = optuna.load_study(study_name="resumable", storage=f"sqlite:///{experiment / schema.STUDY_FILE}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) >= 6
    info = json.loads((experiment / schema.EXPERIMENT_FILE).read_text())
    assert info["status"] == "finished" and info["resumes"] == 1 and info["num_trials"] == 6
    assert info["started_at"] < info["finished_at"]
    assert "--resume" not in info["command"] and "--resume" in info["resume_commands"][0]
    assert json.loads((experiment / schema.BEST_FILE).read_text())["trial_id"] in set(trials["trial_id"])


@pytest.mark.slow
def test_truncated_newest_checkpoint_of_a_killed_trial_falls_back_to_the_one_before(tmp_path, ray_env):
    process = start_sweep(tmp_path, ray_env, "--dataset", "synthetic-tiny", "--space", "quick", "--num-samples", "2",
                          "--max-epochs", "150", "--grace-period", "150", "--patience", "1000", "--name", "corrupt",
                          "--concurrency", "1", "--seed", "5", "--checkpoint-every", "1")  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)  # keep the pipe drained
    reader.start()
    experiment = tmp_path / "runs" / "corrupt"
    deadline = time.monotonic() + 240
    try:
        victim = None
        while victim is None:  # a running trial with two checkpoints and epochs left
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            for results_file in experiment.glob("*/result.json"):
                reports = results_file.read_text().splitlines()
                last = json.loads(reports[-1]) if reports else {}
                if len(list(results_file.parent.glob("checkpoint_*"))) >= 2 and 3 <= last.get("epoch", 0) <= 100:
                    victim = results_file.parent, last["pid"], last["trial_id"]
            time.sleep(0.05)
        trial_folder, pid, victim_id = victim
        os.kill(pid, signal.SIGSTOP)  # frozen: it writes no further checkpoint
        time.sleep(2.0)  # the driver registers whatever the trial had reported
        checkpoints = sorted(trial_folder.glob("checkpoint_*"))
        # Every checkpoint but the oldest: whichever one Ray hands the retry is unreadable.
        for checkpoint in checkpoints[1:]:
            if (checkpoint / "trainer.pt").exists():
                data = (checkpoint / "trainer.pt").read_bytes()
                (checkpoint / "trainer.pt").write_bytes(data[: len(data) // 2])
        os.kill(pid, signal.SIGKILL)
        assert process.wait(timeout=240) == 0, "".join(lines)
    finally:
        kill_group(process)
        process.wait()
    reader.join(timeout=10)
    output = "".join(lines)
    assert "unusable (cannot read" in output and "falling back to" in output and "starting the trial over" not in output, output
    trials = pd.read_csv(experiment / schema.TRIALS_FILE).set_index("trial_id")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all(), trials
    assert trials.loc[victim_id, "num_failures"] == 1 and trials.loc[victim_id, "epochs"] == 150
    assert (trials.drop(victim_id)["num_failures"] == 0).all() and (trials["epochs"] == 150).all()
    curves = pd.read_csv(experiment / schema.CURVES_FILE)
    assert sorted(curves[curves["trial_id"] == victim_id]["epoch"]) == list(range(1, 151))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--dataset", "dna", "--space", "huge"], "huge"),
        (["--dataset", "dna", "--num-samples", "0"], "--num-samples must be a positive integer"),
        (["--dataset", "dna", "--max-epochs", "-3"], "--max-epochs must be a positive integer"),
        (["--dataset", "dna", "--cpus-per-trial", "0"], "--cpus-per-trial must be positive"),
        (["--dataset", "dna", "--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
        (["--dataset", "dna", "--gpus-per-trial", "1.5"], "above 1 must be a whole number"),
        (["--dataset", "dna", "--time-budget", "soon"], "is not a duration"),
        (["--dataset", "dna", "--grace-period", "50", "--max-epochs", "20"], "exceeds --max-epochs"),
        (["--dataset", "dna", "--storage", "/proc/made-search"], "is not a writable folder"),
        (["--dataset", "dna", "--optuna-storage", "not a url"], "is not an SQLAlchemy URL"),
        (["--dataset", "dna", "--resume"], "--resume: no experiment for dataset dna"),
        (["--dataset", "dna", "--name", "../escape"], "--name '../escape'"),
        (["--dataset", "dna", "--checkpoint-seconds", "0"], "--checkpoint-seconds must be positive"),
        (["--dataset", "dna", "--report-seconds", "-1"], "--report-seconds must be >= 0"),
        (["--dataset", "dna", "--finalists", "0"], "--finalists must be a positive integer"),
        (["--dataset", "dna", "--warm-start-count", "0"], "--warm-start-count must be a positive integer"),
        (["--dataset", "dna", "--reseeds", "-1"], "--reseeds must be >= 0"),
        (["--dataset", "dna", "--reseed-share", "1"], "--reseed-share must be in [0, 1)"),
    ],
)
def test_bad_input_exits_2_before_any_work(tmp_path, capsys, argv, message):
    if "--storage" not in argv:
        argv = [*argv, "--storage", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_existing_experiment_needs_resume(tmp_path, capsys):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    assert main(["--dataset", "dna", "--storage", str(tmp_path / "runs"), "--name", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_gpus_requested_on_cpu_cluster_exits_2(tmp_path, ray_env):
    process = start_sweep(tmp_path, ray_env, "--dataset", "synthetic-tiny", "--gpus-per-trial", "0.5", "--name", "gpu")
    output = finish(process, timeout=120)
    assert process.returncode == 2, output
    assert "the Ray cluster has no GPU" in output


def test_trials_cut_short_are_pruned_for_optuna():
    from search.tuner import MadeOptunaSearch
    from spaces import get_space

    searcher = MadeOptunaSearch(max_epochs=10, space=get_space("quick").define_by_run(), metric="best_valid_nll",
                                mode="min", sampler=optuna.samplers.TPESampler(seed=0))  # fmt: skip
    for trial_id in ("ran", "patience", "cut"):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"best_valid_nll": 9.0, "training_iteration": 1, "epoch": 1})
    searcher.on_trial_complete("ran", {"best_valid_nll": 5.0, "epoch": 10, "stopped_early": False})
    searcher.on_trial_complete("patience", {"best_valid_nll": 6.0, "epoch": 4, "stopped_early": True})
    searcher.on_trial_complete("cut", {"best_valid_nll": 4.0, "epoch": 3, "training_iteration": 3, "stopped_early": False})
    states = [t.state for t in searcher._ot_study.trials]
    complete, pruned = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    assert states == [complete, complete, pruned]
    # The result that stopped it reaches Optuna as its last intermediate value (TPE ranks by it).
    assert searcher._ot_study.trials[2].intermediate_values == {1: 9.0, 3: 4.0}
    assert searcher._ot_study.best_value == 5.0  # the cut-short 4.0 does not count as a finished result


def test_a_restored_searcher_leaves_trials_the_study_finished_alone(tmp_path):
    # The experiment snapshot (the searcher's pickle) lags the study's storage: a trial that
    # finished after the last snapshot comes back running, and its re-run must not touch it.
    from search.tuner import MadeOptunaSearch
    from spaces import get_space

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    searcher = MadeOptunaSearch(max_epochs=10, space=get_space("quick").define_by_run(), metric="best_valid_nll",
                                mode="min", sampler=optuna.samplers.TPESampler(seed=0), study_name="s",
                                storage=optuna.storages.RDBStorage(storage))  # fmt: skip
    for trial_id in ("done", "running"):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"best_valid_nll": 9.0, "training_iteration": 1, "epoch": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))  # the snapshot: both trials running
    searcher.on_trial_complete("done", {"best_valid_nll": 5.0, "epoch": 10, "stopped_early": False})

    restored = MadeOptunaSearch(max_epochs=10, space=get_space("quick").define_by_run(), metric="best_valid_nll",
                                mode="min", sampler=optuna.samplers.TPESampler(seed=0))  # fmt: skip
    restored.restore(str(tmp_path / "searcher.pkl"))
    for trial_id in ("done", "running"):  # the re-run "done" reports again; "running" goes on
        restored.on_trial_result(trial_id, {"best_valid_nll": 4.0, "training_iteration": 2, "epoch": 2})
        restored.on_trial_complete(trial_id, {"best_valid_nll": 4.0, "epoch": 10, "stopped_early": False})
    study = optuna.load_study(study_name="s", storage=storage)
    assert [(t.state, t.value) for t in study.trials] == [(optuna.trial.TrialState.COMPLETE, 5.0),
                                                         (optuna.trial.TrialState.COMPLETE, 4.0)]  # fmt: skip
    assert 2 not in study.trials[0].intermediate_values


def test_a_waiting_trial_takes_a_freed_slot_before_the_next_suggestion(tmp_path, monkeypatch):
    # Ray asks for the next trial before it hands a finished trial's actor to the trial waiting.
    import search.tuner
    from search.timeline import TrialTimeline
    from search.tuner import MadeOptunaSearch
    from spaces import get_space

    clock = [1000.0]
    monkeypatch.setattr(search.tuner.time, "time", lambda: clock[0])
    timeline = TrialTimeline()
    searcher = MadeOptunaSearch(max_epochs=10, space=get_space("quick").define_by_run(), metric="best_valid_nll",
                                mode="min", sampler=optuna.samplers.TPESampler(seed=0), timeline=timeline)  # fmt: skip
    for trial_id in ("a", "b", "c"):  # two slots and one trial waiting; none has ended
        assert searcher.suggest(trial_id) is not None
    timeline.started.update(a=clock[0], b=clock[0])
    clock[0] += 0.3  # a short trial: it started within SUCCESSOR_WAIT_SECONDS of its end
    done = {"best_valid_nll": 5.0, "epoch": 10, "stopped_early": False}
    searcher.on_trial_complete("a", done)
    assert searcher.suggest("d") is None  # "c" takes a's slot first
    clock[0] += 0.01
    timeline.started["c"] = clock[0]
    assert searcher.suggest("d") is not None  # "c" runs: the next one may come
    timeline.started["d"] = clock[0]
    # Two slots freed with one trial waiting: the second slot needs a suggestion now.
    clock[0] += 1.0
    assert searcher.suggest("e") is not None
    clock[0] += 0.01
    searcher.on_trial_complete("b", done)
    searcher.on_trial_complete("c", done)
    assert searcher.suggest("f") is not None
    # A waiting trial that never starts holds suggestions back for SUCCESSOR_WAIT_SECONDS at most.
    clock[0] += 1.0
    searcher.on_trial_complete("d", done)
    assert searcher.suggest("g") is None
    clock[0] += search.tuner.SUCCESSOR_WAIT_SECONDS + 0.01
    assert searcher.suggest("g") is not None
    # The snapshot leaves the timeline out: a restored sweep's callbacks are copies.
    searcher.save(str(tmp_path / "searcher.pkl"))
    assert searcher._timeline is timeline
    restored = MadeOptunaSearch(max_epochs=10, space=get_space("quick").define_by_run(), metric="best_valid_nll",
                                mode="min", sampler=optuna.samplers.TPESampler(seed=0), timeline=timeline)  # fmt: skip
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("e", done)
    assert restored._timeline is None and restored.suggest("h") is not None


def test_parse_duration():
    assert parse_duration("90") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2h") == 7200
    for bad in ("", "m30", "1x", "0", "-5m"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_trial_device_follows_ray_gpu_assignment(monkeypatch):
    import ray
    import torch

    from search.trainable import trial_device

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert trial_device() == "cpu"
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trial_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trial_device() == "cpu"  # a GPU id without a usable CUDA build falls back to the CPU


def test_trial_count_follows_the_budget():
    assert trial_count(8, 600.0) == 8 and trial_count(8, None) == 8
    assert trial_count(None, 600.0) is None  # trials keep coming until the budget is spent
    assert trial_count(None, None) == DEFAULT_NUM_SAMPLES


def test_a_budget_without_a_trial_count_plans_an_open_ended_sweep(tmp_path):
    common = ["--dataset", "synthetic-tiny", "--storage", str(tmp_path / "runs")]
    plan, _ = make_plan(parse_args([*common, "--time-budget", "90s", "--name", "open"]))
    assert plan.num_samples is None and plan.time_budget_seconds == 90.0
    counted, _ = make_plan(parse_args([*common, "--name", "counted"]))
    assert counted.num_samples == DEFAULT_NUM_SAMPLES and counted.time_budget_seconds is None


def test_retraining_with_other_seeds_keeps_its_share_of_the_budget(tmp_path):
    common = ["--dataset", "synthetic-tiny", "--storage", str(tmp_path / "runs"), "--time-budget", "100s"]
    plan, _ = make_plan(parse_args([*common, "--reseeds", "2", "--reseed-share", "0.2"]))
    assert plan.reseeds == 2 and plan.search_budget_seconds == pytest.approx(80.0)
    unasked, _ = make_plan(parse_args([*common, "--reseed-share", "0.2"]))
    assert unasked.reseeds is None and unasked.search_budget_seconds == 100.0  # only what the search leaves
    never, _ = make_plan(parse_args([*common, "--reseeds", "0", "--reseed-share", "0.2"]))
    assert never.search_budget_seconds == 100.0
    unbudgeted, _ = make_plan(parse_args(["--dataset", "synthetic-tiny", "--storage", str(tmp_path / "runs"), "--reseeds", "2"]))
    assert unbudgeted.search_budget_seconds is None


def test_unasked_retraining_only_spends_budget_the_search_left():
    from search.reseed import AUTO_RESEEDS_MAX, reseed_count

    assert reseed_count(3, None, 50.0, 2) == 3 and reseed_count(0, 900.0, 50.0, 2) == 0  # asked: as asked
    assert reseed_count(None, 900.0, 50.0, 2) == 2  # one per slot when the time left holds the leader's training
    assert reseed_count(None, 900.0, 50.0, 64) == AUTO_RESEEDS_MAX
    assert reseed_count(None, 40.0, 50.0, 2) == 0  # the leader took longer than what is left
    assert reseed_count(None, None, 50.0, 2) == 0  # no budget: the run's length stays the trial count's
    assert reseed_count(None, 3.0, 1.0, 2) == 0 and reseed_count(None, -5.0, 1.0, 2) == 0


@pytest.mark.slow
def test_budget_driven_sweep_runs_trials_until_the_budget_is_spent(tmp_path, ray_env):
    started = time.monotonic()
    process = start_sweep(tmp_path, ray_env, "--dataset", "synthetic-tiny", "--space", "quick", "--max-epochs", "6",
                          "--grace-period", "6", "--time-budget", "40s", "--name", "budget", "--seed", "2")  # fmt: skip
    output = finish(process)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, output
    experiment = tmp_path / "runs" / "budget"
    info = json.loads((experiment / schema.EXPERIMENT_FILE).read_text())
    assert info["num_samples"] is None and info["stopped_by_time_budget"] is True
    trials = pd.read_csv(experiment / schema.TRIALS_FILE)
    # No count ended it: trials kept coming for the whole budget.
    assert info["num_trials"] == len(trials) >= 6, trials
    assert (trials["status"] == "TERMINATED").sum() >= 5, trials
    assert info["wall_seconds"] >= 40
    assert (experiment / schema.BEST_FILE).exists()
    assert "trials until the 40s budget is spent" in output
    assert elapsed < 40 + 90, f"the sweep did not stop at its budget ({elapsed:.0f} s)"


@pytest.mark.slow
def test_a_time_budget_bounds_the_reselection_and_best_json_names_the_finalists_left_out(tmp_path, ray_env):
    # The allowance (a tenth of the budget, at least 60 s) set to nothing: only the sweep's best is re-evaluated.
    program = (
        "import search, search.experiment as experiment\n"
        "experiment.MIN_EVALUATION_SECONDS = experiment.EVALUATION_SHARE = 0.0\n"
        "search.sweep('synthetic-tiny', space='quick', num_samples=3, max_epochs=2, grace_period=2, time_budget='5m',"
        " reseeds=0, storage='runs', name='bounded', seed=1, no_tables=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=ray_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    best = json.loads((tmp_path / "runs" / "bounded" / schema.BEST_FILE).read_text())
    trials = pd.read_csv(tmp_path / "runs" / "bounded" / schema.TRIALS_FILE).sort_values("best_valid_nll")
    assert [f["trial_id"] for f in best["finalists"]] == [best["trial_id"]] == [trials["trial_id"].iloc[0]]
    assert sorted(best["finalists_left_out_for_time"]) == sorted(trials["trial_id"].iloc[1:])


@pytest.mark.slow
def test_the_leading_configuration_is_retrained_with_other_seeds_and_the_best_on_validation_delivered(tmp_path, ray_env):
    # Unasked: the trial count ends the search long before the budget, so each of the 2 slots retrains it once.
    process = start_sweep(tmp_path, ray_env, "--dataset", "synthetic-tiny", "--space", "quick", "--num-samples", "3",
                          "--max-epochs", "4", "--grace-period", "4", "--name", "reseeded", "--seed", "4",
                          "--time-budget", "5m", "--no-tables")  # fmt: skip
    output = finish(process)
    assert process.returncode == 0, output
    experiment = tmp_path / "runs" / "reseeded"
    best = json.loads((experiment / schema.BEST_FILE).read_text())
    leader = best["finalists"][0]
    assert [r["seed"] for r in best["reseeds"]] == [4, 5, 6] and best["reseeds"][0]["trial_id"] == leader["trial_id"]
    chosen = min(best["reseeds"], key=lambda r: r["valid_nll"])
    assert (best["trial_id"], best["seed"], best["valid_nll"]) == (chosen["trial_id"], chosen["seed"], chosen["valid_nll"])
    assert schema.TRIAL_SEED_KEY not in best["config"]
    retrained = read_ray_trials(experiment / schema.RESEEDS_FOLDER)
    assert sorted(r.config[schema.TRIAL_SEED_KEY] for r in retrained) == [5, 6]
    # trials.csv lists the search's 3 trials, then the 2 retrainings with their seeds.
    trials = pd.read_csv(experiment / schema.TRIALS_FILE)
    assert list(trials["trial_number"]) == [1, 2, 3, 4, 5] and trials[schema.TRIAL_SEED_KEY].isna().sum() == 3
    assert sorted(trials[schema.TRIAL_SEED_KEY].dropna()) == [5, 6] and best["trial_id"] in set(trials["trial_id"])
    assert read_experiment(experiment).problems == []  # the aggregated tables find the delivered trial
    leading = trials.set_index("trial_id").loc[leader["trial_id"]]
    for record in retrained:  # the leader's configuration, trained to the end
        assert {k: v for k, v in record.config.items() if k != schema.TRIAL_SEED_KEY} == {
            k: leading[k] for k in best["config"]
        } and record.last_result["epoch"] == 4
    assert "retrained with other seeds" in output and f"chose seed {best['seed']}" in output

    # Resumed, the retraining continues from its own Ray state: no trial runs twice.
    resumed = start_sweep(tmp_path, ray_env, "--dataset", "synthetic-tiny", "--resume", "--name", "reseeded",
                          "--reseeds", "2", "--no-tables")  # fmt: skip
    output = finish(resumed)
    assert resumed.returncode == 0, output
    again_retrained = read_ray_trials(experiment / schema.RESEEDS_FOLDER)
    assert sorted(r.trial_id for r in again_retrained) == sorted(r.trial_id for r in retrained)
    again = json.loads((experiment / schema.BEST_FILE).read_text())
    assert (again["trial_id"], again["seed"], again["test_nll"]) == (best["trial_id"], best["seed"], best["test_nll"])


def test_fit_start_imports_are_loaded_in_the_background_and_missing_ones_skipped():
    from search.tuner import FIT_START_IMPORTS, preload_fit_imports

    assert "tensorboardX" in FIT_START_IMPORTS  # Ray Tune's default TensorBoard logger
    sys.modules.pop("json.tool", None)
    thread = preload_fit_imports(("made_search_no_such_module", "json.tool"))
    assert thread.daemon and thread is not threading.current_thread()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "json.tool" in sys.modules  # the missing module before it did not stop the thread
