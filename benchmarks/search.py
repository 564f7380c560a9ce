"""``python -m benchmarks.search``: does the default search find the best MADE on a suite of datasets?

For every dataset of a suite, side by side in one run:

- **baselines**: one training run each (``made_core``, to convergence or the sweep budget) of
  the library's defaults (1x500, 8 order-agnostic masks, direct connection), the paper's
  mask-sampling recipe (1x500, a fresh agnostic mask per minibatch, direct) and a plain
  single-mask MADE (1x500, natural order, direct): a sweep must beat the better of the
  first two, and the ensemble-vs-single comparison says where ensembles pay;
- **the guided search** (the space's sweep with TPE) and **random search** over the same space
  (Optuna's random sampler, the same start points), each given the same time budget and
  machine: test NLL of the sweep's choice ± stderr, trials, budget used, slot use (trial
  time / (sweep time x slots)), the winner's configuration, and the compute the guided
  search needed to reach random search's final best validation NLL;
- the references: the paper's MADE numbers (dna) and the exact true test NLL (synthetic sets);
- how often the final winner would have been stopped at each ASHA rung (judged against every
  trial that reached it), the evidence for the multi-fidelity schedule.

It writes ``search_benchmark.csv``, ``search_benchmark.md`` (the table, the command, the
commit) and ``search_benchmark.png`` (best so far vs compute) into ``--output``
(default ``results/``). Sweeps go to ``--work`` (default a cache folder), never the project.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SAMPLERS = ("tpe", "random", "warm")  # warm: TPE warm-started from the other datasets' sweeps (--warm-start-from)
SLOT_USE_TARGET = 0.9
WARM_START_COUNT = 1  # each other dataset's best: six start points fit a short sweep, eighteen would fill it
TRUE_NLL_TOLERANCE = 0.01  # the default search should come within 1% of a synthetic set's true NLL
REACH_TARGET = 0.5  # guided search should reach random's final best in at most half its compute


@dataclass(frozen=True)
class Suite:
    """Datasets (registry names or ``benchmarks.derived`` names) and the budget each sweep gets."""

    datasets: tuple[str, ...]
    budget_seconds: float
    max_epochs: int = 200


_ALL = ("dna", "mnist-pooled", "mnist-500", "synthetic-mob", "synthetic-bn-20", "synthetic-bn-100", "synthetic-bn-500")
SUITES = {
    # About an hour on 2 cores: 7 sets x (3 baselines + 2 sweeps of 3 minutes).
    "standard": Suite(_ALL, 180.0),
    "thorough": Suite(_ALL, 900.0),
    # For tests: one tiny set, a few seconds per sweep.
    "smoke": Suite(("synthetic-tiny",), 20.0, max_epochs=8),
}

BASELINES: dict[str, dict[str, Any]] = {
    "defaults": {},  # made_core.hyperparameters.DEFAULTS
    "mask-sampling": {"hidden_units": 500, "hidden_layers": 1, "num_masks": 0, "ordering": "agnostic", "direct_connection": True},
    "single-mask": {"hidden_units": 500, "hidden_layers": 1, "num_masks": 1, "ordering": "natural", "direct_connection": True},
}
"""One training run each; a sweep must beat the better of the first two."""


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


# -- baselines --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineResult:
    family: str
    test_nll: float
    test_nll_stderr: float
    test_masks: int
    epochs: int
    seconds: float
    valid_nll: float = math.nan  # with the test ensemble chosen on validation


def run_baseline(family: str, data: Any, max_epochs: int, time_limit: float, seed: int) -> BaselineResult:
    """Train ``BASELINES[family]`` once (patience 30, at most ``time_limit`` seconds), test its ensemble."""
    return run_config(family, BASELINES[family], data, max_epochs, time_limit, seed)


def run_config(label: str, overrides: dict[str, Any], data: Any, max_epochs: int, time_limit: float, seed: int) -> BaselineResult:
    """Train the library's defaults with ``overrides`` once, as ``run_baseline`` does; ``label`` names the result."""
    from made_core.config import TrainConfig
    from made_core.ensembles import choose_test_masks
    from made_core.evaluate import evaluate_nll
    from made_core.hyperparameters import DEFAULTS
    from made_core.train import Trainer

    config = TrainConfig.from_hyperparameters({**DEFAULTS, **overrides}, max_epochs=max_epochs, seed=seed)
    started = time.perf_counter()
    trainer = Trainer(config, data.train, data.valid)
    epochs = 0
    for result in trainer.epochs():
        epochs = result.epoch
        if time.perf_counter() - started > time_limit:
            break
    trainer.restore_best()
    ensemble = choose_test_masks(trainer.model, data.valid)
    test = evaluate_nll(trainer.model, data.test, ensemble.masks)
    seconds = time.perf_counter() - started
    return BaselineResult(label, test.mean, test.stderr, ensemble.masks, epochs, seconds, ensemble.valid.mean)


# -- one sweep, read back ---------------------------------------------------------------------
@dataclass
class SweepFigures:
    """What the benchmark reports of one sweep (guided or random)."""

    sampler: str
    experiment: str
    test_nll: float
    test_nll_stderr: float
    valid_nll: float  # the chosen model's validation NLL with its test-time ensemble
    sweep_valid_nll: float  # what the sweep's objective said of it
    trials: int
    fit_seconds: float
    trial_seconds: float
    slot_use: float
    winner: str
    winner_config: dict[str, Any]
    reselected: bool  # the final re-selection chose another trial than the sweep objective's best
    best_so_far: list[tuple[float, float]] = field(default_factory=list)  # (compute seconds, best objective)
    winner_rungs: dict[int, bool] = field(default_factory=dict)  # rung epoch -> would have been stopped there
    # The same, judged at the rung's time (winner_stopped_at_seconds): what rungs on training time would do.
    winner_rungs_by_time: dict[int, bool] = field(default_factory=dict)
    # Where guidance shows even when the best trial is a matter of luck: the typical trial.
    median_trial_nll: float = math.nan  # median over trials of their best sweep objective
    full_length_share: float = math.nan  # share of trials that ran their course (max epochs or early stopping)
    slot_time: dict[str, float] | None = None  # experiment.json's slot_time: where the slots' fit time went
    mixture_test_nll: float = math.nan  # best.json's mixture of the finalists (NaN: none written)
    mixture_models: int = 0  # how many models it mixes


