"""The Ray Tune side of a sweep: OptunaSearch + ASHA + resources + storage, new or restored.

Configuration flows one way: ``SweepPlan`` (validated CLI input) -> the searcher, the
scheduler and the run config -> ``tune.Tuner``.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from made_core.precision import DEFAULT_PRECISION
from results.schema import OBJECTIVE, RESEEDS_FOLDER, TRIAL_SEED_KEY
from search.timeline import TrialTimeline
from search.trainable import TrialSettings, train_made
from spaces import SearchSpace

logger = logging.getLogger("search")


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep needs, validated. ``storage`` is the experiments' parent folder."""

    dataset: str  # the canonical name, or an own .npz file's stem
    data_source: str  # what load_dataset reads: the name, or the .npz file's absolute path
    space: SearchSpace
    space_source: str  # the name or path given on the command line
    name: str
    storage: str
    num_samples: int | None  # None: trials until the time budget is spent
    max_epochs: int
    grace_period: int
    brackets: int  # ASHA brackets (1: every trial first judged at grace_period)
    patience: int
    validate_every: int | None  # None: made_core's rule (TrainConfig.validation_interval)
    time_budget_seconds: float | None
    cpus_per_trial: float
    gpus_per_trial: float
    concurrency: int | None
    seed: int
    sampler: str  # "tpe" or "random"
    optuna_storage: str
    study_name: str  # the Optuna study in optuna_storage (several experiments may continue one)
    test_masks: int | None
    valid_masks: int | None
    max_failures: int
    checkpoint_every: int | None  # None: checkpoints by time (checkpoint_seconds), rungs and the last epoch
    checkpoint_seconds: float
    report_seconds: float  # a trial reports about this often besides rungs, checkpoints and its end
    finalists: int  # top trials re-evaluated with their test-time ensembles before the test
    warm_start: tuple[dict[str, Any], ...]  # start points from earlier sweeps, after the space's own
    objective: str = "test-ensemble"  # results.schema.OBJECTIVES
    reseeds: int | None = 0  # retrainings of the leading configuration with other seeds (None: search.reseed's rule)
    reseed_share: float = 0.0  # of the time budget, kept for the retrainings when reseeds > 0
    precision: str = DEFAULT_PRECISION  # training steps of GPU trials (made_core.precision)
    tracking: str | None = None  # "mlflow" | "wandb": Ray Tune's logger callback for it
    local_slots: int | None = None  # trials at once on a Ray the driver started (None: a cluster it joined)
    verbose: bool = False  # Ray Tune's own trial table

    @property
    def experiment_path(self) -> Path:
        return Path(self.storage) / self.name

    @property
    def search_budget_seconds(self) -> float | None:
        """The search's share of the time budget: all of it, less ``reseed_share`` when it retrains."""
        if self.time_budget_seconds is None or not self.reseeds:
            return self.time_budget_seconds
        return self.time_budget_seconds * (1.0 - self.reseed_share)

    @property
    def trial_settings(self) -> TrialSettings:
        return TrialSettings(
            self.max_epochs,
            self.patience,
            self.seed,
            self.valid_masks,
            self.checkpoint_every,
            self.test_masks,
            self.objective,
            self.checkpoint_seconds,
            tuple(asha_rungs(self.grace_period, self.max_epochs)),
            self.precision,
            self.validate_every,
            self.report_seconds,
        )


REDUCTION_FACTOR = 3  # ASHA keeps the best third of the trials at each rung