def slot_use(trial_seconds: float, fit_seconds: float, slots: int) -> float:
    """Trial time over (sweep time x parallel slots): the share of the machine that trained."""
    return trial_seconds / (fit_seconds * slots) if fit_seconds > 0 and slots > 0 else math.nan


def best_so_far(histories: Sequence[pd.DataFrame], objective: str = "best_valid_nll") -> list[tuple[float, float]]:
    """(compute so far, best objective so far) after every report of every trial, in time order.

    Compute is trial time (Ray's ``time_this_iter_s``) summed over all trials up to that
    report's ``timestamp``."""
    frames = [h[["timestamp", "time_this_iter_s", objective]] for h in histories if not h.empty and objective in h]
    if not frames:
        return []
    reports = pd.concat(frames).sort_values("timestamp", kind="stable")
    compute = reports["time_this_iter_s"].astype(float).cumsum().to_numpy()
    best = reports[objective].astype(float).cummin().to_numpy()
    return [(float(c), float(b)) for c, b in zip(compute, best, strict=True)]


def compute_to_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """The compute at which ``curve`` first reaches ``target`` (<=), None if it never does."""
    return next((compute for compute, best in curve if best <= target), None)


def outside_the_best(values: dict[str, float], winner: str, reduction_factor: int) -> bool | None:
    """Whether the winner's value lies outside the best 1/reduction_factor of ``values`` (ASHA
    would stop it); None when the winner has no value or too few trials do to judge."""
    if winner not in values or len(values) < reduction_factor:
        return None
    return values[winner] > float(np.quantile(list(values.values()), 1.0 / reduction_factor))


def winner_stopped_at(
    histories: dict[str, pd.DataFrame], winner: str, rung_epochs: Sequence[int], reduction_factor: int = 3
) -> dict[int, bool]:
    """For each rung the winner reached: whether its objective there was outside the best
    1/reduction_factor of all trials' values at that epoch (ASHA would have stopped it)."""
    verdicts = {}
    for rung in rung_epochs:
        values = {}
        for trial_id, history in histories.items():
            if "epoch" not in history:
                continue
            at = history.loc[history["epoch"] == rung, "best_valid_nll"]
            if len(at):
                values[trial_id] = float(at.iloc[-1])
        if (stopped := outside_the_best(values, winner, reduction_factor)) is not None:
            verdicts[rung] = stopped
    return verdicts


def winner_stopped_at_seconds(
    histories: dict[str, pd.DataFrame], winner: str, rung_epochs: Sequence[int], reduction_factor: int = 3
) -> dict[int, bool]:
    """``winner_stopped_at`` for rungs on training time instead of epochs: each epoch rung is
    matched by the trial time at which the median trial reached it, and the winner's best
    objective by then is judged against every trial that trained that long (a trial's time is
    the sum of its reports' ``time_this_iter_s``)."""
    clocks = {
        trial_id: history.assign(seconds=history["time_this_iter_s"].astype(float).cumsum())
        for trial_id, history in histories.items()
        if {"epoch", "time_this_iter_s", "best_valid_nll"} <= set(history.columns) and len(history)
    }
    verdicts = {}
    for rung in rung_epochs:
        reached = [float(h.loc[h["epoch"] >= rung, "seconds"].iloc[0]) for h in clocks.values() if (h["epoch"] >= rung).any()]
        if not reached:
            continue
        seconds = float(np.median(reached))
        values = {
            trial_id: float(h.loc[h["seconds"] <= seconds, "best_valid_nll"].min())
            for trial_id, h in clocks.items()
            if h["seconds"].iloc[-1] >= seconds and h["seconds"].iloc[0] <= seconds
        }
        if (stopped := outside_the_best(values, winner, reduction_factor)) is not None:
            verdicts[rung] = stopped
    return verdicts


def ran_its_course(last_result: dict[str, Any], max_epochs: int) -> bool:
    """Whether a trial reached ``max_epochs`` or stopped early on its own, rather than being cut by ASHA or the budget."""
    return bool(last_result.get("stopped_early")) or int(last_result.get("epoch", 0)) >= max_epochs


def read_sweep(path: Path, sampler: str, slots: int, grace_period: int, max_epochs: int) -> SweepFigures:
    """The figures of a finished sweep from its experiment folder."""
    from results import schema
    from results.tables import order_hyperparameters, summarize_config
    from search.experiment import read_ray_trials
    from search.tuner import asha_rungs

    best = json.loads((path / "best.json").read_text())
    info = json.loads((path / "experiment.json").read_text())
    records = read_ray_trials(path)
    histories = {r.trial_id: r.history for r in records}
    # Retrainings with other seeds (--reseeds) run inside the sweep's fit time: their trials count too.
    retrained = read_ray_trials(path / schema.RESEEDS_FOLDER) if (path / schema.RESEEDS_FOLDER).is_dir() else []
    trial_seconds = sum(float(r.last_result.get("time_total_s", 0.0)) for r in [*records, *retrained])
    fit_seconds = float(info.get("fit_seconds", info["wall_seconds"]))
    finalists = best.get("finalists", [])
    rungs = asha_rungs(grace_period, max_epochs)
    return SweepFigures(
        sampler=sampler,
        experiment=path.name,
        test_nll=float(best["test_nll"]),
        test_nll_stderr=float(best["test_nll_stderr"]),
        valid_nll=float(best["valid_nll"]),
        sweep_valid_nll=float(best["sweep_valid_nll"]),
        trials=len(records),
        fit_seconds=fit_seconds,
        trial_seconds=trial_seconds,
        slot_use=slot_use(trial_seconds, fit_seconds, slots),
        winner=f"{summarize_config(best['config'], order_hyperparameters(best['config']))} (tested with {best['test_masks']})",
        winner_config=dict(best["config"]),
        reselected=bool(finalists) and min(finalists, key=lambda f: f["sweep_valid_nll"])["trial_id"] != best["trial_id"],
        best_so_far=best_so_far(list(histories.values())),
        median_trial_nll=float(np.median(finite))
        if (finite := [r.best_valid_nll for r in records if math.isfinite(r.best_valid_nll)])
        else math.nan,
        full_length_share=float(np.mean([ran_its_course(r.last_result, max_epochs) for r in records])) if records else math.nan,
        winner_rungs=winner_stopped_at(histories, str(best["trial_id"]), rungs),
        winner_rungs_by_time=winner_stopped_at_seconds(histories, str(best["trial_id"]), rungs),
        slot_time=info.get("slot_time"),
        mixture_test_nll=float(best["mixture"]["test_nll"]) if "mixture" in best else math.nan,
        mixture_models=len(best["mixture"]["models"]) if "mixture" in best else 0,
    )


def warm_sources(folder: Path, dataset: str) -> list[str]:
    """The guided sweeps of every other dataset under an earlier benchmark run's work ``folder``:
    a warm start from sets the new one has never seen."""
    sources = []
    for experiment in sorted((folder / "experiments").glob("*-tpe")):
        info = json.loads((experiment / "experiment.json").read_text())
        if info.get("dataset") != dataset and (experiment / "trials.csv").exists():
            sources.append(str(experiment))
    return sources


def run_sweep(
    source: str, sampler: str, suite: Suite, work: Path, args: argparse.Namespace, warm_start: list[str] | None = None
) -> Path:
    """One budget-driven sweep of the default space (no --num-samples) through ``search.sweep``."""
    from search import sweep

    name = f"{Path(source).stem}-{sampler}"
    logging.getLogger("search").setLevel(logging.INFO if args.verbose else logging.WARNING)
    sweep(
        source,
        sampler="random" if sampler == "random" else "tpe",
        warm_start=warm_start,
        warm_start_count=WARM_START_COUNT,
        time_budget=f"{suite.budget_seconds:g}s",
        max_epochs=suite.max_epochs,
        storage=str(work / "experiments"),
        name=name,
        seed=args.seed,
        data_dir=args.data_dir,
        no_tables=True,
    )
    return work / "experiments" / name


# -- one dataset ------------------------------------------------------------------------------
@dataclass
class DatasetRow:
    dataset: str
    input_dim: int
    train_rows: int
    reference: str  # what the reference number is: "true NLL", "paper MADE / mask sampling", ""
    reference_nll: float
    baselines: dict[str, BaselineResult]
    sweeps: dict[str, SweepFigures]
    known_structure_nll: float = math.nan  # synthetic sets: benchmarks.oracle's fit with the true structure

    @property
    def baseline_nll(self) -> float:
        """The better of the library's defaults and the mask-sampling recipe (the bar a sweep must clear)."""
        return min((self.baselines[f].test_nll for f in ("defaults", "mask-sampling") if f in self.baselines), default=math.nan)

    def reach_fraction(self) -> float | None:
        """Guided compute to reach random's final best objective, over guided's total compute."""
        guided, random = self.sweeps.get("tpe"), self.sweeps.get("random")
        if guided is None or random is None or not guided.best_so_far or not random.best_so_far:
            return None
        reached = compute_to_reach(guided.best_so_far, random.best_so_far[-1][1])
        return None if reached is None else reached / guided.best_so_far[-1][0]


def dataset_source(name: str, work: Path, data_dir: str | None) -> str:
    """What the sweep loads: a registry name, or the path of a derived set's .npz file."""
    from benchmarks.derived import DERIVED_SETS, derived_file

    return str(derived_file(name, work / "data", data_dir)) if name in DERIVED_SETS else name


def reference(name: str, data: Any) -> tuple[str, float]:
    from results.paper import paper_made_nll, paper_mask_sampling_nll

    if data.true_test_nll is not None:
        return "true NLL", float(data.true_test_nll)
    papers = [v for v in (paper_mask_sampling_nll(name), paper_made_nll(name)) if v is not None]
    return ("paper's best MADE", min(papers)) if papers else ("", math.nan)


def known_structure(name: str, data: Any) -> float:
    """``benchmarks.oracle``'s known-structure fit of a registry synthetic set, else NaN."""
    from benchmarks.oracle import known_structure_nll
    from made_core.registry import DATASETS

    recipe = DATASETS[name].synthetic if name in DATASETS else None
    return math.nan if recipe is None else known_structure_nll(recipe, data.train, data.valid, data.test)