def default_grace_period(max_epochs: int) -> int:
    """ASHA's first rung when none is given: generous, a fifth of the epochs, because ensembles
    of many masks learn slowly at first and end best."""
    return max(1, max_epochs // 5)


def asha_rungs(grace_period: int, max_epochs: int, reduction_factor: int = REDUCTION_FACTOR) -> list[int]:
    """The epochs where ASHA may stop a trial: grace, grace x rf, grace x rf^2, ... below max_epochs."""
    rungs, rung = [], grace_period
    while rung < max_epochs:
        rungs.append(rung)
        rung *= reduction_factor
    return rungs


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default embeds every parameter and overflows paths)."""
    return f"trial_{trial.trial_id}"


def make_trainable(plan: SweepPlan, train_data: np.ndarray, valid_data: np.ndarray) -> Any:
    """The trainable with the data put in the object store once, and per-trial resources."""
    with_data = tune.with_parameters(train_made, train_data=train_data, valid_data=valid_data, settings=plan.trial_settings)
    return tune.with_resources(with_data, {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})


# How long after trials end the searcher holds back a suggestion while trials it already
# suggested wait to take their slots (a reused actor's reset takes milliseconds): the bound
# when the searcher cannot tell whether they have started.
SUCCESSOR_WAIT_SECONDS = 0.5


class MadeOptunaSearch(OptunaSearch):
    """OptunaSearch that records trials the sweep cut short as PRUNED, not COMPLETE, and lets
    a waiting trial take a freed slot before it suggests the next one.

    Ray's OptunaSearch tells Optuna that a trial ASHA stopped at epoch 10 is complete with its
    epoch-10 value. MADE with many masks or an agnostic ordering learns slowly at first and
    ends best, so TPE would learn to avoid exactly those. As PRUNED trials (with the
    per-epoch values already reported), TPE ranks them after every trial that ran its course.
    A trial ran its course when it reached ``max_epochs`` or stopped early on its own
    (patience), which the trainable reports as ``stopped_early``.

    Ray Tune asks for the next trial at the start of its loop, before it hands a finished
    trial's actor to the trial already waiting (TuneController.step): that trial's slot stays
    idle through a TPE suggestion (35 ms with SQLite on 2 cores, 50-90 trials in a 3-minute
    sweep). Given the sweep's ``timeline`` (who started when), ``suggest`` returns None ("not
    now"; Ray asks again) while no more trials ended lately than waiting trials can take.
    """

    def __init__(self, *args: Any, max_epochs: int, timeline: TrialTimeline | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._timeline = timeline
        self._end_times: list[float] = []  # time.time() of trial ends in the last SUCCESSOR_WAIT_SECONDS

    def suggest(self, trial_id: str) -> dict | None:
        if self._successor_waiting():
            return None
        return super().suggest(trial_id)

    def _successor_waiting(self) -> bool:
        """Whether every slot freed lately can go to a trial this searcher suggested that has not started."""
        if self._timeline is None:
            return False
        since = time.time() - SUCCESSOR_WAIT_SECONDS
        self._end_times = [moment for moment in self._end_times if moment > since]
        if not self._end_times:
            return False
        started = self._timeline.started
        # A start after the first of these ends took one of their slots.
        freed = len(self._end_times) - sum(1 for moment in started.values() if moment > self._end_times[0])
        waiting = sum(1 for trial_id in self._ot_trials if trial_id not in started and trial_id not in self._completed_trials)
        return 0 < freed <= waiting

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._timeline is not None:  # without one nothing prunes the list, and nothing reads it
            self._end_times.append(time.time())
        cut_short = (
            result is not None
            and not error
            and not result.get("stopped_early", False)
            and int(result.get("epoch", self._max_epochs)) < self._max_epochs
        )
        if cut_short and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            import optuna

            assert self._ot_study is not None  # set up by OptunaSearch before any result
            assert result is not None  # cut_short implies a result
            ot_trial = self._ot_trials[trial_id]
            # Ray hands the result that made ASHA stop the trial to on_trial_complete, not to
            # on_trial_result, so its value never became an intermediate value: TPE ranks a
            # PRUNED trial by its last one, and one stopped at its first report had none.
            step = int(result.get("training_iteration", 0))
            reported = self._ot_study.get_trials(deepcopy=False)[ot_trial.number].intermediate_values
            if step not in reported and math.isfinite(float(result.get(OBJECTIVE, math.nan))):
                ot_trial.report(float(result[OBJECTIVE]), step)
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        """Ray's save, without the timeline: a restored sweep's callbacks are copies of the first fit's."""
        timeline, self._timeline = self._timeline, None
        try:
            super().save(checkpoint_path)
        finally:
            self._timeline = timeline

    def restore(self, checkpoint_path: str) -> None:
        """Restore, then treat as finished every trial the study already holds as finished.

        Ray snapshots the searcher with the experiment every few seconds, while the study's
        storage records each trial's end at once: a driver killed between the two resumes
        trials the study has closed, and Optuna refuses their reports. Their re-run (from the
        last checkpoint) then leaves the study as it was.
        """
        super().restore(checkpoint_path)
        assert self._ot_study is not None
        finished = {t.number for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished()}
        self._completed_trials.update(tid for tid, trial in self._ot_trials.items() if trial.number in finished)