def run_dataset(name: str, suite: Suite, args: argparse.Namespace, work: Path, slots: int) -> DatasetRow:
    import torch

    from made_core.data import load_dataset

    source = dataset_source(name, work, args.data_dir)
    data = load_dataset(source, data_dir=args.data_dir, download=False, progress=False)
    label, ref = reference(name, data)
    row = DatasetRow(name, data.input_dim, len(data.train), label, ref, {}, {})
    started = time.perf_counter()
    row.known_structure_nll = known_structure(name, data)
    if math.isfinite(row.known_structure_nll):
        log(f"{name}: known-structure fit {row.known_structure_nll:.3f} (true {ref:.3f}), {time.perf_counter() - started:.0f} s")
    torch.set_num_threads(slots)  # a baseline has the machine to itself, as a sweep does
    for family in args.baselines:
        result = run_baseline(family, data, suite.max_epochs, suite.budget_seconds, args.seed)
        row.baselines[family] = result
        log(f"{name}: baseline {family}: test {result.test_nll:.3f} ± {result.test_nll_stderr:.3f} "
            f"({result.epochs} epochs, {result.seconds:.0f} s)")  # fmt: skip
    from search.tuner import default_grace_period

    grace = default_grace_period(suite.max_epochs)
    for sampler in args.samplers:
        warm = warm_sources(Path(args.warm_start_from), data.name) if sampler == "warm" else None
        if warm == []:
            log(f"{name}: no other dataset's sweep under {args.warm_start_from}; warm search skipped")
            continue
        path = run_sweep(source, sampler, suite, work, args, warm)
        figures = read_sweep(path, sampler, slots, grace, suite.max_epochs)
        row.sweeps[sampler] = figures
        log(f"{name}: {sampler} search: test {figures.test_nll:.3f} ± {figures.test_nll_stderr:.3f}, "
            f"{figures.trials} trials, slot use {figures.slot_use:.2f}; winner {figures.winner}")  # fmt: skip
    return row


# -- the report -------------------------------------------------------------------------------
def _nll(value: float, stderr: float | None = None) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.2f}" if stderr is None or not math.isfinite(stderr) else f"{value:.2f} ± {stderr:.2f}"