def start_points_of(plan: SweepPlan) -> list[dict[str, Any]]:
    """The configurations the sweep evaluates first: its space's start points, then the warm start's."""
    return [*plan.space.start_points(plan.dataset), *plan.warm_start]


def make_sampler(plan: SweepPlan) -> Any:
    """The plan's seeded Optuna sampler: multivariate TPE, or random search (the baseline)."""
    import optuna

    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=plan.seed)
    # Few random start-up trials (the space's start points count among them), so most of the
    # budget is guided. A budget-driven sweep does not know how many trials it will hold: in the
    # search benchmark's 3-minute sweeps it held 6-93, and with 4 start-up trials (2 of them
    # random draws after the 2 start points) the guided and the random search chose the same
    # trial on 3 of 7 sets; so it guides as soon as its start points are done.
    start_points = len(start_points_of(plan))
    if plan.num_samples is None:
        startup_trials = max(2, start_points)
    else:
        startup_trials = max(4, start_points, min(10, plan.num_samples // 3))
    return optuna.samplers.TPESampler(
        seed=plan.seed, multivariate=True, group=True, constant_liar=True, n_startup_trials=startup_trials
    )


def make_searcher(plan: SweepPlan, timeline: TrialTimeline | None = None) -> OptunaSearch:
    """The plan's sampler over its space (start points first), its study stored in
    ``plan.optuna_storage``; ``timeline``: the sweep's, for MadeOptunaSearch's successor wait."""
    import optuna

    sampler = make_sampler(plan)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(plan.optuna_storage)
    return MadeOptunaSearch(
        max_epochs=plan.max_epochs,
        space=plan.space.define_by_run(plan.dataset),
        points_to_evaluate=start_points_of(plan) or None,
        metric=OBJECTIVE,
        mode="min",
        sampler=sampler,
        study_name=plan.study_name,
        storage=storage,
        timeline=timeline,
    )


def tracking_callbacks(plan: SweepPlan, experiment_path: Path) -> list[tune.Callback]:
    """Ray Tune's own MLflow or W&B logger callback for ``plan.tracking`` (none without).

    Their local files go into the experiment folder, never the working directory: MLflow's
    file store unless $MLFLOW_TRACKING_URI names a server, W&B's run folder unless $WANDB_DIR.
    """
    if plan.tracking == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            uri = (experiment_path / "mlruns").resolve().as_uri()
            # MLflow 3 refuses its file store unless asked: it needs no server and no extra packages.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=plan.name)]
    if plan.tracking == "wandb":
        from ray.air.integrations.wandb import WandbLoggerCallback

        folder = os.environ.get("WANDB_DIR") or str(experiment_path.resolve())
        return [WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", "made-search"), group=plan.name, dir=folder)]
    return []


class StartPointsRunTheirCourse(ASHAScheduler):
    """ASHA that never stops a trial of one of the space's start points.

    A space's start points are its author's strong general configurations, and slow starters:
    the library's defaults (8 agnostic masks, Adam 1e-3) were stopped at ASHA's first rung
    (epoch 40 of 200) in a 3-minute sweep on the search benchmark's mnist-pooled, at validation
    34.76 behind faster-learning trials, while the same configuration trained to the end in one
    run reached test 33.34, better than anything the sweep kept (33.77). Run to the end, they
    put a floor under what a short sweep delivers. Their results still enter the rungs, so the
    other trials are judged against them as before. Ray's schedulers have no per-trial
    exemption, hence this subclass.
    """

    def __init__(self, protected: Sequence[Mapping[str, Any]] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protected = [dict(point) for point in protected]

    def is_protected(self, config: Mapping[str, Any]) -> bool:
        return any(all(config.get(key) == value for key, value in point.items()) for point in self.protected)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and result.get(self._time_attr, 0) < self._max_t and self.is_protected(trial.config):
            self._num_stopped -= 1
            return self.CONTINUE
        return action


def make_scheduler(plan: SweepPlan) -> StartPointsRunTheirCourse:
    """ASHA with the plan's grace period and brackets, the space's start points exempt.

    Rungs count the trainer's own epochs: a trial restored from an older checkpoint than
    its last report repeats epochs, and Ray's training_iteration would count them twice."""
    return StartPointsRunTheirCourse(
        protected=plan.space.start_points(plan.dataset),
        time_attr="epoch", max_t=plan.max_epochs, grace_period=plan.grace_period,
        reduction_factor=REDUCTION_FACTOR, brackets=plan.brackets,
    )  # fmt: skip


# What Ray Tune 2.60 imports as a fit starts, before it starts a trial: tensorboardX for its
# default TensorBoard logger, and the integrations its callback telemetry checks callbacks
# against (with mlflow and wandb installed). 2.1 s on 2 cores, while both trial slots waited.
FIT_START_IMPORTS = (
    "tensorboardX",
    "ray.air.integrations.mlflow",
    "ray.air.integrations.wandb",
    "ray.air.integrations.comet",
    "ray.tune.logger.aim",
)


def preload_fit_imports(modules: Sequence[str] = FIT_START_IMPORTS) -> threading.Thread:
    """Import ``modules`` in a background thread (a missing one is skipped), started while the
    driver still loads data and starts Ray; join it before the fit. Ray Tune has no switch
    for either import, so the driver takes them off the trials' clock by doing them early."""

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError:
                pass

    thread = threading.Thread(target=load, name="preload-fit-imports", daemon=True)
    thread.start()
    return thread


def make_tuner(plan: SweepPlan, trainable: Any, callbacks: Sequence[tune.Callback], experiment_path: Path) -> tune.Tuner:
    """The search's Tuner: ``callbacks`` (progress, timeline) and the plan's tracking callback;
    a TrialTimeline among them also tells the searcher which trials started."""
    scheduler = make_scheduler(plan)
    timeline = next((callback for callback in callbacks if isinstance(callback, TrialTimeline)), None)
    tune_config = tune.TuneConfig(
        metric=OBJECTIVE,
        mode="min",
        search_alg=make_searcher(plan, timeline),
        scheduler=scheduler,
        num_samples=-1 if plan.num_samples is None else plan.num_samples,  # -1: until time_budget_s ends the sweep
        max_concurrent_trials=search_concurrency(plan),
        time_budget_s=plan.search_budget_seconds,
        trial_dirname_creator=trial_dirname,
        # A finished trial's worker process runs the next trial: no process start, imports or
        # kernel loading between trials (slot use on 75 s dna sweeps: 0.67 without, 0.85 with).
        reuse_actors=True,
    )
    run_config = make_run_config(plan, plan.name, plan.storage, [*callbacks, *tracking_callbacks(plan, experiment_path)])
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def search_concurrency(plan: SweepPlan) -> int | None:
    """Ray Tune's max_concurrent_trials for the search: --concurrency if given; else, on a Ray the
    driver started, its slots plus one trial waiting for the next free slot.

    Behind a searcher of its own, Ray Tune keeps one trial pending unless it knows the
    concurrency (tune_controller._get_max_pending_trials): the successor of a finished trial is
    ready, but the slots' first trials start one after the other (4 and 8 s into a 2-slot
    sweep). Slots + 1 live trials start them together and keep one waiting."""
    if plan.concurrency is not None or plan.local_slots is None:
        return plan.concurrency
    return plan.local_slots + 1


def make_reseed_tuner(
    plan: SweepPlan, trainable: Any, config: Mapping[str, Any], seeds: Sequence[int], location: str,
    time_budget_seconds: float | None, progress: tune.Callback, experiment_path: Path,
) -> tune.Tuner:  # fmt: skip
    """``config`` trained once per seed (``TRIAL_SEED_KEY``), to the end (no scheduler), as the
    Ray Tune experiment ``RESEEDS_FOLDER`` inside the sweep's folder ``location`` (local:
    ``experiment_path``); tracked like the sweep's trials."""
    tune_config = tune.TuneConfig(
        metric=OBJECTIVE,
        mode="min",
        max_concurrent_trials=plan.concurrency,
        time_budget_s=time_budget_seconds,
        trial_dirname_creator=trial_dirname,
        reuse_actors=True,
    )
    param_space = {**config, TRIAL_SEED_KEY: tune.grid_search(list(seeds))}
    run_config = make_run_config(plan, RESEEDS_FOLDER, location, [progress, *tracking_callbacks(plan, experiment_path)])
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def make_run_config(plan: SweepPlan, name: str, storage_path: str, callbacks: list[tune.Callback]) -> tune.RunConfig:
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        # The newest checkpoint also carries the best weights, so keeping the last two is enough
        # (num_to_keep=1 with a checkpoint every epoch floods the log).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        callbacks=callbacks,
        # 2: Ray Tune's trial status table and per-trial results.
        verbose=2 if plan.verbose else 0,
    )


def restore_tuner(location: str, trainable: Any) -> tune.Tuner:
    """Continue the sweep at ``location`` (a path or URI): finished trials stay, unfinished and errored ones resume."""
    return tune.Tuner.restore(location, trainable=trainable, resume_unfinished=True, resume_errored=True)


class ProgressPrinter(tune.Callback):
    """One line per finished or failed trial, with the sweep's best so far and the elapsed time.

    Stateless across restores by design (Ray only supports stateless callbacks on resume):
    counts are recomputed from the trial list Ray passes in.
    """

    def __init__(self, num_samples: int | None) -> None:
        self.total = "" if num_samples is None else f"/{num_samples}"
        self.started = time.monotonic()
        self.last_heartbeat = 0.0

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    @staticmethod
    def _best(trials: list[Any]) -> float:
        values = [t.last_result.get(OBJECTIVE, math.inf) for t in trials if t.last_result]
        return min((v for v in values if v is not None and math.isfinite(v)), default=math.inf)

    def _line(self, trials: list[Any], trial: Any, what: str) -> None:
        # Ray calls this before it marks ``trial`` terminated: count it explicitly.
        done = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR") and t is not trial) + 1
        result = trial.last_result or {}
        value = result.get(OBJECTIVE)
        shown = f"{value:.3f}" if isinstance(value, float) and math.isfinite(value) else "-"
        logger.info(
            f"[{self._elapsed()}] trial {trial.trial_id} {what} after {result.get('epoch', 0)} epochs: "
            f"best valid NLL {shown} | {done}{self.total} done, sweep best {self._best(trials):.3f}",
        )

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(trials, trial, "finished")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(trials, trial, "FAILED")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        epoch = (trial.last_result or {}).get("epoch", 0)
        logger.info(
            f"[{self._elapsed()}] trial {trial.trial_id} failed at epoch {epoch} (its worker died or it raised); "
            f"retrying from its last checkpoint",
        )

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        # A heartbeat every 30 s so long trials still show progress.
        now = time.monotonic()
        if now - self.last_heartbeat < 30:
            return
        self.last_heartbeat = now
        running = [t for t in trials if t.status == "RUNNING"]
        epochs = ", ".join(f"{t.trial_id}@{(t.last_result or {}).get('epoch', 0)}" for t in running)
        logger.info(
            f"[{self._elapsed()}] {len(running)} running ({epochs or 'starting'}), "
            f"{sum(1 for t in trials if t.status in ('TERMINATED', 'ERROR'))}{self.total} done, "
            f"sweep best {self._best(trials):.3f}",
        )