def _share(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "-"


def _gap(value: float, reference: float) -> str:
    return f"{100 * (value / reference - 1):+.2f}%" if math.isfinite(value) and math.isfinite(reference) else "-"


def verdicts(row: DatasetRow) -> dict[str, bool | None]:
    """The issue's checks on one dataset (None where they do not apply)."""
    guided, random = row.sweeps.get("tpe"), row.sweeps.get("random")
    out: dict[str, bool | None] = {"beats_random": None, "beats_baseline": None, "within_1pct_of_true": None,
                                   "reaches_random_in_half": None, "slot_use_ok": None}  # fmt: skip
    if guided is None:
        return out
    if random is not None:
        out["beats_random"] = guided.test_nll < random.test_nll
        fraction = row.reach_fraction()
        out["reaches_random_in_half"] = fraction is not None and fraction <= REACH_TARGET
    if math.isfinite(row.baseline_nll):
        out["beats_baseline"] = guided.test_nll < row.baseline_nll
    if row.reference == "true NLL":
        out["within_1pct_of_true"] = guided.test_nll <= row.reference_nll * (1 + TRUE_NLL_TOLERANCE)
    out["slot_use_ok"] = guided.slot_use >= SLOT_USE_TARGET
    return out


def table_rows(rows: Sequence[DatasetRow]) -> pd.DataFrame:
    """search_benchmark.csv: one row per dataset, every figure the markdown shows."""
    records = []
    for row in rows:
        record: dict[str, Any] = {"dataset": row.dataset, "input_dim": row.input_dim, "train_rows": row.train_rows,
                                  "reference": row.reference, "reference_nll": row.reference_nll,
                                  "known_structure_nll": row.known_structure_nll}  # fmt: skip
        for family, result in row.baselines.items():
            record[f"{family}_test_nll"] = result.test_nll
            record[f"{family}_seconds"] = round(result.seconds, 1)
        for sampler, sweep in row.sweeps.items():
            for key in (
                "test_nll",
                "test_nll_stderr",
                "valid_nll",
                "sweep_valid_nll",
                "trials",
                "fit_seconds",
                "slot_use",
                "reselected",
            ):
                record[f"{sampler}_{key}"] = getattr(sweep, key)
            record[f"{sampler}_winner"] = sweep.winner
            record[f"{sampler}_winner_config"] = json.dumps(sweep.winner_config, sort_keys=True)
        record["reach_fraction"] = row.reach_fraction()
        record.update(verdicts(row))
        records.append(record)
    return pd.DataFrame(records)


def _mark(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "**no**")


def delivered_the_same_model(row: DatasetRow) -> bool:
    """Whether the guided and the random search chose the same configuration: a shared start point,
    whose trial is the same run in both sweeps, so the two cannot differ there."""
    guided, random = row.sweeps.get("tpe"), row.sweeps.get("random")
    return guided is not None and random is not None and guided.winner_config == random.winner_config


def winner_rung_lines(sweeps: Sequence[SweepFigures]) -> list[str]:
    """The section that pools ``winner_rungs`` and ``winner_rungs_by_time`` over ``sweeps``."""
    lines = ["", "## Would ASHA have stopped the final winner?", "",
             "Per rung: sweeps whose winner reached it, and how many of those winners were outside the best third "
             "of all trials at that epoch; then the same judged at the rung's time (the training seconds the median "
             "trial took to reach it: where rungs on time would judge), against the trials that trained that long.",
             "", "| rung (epoch) | winners judged | would have been stopped | at its time: judged | would have been stopped |",
             "|---|---|---|---|---|"]  # fmt: skip
    by_epoch: dict[int, list[bool]] = {}
    by_time: dict[int, list[bool]] = {}
    for sweep in sweeps:
        for counts, verdicts in ((by_epoch, sweep.winner_rungs), (by_time, sweep.winner_rungs_by_time)):
            for rung, stopped in verdicts.items():
                counts.setdefault(rung, []).append(stopped)
    for rung in sorted(by_epoch.keys() | by_time.keys()):
        epoch, timed = by_epoch.get(rung, []), by_time.get(rung, [])
        lines.append(f"| {rung} | {len(epoch)} | {sum(epoch)} | {len(timed)} | {sum(timed)} |")
    return lines


def slot_time_lines(rows: Sequence[DatasetRow]) -> list[str]:
    """Where each sweep's slot time went (``search.timeline``), as shares of its slot-seconds."""
    from search.timeline import slot_shares

    timed = [(row.dataset, sampler, sweep.slot_time) for row in rows for sampler, sweep in row.sweeps.items() if sweep.slot_time]
    if not timed:
        return []
    lines = ["", "## Where the sweeps' slot time went", "",
             "Shares of each sweep's slot-seconds (slots x fit time): training (the trials' own clocks: slot use); "
             "in trials off their clocks (reports, work lost when the budget stopped a trial); idle before the first "
             "trial ran (Ray Tune starting, trial processes starting), between trials, and after the last one ended.",
             "", "| dataset | search | training | in trials | before first trial | between trials | after last trial |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for dataset, sampler, parts in timed:
        shares = slot_shares(parts)
        lines.append(f"| {dataset} | {sampler} | " + " | ".join(f"{shares[part]:.3f}" for part in shares) + " |")
    return lines


def render_markdown(rows: Sequence[DatasetRow], suite_name: str, suite: Suite, header: dict[str, str]) -> str:
    lines = [
        f"# Search benchmark: suite `{suite_name}`, {suite.budget_seconds / 60:g} min per sweep",
        "",
        *(f"- {key}: {value}" for key, value in header.items()),
        "",
        "Test NLL in nats (± stderr). *Baseline*: the better of one run of the library's defaults and one of the "
        "paper's mask-sampling recipe; *single*: one plain single-mask MADE. *Reach*: the share of the guided "
        "search's compute it took to reach random search's final best validation NLL. *Slot use*: trial time / "
        "(sweep time x slots).",
        "",
        "| dataset | D | train | reference | baseline | single | guided (TPE) | trials | slot use | random | trials "
        "| slot use | reach | guided winner |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        guided, random = row.sweeps.get("tpe"), row.sweeps.get("random")
        single = row.baselines.get("single-mask")
        fraction = row.reach_fraction()
        cells = [
            row.dataset, str(row.input_dim), str(row.train_rows),
            f"{_nll(row.reference_nll)} ({row.reference})" if row.reference else "-",
            _nll(row.baseline_nll),
            _nll(single.test_nll) if single else "-",
            _nll(guided.test_nll, guided.test_nll_stderr) if guided else "-",
            str(guided.trials) if guided else "-", f"{guided.slot_use:.2f}" if guided else "-",
            _nll(random.test_nll, random.test_nll_stderr) if random else "-",
            str(random.trials) if random else "-", f"{random.slot_use:.2f}" if random else "-",
            "not reached" if fraction is None and guided and random else f"{fraction:.2f}" if fraction is not None else "-",
            guided.winner if guided else "-",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Checks", "", "| dataset | beats random | beats baseline | within 1% of true NLL | reach ≤ 0.5 "
              "| slot use ≥ 0.9 |", "|---|---|---|---|---|---|"]  # fmt: skip
    totals: dict[str, list[bool]] = {}
    ties = 0
    for row in rows:
        checks = verdicts(row)
        for key, value in checks.items():
            if value is not None:
                totals.setdefault(key, []).append(value)
        marks = {key: _mark(value) for key, value in checks.items()}
        if checks["beats_random"] is False and delivered_the_same_model(row):
            marks["beats_random"], ties = "**no**: the same model", ties + 1
        lines.append(f"| {row.dataset} | " + " | ".join(marks.values()) + " |")
    passed = {key: f"{sum(v)}/{len(v)}" if (v := totals.get(key)) else "" for key in verdicts(rows[0])}
    if ties:
        passed["beats_random"] += f" ({ties} the same model)"
    lines.append("| **passed** | " + " | ".join(passed.values()) + " |")
    synthetic = [row for row in rows if row.reference == "true NLL"]
    if synthetic:
        lines += ["", "## Synthetic sets: what their training rows allow", "",
                  "*Known-structure fit*: the true model family fitted to the same training rows with the true "
                  "structure given (each variable's parents, or the number of mixture components; "
                  "`benchmarks/oracle.py`), a reference no structure-agnostic search is expected to beat. "
                  "Gaps are relative to the true NLL.", "",
                  "| dataset | train | true NLL | known-structure fit | gap | guided (TPE) | gap | random | gap |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in synthetic:
            cells = [row.dataset, str(row.train_rows), _nll(row.reference_nll), _nll(row.known_structure_nll),
                     _gap(row.known_structure_nll, row.reference_nll)]  # fmt: skip
            for sampler in ("tpe", "random"):
                sweep = row.sweeps.get(sampler)
                cells += [_nll(sweep.test_nll), _gap(sweep.test_nll, row.reference_nll)] if sweep else ["-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    paired = [row for row in rows if "tpe" in row.sweeps and "random" in row.sweeps]
    if paired:
        lines += ["", "## The typical trial, guided and random", "",
                  "The best trial of a short sweep is partly luck; the typical one shows whether the sampler steers: "
                  "the median over trials of their best sweep objective (validation), and the share of trials that "
                  "ran their course (ASHA and the budget cut the rest).", "",
                  "| dataset | guided median | random median | guided ran their course | random ran their course |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for row in paired:
            guided, random = row.sweeps["tpe"], row.sweeps["random"]
            lines.append(f"| {row.dataset} | {_nll(guided.median_trial_nll)} | {_nll(random.median_trial_nll)} "
                         f"| {_share(guided.full_length_share)} | {_share(random.full_length_share)} |")  # fmt: skip
    lines += ["", "## Objective: what the sweep said of its winner, and the delivered model", "",
              "*Mixture*: the finalists and retrainings mixed with weights chosen on validation (best.json's "
              "`mixture`), its test NLL and how many models it mixes.", "",
              "| dataset | search | sweep objective | valid NLL, test-time ensemble | test NLL | re-selection changed the pick "
              "| mixture: test NLL (models) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        for sampler, sweep in row.sweeps.items():
            mixture = f"{sweep.mixture_test_nll:.2f} ({sweep.mixture_models})" if sweep.mixture_models else "-"
            lines.append(
                f"| {row.dataset} | {sampler} | {sweep.sweep_valid_nll:.2f} | {sweep.valid_nll:.2f} | {sweep.test_nll:.2f} "
                f"| {'yes' if sweep.reselected else 'no'} | {mixture} |"
            )
    lines += winner_rung_lines([sweep for row in rows for sweep in row.sweeps.values()])
    lines += slot_time_lines(rows)
    warm_rows = [row for row in rows if "warm" in row.sweeps]
    if warm_rows:
        lines += ["", "## Warm start from the other datasets' guided sweeps", "",
                  "| dataset | guided | guided, warm-started | warm winner |", "|---|---|---|---|"]  # fmt: skip
        for row in warm_rows:
            guided, warm = row.sweeps.get("tpe"), row.sweeps["warm"]
            lines.append(f"| {row.dataset} | {_nll(guided.test_nll, guided.test_nll_stderr) if guided else '-'} "
                         f"| {_nll(warm.test_nll, warm.test_nll_stderr)} | {warm.winner} |")  # fmt: skip
    lines += ["", "## Baselines", "", "| dataset | " + " | ".join(BASELINES) + " |", "|---|" + "---|" * len(BASELINES)]
    for row in rows:
        cells = [f"{_nll(b.test_nll, b.test_nll_stderr)} ({b.epochs} ep, {b.seconds:.0f} s)" if (b := row.baselines.get(f)) else "-"
                 for f in BASELINES]  # fmt: skip
        lines.append(f"| {row.dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[DatasetRow], path: Path) -> None:
    """Best validation NLL so far against compute, guided vs random, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4 * columns, 3.2 * lines), squeeze=False)
    for axis, row in zip(axes.flat, rows, strict=False):
        for sampler, sweep in row.sweeps.items():
            if sweep.best_so_far:
                compute, best = zip(*sweep.best_so_far, strict=True)
                axis.step(np.array(compute) / 60, best, where="post", label=f"{sampler} (test {sweep.test_nll:.2f})")
        curves = [s.best_so_far for s in row.sweeps.values() if s.best_so_far]
        if curves:  # from the lowest final value up to where each curve stood a fifth of the way in
            low = min(curve[-1][1] for curve in curves)
            high = max(curve[len(curve) // 5][1] for curve in curves)
            if math.isfinite(low) and math.isfinite(high):
                margin = max(high - low, 0.01 * abs(low)) * 0.1
                axis.set_ylim(low - margin, max(high, low + margin) + margin)
        axis.set_title(row.dataset)
        axis.set_xlabel("trial compute (CPU-minutes)")
        axis.set_ylabel("best valid NLL so far")
        axis.legend(fontsize=8)
    for axis in list(axes.flat)[len(rows) :]:
        axis.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def header(argv: Sequence[str], module: str = "benchmarks.search") -> dict[str, str]:
    """The run's command, commit (taken when it starts) and machine."""
    from made_core.machine import cpu_model
    from search.provenance import provenance

    info = provenance()
    commit = info.get("git_commit") or "unknown"
    dirty = " (with uncommitted changes)" if info.get("git_dirty") else ""
    return {
        "command": f"`{shlex.join(['python', '-m', module, *argv])}`",
        "commit": f"{commit}{dirty}",
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from made_core.files import user_cache_dir

    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=tuple(SUITES), default="standard", help="datasets and budget (default: standard)")
    parser.add_argument("--datasets", default=None, help="comma-separated subset of the suite's datasets")
    parser.add_argument("--budget", type=float, default=None, help="seconds per sweep (default: the suite's)")
    parser.add_argument("--samplers", default="tpe,random", help="comma-separated: tpe, random, warm")
    parser.add_argument(
        "--baselines", default=",".join(BASELINES), help=f"comma-separated among {', '.join(BASELINES)}; '' for none"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warm-start-from",
        default=None,
        help="an earlier run's work folder: the 'warm' search starts from its other datasets' sweeps",
    )
    parser.add_argument("--data-dir", default=os.environ.get("MADE_DATA_DIR"), help="folder of the .npz files ($MADE_DATA_DIR)")
    parser.add_argument("--work", default=str(user_cache_dir() / "search-benchmark"), help="sweeps and derived data go here")
    parser.add_argument("--output", default="results", help="folder for search_benchmark.{csv,md,png}")
    parser.add_argument("-v", "--verbose", action="store_true", help="the sweeps' own progress lines too")
    parser.add_argument(
        "--render",
        default=None,
        metavar="RUN",
        help="run nothing: rewrite the report from a finished run's folder (<work>/<timestamp>: rows.json, header.json)",
    )
    parser.add_argument(
        "--combine",
        default=None,
        metavar="RUN,RUN,...",
        help="run nothing: compare guided and random search over finished runs at different --seed "
        "(their <work>/<timestamp> folders; one seed's datasets may come from several); writes search_benchmark_seeds.md",
    )
    args = parser.parse_args(argv)
    args.samplers = [s for s in args.samplers.split(",") if s]
    args.baselines = [b for b in args.baselines.split(",") if b]
    if "warm" in args.samplers and not args.warm_start_from:
        parser.error("--samplers warm needs --warm-start-from (an earlier run's work folder)")
    for value, allowed, flag in ((args.samplers, SAMPLERS, "--samplers"), (args.baselines, tuple(BASELINES), "--baselines")):
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return args


def write_outputs(rows: list[DatasetRow], suite_name: str, suite: Suite, run: dict[str, str], output: Path) -> str:
    """search_benchmark.{csv,md,png} in ``output``; returns the Markdown."""
    from results.storage import atomic_write_csv, atomic_write_text

    output.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(output / "search_benchmark.csv", table_rows(rows))
    text = render_markdown(rows, suite_name, suite, {**run, "datasets": f"{len(rows)}/{len(suite.datasets)}"})
    atomic_write_text(output / "search_benchmark.md", text)
    plot(rows, output / "search_benchmark.png")
    return text


def write_report(rows: list[DatasetRow], args: argparse.Namespace, suite: Suite, run: dict[str, str], started: float,
                 work: Path) -> str:  # fmt: skip
    """The outputs in --output, and the rows and header in the work folder (``--render`` reads them)."""
    from results.storage import atomic_write_text

    elapsed = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {(time.time() - started) / 60:.0f} min in all"
    text = write_outputs(rows, args.suite, suite, {**run, "finished": elapsed}, Path(args.output))
    atomic_write_text(work / "rows.json", json.dumps([asdict(r) for r in rows], default=str, indent=1))
    saved = {"header": {**run, "finished": elapsed}, "suite_name": args.suite, "suite": asdict(suite), "seed": args.seed}
    atomic_write_text(work / "header.json", json.dumps(saved, indent=1))
    return text


def row_from_json(record: dict[str, Any]) -> DatasetRow:
    """A DatasetRow as ``write_report`` saved it in rows.json."""
    sweeps = {}
    for sampler, sweep in record["sweeps"].items():
        sweeps[sampler] = SweepFigures(**{
            **sweep,
            "best_so_far": [tuple(point) for point in sweep["best_so_far"]],
            **{key: {int(rung): stopped for rung, stopped in sweep[key].items()}
               for key in ("winner_rungs", "winner_rungs_by_time") if key in sweep},
        })  # fmt: skip
    baselines = {family: BaselineResult(**result) for family, result in record["baselines"].items()}
    return DatasetRow(**{**record, "baselines": baselines, "sweeps": sweeps})


def render_saved_run(work: Path, args: argparse.Namespace) -> str:
    """The report of a finished run from its work folder's rows.json and header.json, with the
    known-structure fit added to synthetic rows that lack it (it is deterministic, and cheap) and
    newer sweep figures read from the run's experiment folders (``read_saved_run``)."""
    from made_core.data import load_dataset
    from made_core.registry import DATASETS

    run = read_saved_run(work)
    rows, suite = run.rows, run.suite
    for row in rows:
        if row.dataset in DATASETS and DATASETS[row.dataset].is_synthetic and not math.isfinite(row.known_structure_nll):
            row.known_structure_nll = known_structure(row.dataset, load_dataset(row.dataset, download=False, progress=False))
    return write_outputs(rows, run.suite_name, suite, run.header, Path(args.output))


@dataclass(frozen=True)
class SavedRun:
    """A finished benchmark run read back from its work folder (rows.json, header.json)."""

    seed: int
    header: dict[str, str]
    suite_name: str
    suite: Suite
    rows: list[DatasetRow]


def saved_seed(saved: dict[str, Any]) -> int:
    """The sweep seed of a saved run: header.json's ``seed``, or (runs saved before it was
    recorded) the ``--seed`` of its command, 0 without one."""
    if "seed" in saved:
        return int(saved["seed"])
    words = shlex.split(saved["header"].get("command", "").strip("`"))
    return int(words[words.index("--seed") + 1]) if "--seed" in words[:-1] else 0


def read_saved_run(folder: Path) -> SavedRun:
    """A finished run from its work ``folder``, with the sweep figures added to the benchmark
    since the run read from its experiment folders where they are still there."""
    from search.tuner import default_grace_period

    if not (folder / "rows.json").is_file() or not (folder / "header.json").is_file():
        raise ValueError(f"{folder} holds no rows.json and header.json of a benchmark run")
    saved = json.loads((folder / "header.json").read_text())
    rows = [row_from_json(record) for record in json.loads((folder / "rows.json").read_text())]
    suite = Suite(**{**saved["suite"], "datasets": tuple(saved["suite"]["datasets"])})
    for row in rows:
        for sweep in row.sweeps.values():
            experiment = folder / "experiments" / sweep.experiment
            missing = not math.isfinite(sweep.median_trial_nll) or (sweep.winner_rungs and not sweep.winner_rungs_by_time)
            if missing and experiment.is_dir():
                grace = default_grace_period(suite.max_epochs)
                again = read_sweep(experiment, sweep.sampler, os.cpu_count() or 1, grace, suite.max_epochs)
                sweep.median_trial_nll, sweep.full_length_share = again.median_trial_nll, again.full_length_share
                sweep.winner_rungs_by_time = again.winner_rungs_by_time
    return SavedRun(saved_seed(saved), saved["header"], saved["suite_name"], suite, rows)


def render_seeds(runs: Sequence[SavedRun]) -> str:
    """Guided against random search per dataset over runs at different sweep seeds: one seed's
    best trial is partly luck, so a verdict that holds over seeds is the one to trust.

    Per dataset, over the runs that swept it with both searches: each seed's test NLLs, the mean
    of guided minus random and its standard error over seeds, and on how many seeds guided was
    lower; first for the delivered model, then for the finalists' mixture where both have one.
    """
    lines = [
        f"# Search benchmark over seeds: suite `{runs[0].suite_name}`, {runs[0].suite.budget_seconds / 60:g} min per sweep",
        "",
        *(
            f"- seed {run.seed}: {run.header.get('command', '?')} at {run.header.get('commit', '?')}, "
            f"finished {run.header.get('finished', '?')}"
            for run in runs
        ),  # fmt: skip
        "",
        "Test NLL in nats of each sweep's delivered model. *Guided - random*: the mean over seeds of the "
        "difference, ± its standard error over seeds (negative: the guided search delivered better models).",
        "",
        *seed_comparison(runs, lambda sweep: sweep.test_nll, "the delivered model"),
        "",
        "## The finalists' mixture over seeds",
        "",
        "The same comparison for each sweep's mixture of its finalists (best.json's `mixture`), where both searches wrote one.",
        "",
        *seed_comparison(runs, lambda sweep: sweep.mixture_test_nll, "the mixture"),  # NaN where none was written
    ]
    lines += winner_rung_lines([sweep for run in runs for row in run.rows for sweep in row.sweeps.values()])
    return "\n".join(lines) + "\n"


def seed_comparison(runs: Sequence[SavedRun], value: Callable[[SweepFigures], float], what: str) -> list[str]:
    """``render_seeds``' table of ``value(sweep)`` (a test NLL; NaN: none), guided against random, and its summary line."""
    datasets = list(dict.fromkeys(row.dataset for run in runs for row in run.rows))
    lines = [
        "| dataset | seeds | guided (TPE), per seed | random, per seed | guided mean | random mean "
        "| guided - random | guided lower |",
        "|---|---|---|---|---|---|---|---|",
    ]
    compared, lower_on_mean, seed_wins, seed_total = 0, 0, 0, 0
    for dataset in datasets:
        triples = [(run.seed, value(row.sweeps["tpe"]), value(row.sweeps["random"]))
                   for run in runs for row in run.rows
                   if row.dataset == dataset and "tpe" in row.sweeps and "random" in row.sweeps]  # fmt: skip
        pairs = [(seed, g, r) for seed, g, r in triples if math.isfinite(g) and math.isfinite(r)]
        if not pairs:
            continue
        guided = np.array([g for _, g, _ in pairs])
        random = np.array([r for _, _, r in pairs])
        differences = guided - random
        stderr = float(np.std(differences, ddof=1) / math.sqrt(len(pairs))) if len(pairs) > 1 else math.nan
        wins = int(np.sum(differences < 0))
        compared += 1
        lower_on_mean += int(differences.mean() < 0)
        seed_wins, seed_total = seed_wins + wins, seed_total + len(pairs)
        lines.append(
            f"| {dataset} | {', '.join(str(seed) for seed, _, _ in pairs)} | {' / '.join(f'{g:.2f}' for g in guided)} "
            f"| {' / '.join(f'{r:.2f}' for r in random)} | {guided.mean():.2f} | {random.mean():.2f} "
            f"| {_nll(float(differences.mean()), stderr)} | {wins}/{len(pairs)} |"
        )
    if not compared:
        return [f"No dataset has {what} from both searches."]
    lines += ["", f"{what[0].upper()}{what[1:]}: guided lower on the mean over seeds on {lower_on_mean} of {compared} datasets; "
              f"lower in {seed_wins} of {seed_total} (dataset, seed) pairs."]  # fmt: skip
    return lines


def combine_runs(folders: Sequence[str], output: Path) -> str:
    """``--combine``: search_benchmark_seeds.md in ``output`` from finished runs at different seeds
    (a seed's datasets may come from several runs)."""
    from results.storage import atomic_write_text

    runs = [read_saved_run(Path(folder)) for folder in folders]
    pairs = [(row.dataset, run.seed) for run in runs for row in run.rows]
    if repeated := sorted({pair for pair in pairs if pairs.count(pair) > 1}):
        raise ValueError(
            "runs share a seed on a dataset (" + ", ".join(f"{dataset} seed {seed}" for dataset, seed in repeated)
            + "): combine runs at different seeds, or of different datasets"
        )  # fmt: skip
    if len({(run.suite_name, run.suite.budget_seconds) for run in runs}) > 1:
        raise ValueError("runs of different suites or budgets: combine runs of one suite at one budget")
    text = render_seeds(sorted(runs, key=lambda run: run.seed))
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "search_benchmark_seeds.md", text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.combine is not None:
        try:
            print(combine_runs([folder for folder in args.combine.split(",") if folder], Path(args.output)))
        except ValueError as error:
            print(f"error: --combine: {error}", file=sys.stderr)
            return 2
        return 0
    if args.render is not None:
        try:
            print(render_saved_run(Path(args.render), args))
        except ValueError as error:
            print(f"error: --render: {error}", file=sys.stderr)
            return 2
        return 0
    suite = SUITES[args.suite]
    datasets = tuple(args.datasets.split(",")) if args.datasets else suite.datasets
    unknown = sorted(set(datasets) - set(suite.datasets) - set(SUITES["standard"].datasets) - set(SUITES["smoke"].datasets))
    if unknown:
        print(f"error: --datasets: not benchmark datasets: {', '.join(unknown)}", file=sys.stderr)
        return 2
    suite = Suite(datasets, suite.budget_seconds if args.budget is None else args.budget, suite.max_epochs)
    work = Path(args.work).expanduser() / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slots = os.cpu_count() or 1
    started = time.time()
    log(f"search benchmark: {len(datasets)} datasets, {suite.budget_seconds:g} s per sweep, searches {args.samplers}, "
        f"baselines {args.baselines}; work folder {work}")  # fmt: skip
    run = header(argv)
    rows: list[DatasetRow] = []
    for index, name in enumerate(datasets, start=1):
        log(f"dataset {index}/{len(datasets)}: {name}")
        rows.append(run_dataset(name, suite, args, work, slots))
        text = write_report(rows, args, suite, run, started, work)  # after every dataset: a cut run keeps its rows
    print(text)
    log(f"written: {Path(args.output) / 'search_benchmark.md'}, .csv, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
