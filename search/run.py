"""``python -m search.run --dataset dna`` (``made-search``): a hyperparameter sweep of MADE with Ray Tune + Optuna.

The driver validates its input (exit 2 with one line on bad input), loads the data once,
starts or joins Ray, runs the sweep (OptunaSearch proposes, ASHA stops bad trials early),
then evaluates the best trial by validation NLL once on the test set and writes the
experiment's files (trials.csv, curves.csv, best.json, best_model/) and the aggregated
tables and figures of its storage (``<storage>/tables``, ``<storage>/figures``; ``--publish``
writes the project's ``results/`` instead). ``--resume`` continues an interrupted sweep
without losing finished trials. ``search.sweep`` is the same sweep called from Python.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from made_core.cli import DefaultsHelpFormatter
from made_core.precision import DEFAULT_PRECISION, PRECISIONS
from results import schema
from results.aggregate import DEFAULT_STORAGE, PUBLISHED_FIGURES_DIR, PUBLISHED_TABLES_DIR
from results.storage import STAGING_ENV
from search.settings import UsageError, read_config

EXIT_BAD_INPUT = 2
EXIT_NO_RESULT = 1
EXIT_INTERRUPTED = 130
# --tracking NAME: the Python package it needs and the extra that installs it.
TRACKING_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}

logger = logging.getLogger("search")


def parse_duration(text: str) -> float:
    """Seconds in "90", "45s", "30m", "2h", "1h30m" or "1d"; raises UsageError otherwise."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        seconds = float(cleaned)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", cleaned)
        if not parts or "".join(number + unit for number, unit in parts) != cleaned:
            raise UsageError(f"--time-budget {text!r} is not a duration (examples: 90, 45s, 30m, 2h, 1h30m)")
        scale = {"d": 86400, "h": 3600, "m": 60, "s": 1}
        seconds = sum(float(number) * scale[unit] for number, unit in parts)
    if seconds <= 0:
        raise UsageError(f"--time-budget must be positive, got {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    from made_core.ensembles import SAMPLING_TEST_MASK_CHOICES  # torch is loaded by made_core already

    parser = argparse.ArgumentParser(
        prog="made-search", description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    add = parser.add_argument
    add(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML file of settings (keys: these flags' names, dashes or underscores); flags given here override it",
    )
    add(
        "--dataset",
        required=True,
        help="dataset name (mnist, adult, connect4, dna, ..., synthetic-mob, synthetic-tiny) or the path of an .npz file "
        "of one's own (train_data, valid_data, test_data; named by its stem)",
    )
    add("--space", default="default", help="search space: default, paper, quick, or a .py/.yaml/.json file")
    add(
        "--num-samples",
        type=int,
        default=None,
        help=f"number of trials (unset: {DEFAULT_NUM_SAMPLES}; with --time-budget, as many as the budget holds)",
    )
    add("--max-epochs", type=int, default=200, help="epochs per trial at most (ASHA's max_t)")
    add(
        "--grace-period",
        type=int,
        default=None,
        help="epochs before ASHA may stop a trial (unset: a fifth of --max-epochs, at least 1)",
    )
    add(
        "--brackets",
        type=int,
        default=1,
        help="ASHA brackets: bracket k first judges a trial at grace period x 3^k epochs, so with 2 or more some "
        "trials (slow starters among them) get a longer first look",
    )
    add("--patience", type=int, default=30, help="early-stopping patience in epochs (the paper's 30)")
    add(
        "--validate-every",
        type=int,
        default=None,
        help="epochs between a trial's validations (unset: every epoch unless validating would cost more than a "
        "third of the training between two, at most patience / 4; ASHA's rung epochs are always validated)",
    )
    add(
        "--time-budget",
        default=None,
        help="stop the sweep cleanly after this long (e.g. 30m, 2h) and still report (unset: no limit)",
    )
    add("--cpus-per-trial", type=float, default=1.0, help="CPUs reserved for each trial")
    add("--gpus-per-trial", type=float, default=0.0, help="GPUs for each trial, fractions allowed, e.g. 0.5")
    add(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULT_PRECISION,
        help="training steps of GPU trials: fp32, tf32 (TF32 matmuls) or bf16 (bf16 autocast); CPU trials and every "
        "validation and test NLL stay fp32",
    )
    add("--concurrency", type=int, default=None, help="trials at once (unset: as many as resources allow)")
    add("--address", default=None, help="join a running Ray cluster (e.g. auto or HOST:6379); unset: start Ray here")
    add("--num-cpus", type=int, default=None, help="CPUs for a locally started Ray (unset: all)")
    add("--storage", default=DEFAULT_STORAGE, help="parent folder or URI (s3://bucket/prefix, gs://...) of experiment folders")
    add(
        "--local-dir",
        default=None,
        help=f"URI storage only: local staging folder for the driver's files and the SQLite study "
        f"(unset: ${STAGING_ENV}, else ~/.cache/made-search/experiments)",
    )
    add("--shared-storage", action="store_true", help="declare a local --storage path shared by every node (e.g. NFS)")
    add("--name", default=None, help="experiment name (unset: <dataset>-<space>-<UTC time>)")
    add("--resume", action="store_true", help="continue the interrupted sweep --name (unset --name: the newest for --dataset)")
    add(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="Optuna sampler: tpe (guided: multivariate TPE) or random (the baseline search guided search must beat)",
    )
    add(
        "--warm-start",
        action="append",
        default=None,
        metavar="SOURCE",
        help="start from the best configurations of earlier sweeps: an experiment folder, a storage of them, "
        "or a results table (trials.csv, best_test_nll.csv); repeatable (unset: the space's start points only)",
    )
    add("--warm-start-count", type=int, default=3, help="configurations taken from each dataset of a --warm-start source")
    add("--seed", type=int, default=0, help="seed of the sampler and of every trial")
    add("--data-dir", default=None, help="folder of .npz files (unset: $MADE_DATA_DIR, else a cache dir)")
    add(
        "--test-masks",
        type=int,
        default=None,
        help="test ensemble size (unset: all K masks of a cycled model; for a mask-sampling model the size "
        f"among {', '.join(map(str, SAMPLING_TEST_MASK_CHOICES))} with the lowest validation NLL)",
    )
    add("--valid-masks", type=int, default=None, help="validation ensemble size during training (unset: min(num_masks, 8))")
    add(
        "--objective",
        choices=schema.OBJECTIVES,
        default=schema.OBJECTIVES[0],
        help="the validation NLL trials are ranked by: an estimate of the test-time ensemble's, extrapolated "
        "from the validation ensemble (test-ensemble), or the validation ensemble's own (valid-ensemble)",
    )
    add(
        "--optuna-storage",
        default=None,
        help="SQLAlchemy URL of the Optuna study, e.g. postgresql://user@host/db (unset: sqlite file in the experiment)",
    )
    add(
        "--study-name",
        default=None,
        help="Optuna study name; experiments given the same --optuna-storage and --study-name continue one study "
        "(unset: the experiment name)",
    )
    add(
        "--finalists",
        type=int,
        default=8,
        help="top trials by the sweep's objective re-evaluated on validation with their test-time ensembles; "
        "the best of them is tested (1: the top trial as is), and their mixture weighted on validation too",
    )
    add(
        "--reseeds",
        type=int,
        default=None,
        help="after the search, train the leading finalist's configuration again with this many other seeds "
        "(seed+1, ...); the one of them and the leader with the lowest validation NLL is tested (unset: only "
        "when the trial count ends the search before --time-budget and the time left holds the leader's "
        "training, once per trial slot, at most 4; 0: never)",
    )
    add(
        "--reseed-share",
        type=float,
        default=0.15,
        help="with --reseeds and --time-budget: the share of the budget kept for the retraining; the search stops at the rest",
    )
    add("--max-failures", type=int, default=2, help="retries of a failed trial from its last checkpoint")
    add(
        "--checkpoint-every",
        type=int,
        default=None,
        help="also checkpoint every N epochs (unset: by time, --checkpoint-seconds); trials always checkpoint "
        "at ASHA's rungs and their last epoch",
    )
    add("--checkpoint-seconds", type=float, default=10.0, help="seconds of training between trial checkpoints")
    add(
        "--report-seconds",
        type=float,
        default=1.0,
        help="seconds between a trial's reports to the driver, besides ASHA's rungs, checkpoints and its end "
        "(each is a round trip the trial waits for; 0: after every validation)",
    )
    add(
        "--tracking",
        choices=tuple(TRACKING_PACKAGES),
        default=None,
        help="also log every trial to MLflow or Weights & Biases through Ray Tune's callbacks (extras mlflow, wandb; unset: neither)",
    )
    add("--tables-dir", default=None, help="aggregated tables to refresh at the end (unset: <storage>/tables)")
    add("--figures-dir", default=None, help="figures to refresh at the end (unset: <storage>/figures)")
    add(
        "--publish",
        action="store_true",
        help=f"refresh the project's published {PUBLISHED_TABLES_DIR} and {PUBLISHED_FIGURES_DIR} instead",
    )
    add("--no-tables", action="store_true", help="do not refresh the aggregated tables and figures")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="debug messages and Ray Tune's own trial table")
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line over the settings of its ``--config`` file (UsageError for a bad file)."""
    parser = build_parser()
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config")
    config_file = early.parse_known_args(argv)[0].config
    if config_file:
        settings = read_config(config_file, parser)
        parser.set_defaults(**settings)
        for action in parser._actions:
            if action.dest in settings:
                action.required = False
    return parser.parse_args(argv)


# -- validation -------------------------------------------------------------------------
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def _check_storage(storage: str) -> None:
    """A local folder that can be created and written, or a URI pyarrow can open and write under."""
    from results.storage import StorageError, check_writable

    try:
        check_writable(storage)
    except StorageError as error:
        raise UsageError(str(error)) from None


def _staging_root(args: argparse.Namespace) -> Path | None:
    return Path(args.local_dir).expanduser() if getattr(args, "local_dir", None) else None


def experiment_folder(plan: Any, args: argparse.Namespace) -> Any:
    """The plan's experiment folder: local, or a URI with its local staging folder."""
    from results.storage import ExperimentFolder

    return ExperimentFolder(plan.storage, plan.name, _staging_root(args))


def _default_optuna_storage(experiment_path: Path) -> str:
    return f"sqlite:///{(experiment_path / schema.STUDY_FILE).resolve()}"


def _sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL, else None."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def _check_optuna_url(url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        raise UsageError(
            f"--optuna-storage {url!r} is not an SQLAlchemy URL (e.g. sqlite:///study.db, postgresql://...)"
        ) from None


def _newest_unfinished(storage: str, dataset: str) -> str | None:
    """The newest experiment for ``dataset`` under ``storage``, a path or a URI (for --resume without --name)."""
    from results.storage import StorageError, list_experiments

    try:
        experiments = list_experiments(str(storage), schema.EXPERIMENT_FILE)
    except StorageError as error:
        raise UsageError(f"--resume without --name: {error}; pass --name") from None
    candidates = [
        (str(info.get("started_at", "")), name)
        for name, info in experiments
        if isinstance(info, dict) and info.get("dataset") == dataset
    ]
    return max(candidates)[1] if candidates else None


DEFAULT_NUM_SAMPLES = 16
SAMPLERS = ("tpe", "random")


def trial_count(num_samples: int | None, time_budget_seconds: float | None) -> int | None:
    """The sweep's trial count: as given; unset with a time budget, None (trials keep coming
    until the budget is spent); unset without one, DEFAULT_NUM_SAMPLES."""
    if num_samples is not None:
        return num_samples
    return None if time_budget_seconds is not None else DEFAULT_NUM_SAMPLES


def make_plan(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Validate the command line into a SweepPlan (and the experiment.json of a resumed sweep)."""
    from made_core.data import DatasetError, canonical_name, is_dataset_file
    from results.storage import ExperimentFolder, StorageError, normalize_storage
    from search.tuner import SweepPlan, default_grace_period
    from spaces import SpaceError, get_space

    if args.grace_period is None:
        args.grace_period = default_grace_period(args.max_epochs)
    for flag in (
        "num_samples",
        "max_epochs",
        "grace_period",
        "patience",
        "validate_every",
        "checkpoint_every",
        "finalists",
        "warm_start_count",
        "brackets",
    ):
        value = getattr(args, flag)
        if value is None:  # --num-samples unset
            continue
        _require(value >= 1, f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    _require(args.cpus_per_trial > 0, f"--cpus-per-trial must be positive, got {args.cpus_per_trial}")
    _require(args.gpus_per_trial >= 0, f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    _require(
        args.gpus_per_trial <= 1 or float(args.gpus_per_trial).is_integer(),
        f"--gpus-per-trial above 1 must be a whole number, got {args.gpus_per_trial}",
    )
    _require(args.concurrency is None or args.concurrency >= 1, f"--concurrency must be >= 1, got {args.concurrency}")
    _require(args.num_cpus is None or args.num_cpus >= 1, f"--num-cpus must be >= 1, got {args.num_cpus}")
    _require(args.checkpoint_seconds > 0, f"--checkpoint-seconds must be positive, got {args.checkpoint_seconds}")
    _require(args.report_seconds >= 0, f"--report-seconds must be >= 0, got {args.report_seconds}")
    _require(args.max_failures >= 0, f"--max-failures must be >= 0, got {args.max_failures}")
    _require(args.reseeds is None or args.reseeds >= 0, f"--reseeds must be >= 0, got {args.reseeds}")
    _require(0 <= args.reseed_share < 1, f"--reseed-share must be in [0, 1), got {args.reseed_share}")
    _require(args.test_masks is None or args.test_masks >= 1, f"--test-masks must be >= 1, got {args.test_masks}")
    _require(args.valid_masks is None or args.valid_masks >= 1, f"--valid-masks must be >= 1, got {args.valid_masks}")
    _require(
        args.grace_period <= args.max_epochs, f"--grace-period ({args.grace_period}) exceeds --max-epochs ({args.max_epochs})"
    )
    _require(args.address is None or args.num_cpus is None, "--num-cpus applies to a local Ray only, not with --address")
    if args.tracking is not None:
        package = TRACKING_PACKAGES[args.tracking]
        _require(
            importlib.util.find_spec(package) is not None,
            f"--tracking {args.tracking} needs the {package} package: pip install 'made-search[{args.tracking}]'",
        )
    time_budget = parse_duration(args.time_budget) if args.time_budget else None
    data_source = args.dataset
    if is_dataset_file(args.dataset):
        data_file = Path(args.dataset).expanduser().resolve()
        _require(data_file.is_file(), f"--dataset {args.dataset}: no such file")
        dataset, data_source = data_file.stem, str(data_file)
    else:
        try:
            dataset = canonical_name(args.dataset)
        except DatasetError as error:
            raise UsageError(str(error)) from None
    _check_storage(args.storage)
    storage = normalize_storage(args.storage)

    previous: dict[str, Any] = {}
    name = args.name
    try:
        if args.resume:
            name = name or _newest_unfinished(storage, dataset)
            _require(name is not None, f"--resume: no experiment for dataset {dataset} under {storage}")
            assert name is not None  # _require raised otherwise
            folder = ExperimentFolder(storage, name, _staging_root(args))
            marker = folder.remote(schema.EXPERIMENT_FILE)
            _require(
                folder.has_file(schema.EXPERIMENT_FILE), f"--resume: {marker} does not exist (is --name or --storage wrong?)"
            )
            previous = folder.read_json(schema.EXPERIMENT_FILE)
            _require(
                previous.get("dataset") == dataset,
                f"--resume: experiment {name} is for dataset {previous.get('dataset')}, not {dataset}",
            )
        else:
            name = name or f"{dataset}-{Path(args.space).stem}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
            _require(
                re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) is not None,
                f"--name {name!r}: use letters, digits, '.', '_' and '-'",
            )
            _require(
                name not in schema.STORAGE_OUTPUT_FOLDERS, f"--name {name!r} is reserved for the storage's aggregated outputs"
            )
            folder = ExperimentFolder(storage, name, _staging_root(args))
            _require(
                not folder.exists(),
                f"experiment {name} already exists under {storage}: pass --resume to continue it, or a new --name",
            )
    except (StorageError, ValueError) as error:
        if isinstance(error, UsageError):
            raise
        raise UsageError(str(error)) from None
    space_source = previous.get("space", args.space)
    try:
        space = frozen_space(previous) if previous.get("space_data") else get_space(space_source)
    except SpaceError as error:
        raise UsageError(str(error)) from None
    # URI storage: SQLite cannot live in an object store, so the default study stays in the
    # local staging folder (uploaded as a copy at the end).
    optuna_storage = args.optuna_storage or previous.get("optuna_storage") or _default_optuna_storage(folder.local_path)
    _check_optuna_url(optuna_storage)
    num_samples = previous["num_samples"] if "num_samples" in previous else trial_count(args.num_samples, time_budget)
    _require(
        num_samples is not None or time_budget is not None,
        f"{name} runs trials until its time budget is spent: give --time-budget to resume it",
    )
    if previous:
        warm_points = tuple(previous.get("warm_start", {}).get("points", []))
    else:
        from search.warm_start import warm_start_points

        warm_points = tuple(warm_start_points(args.warm_start or [], space, dataset, args.warm_start_count))
        if args.warm_start and not warm_points:
            logger.warning("--warm-start: every configuration found is already a start point of the space; none added")
    plan = SweepPlan(
        dataset=dataset,
        data_source=data_source,
        space=space,
        space_source=space_source,
        name=name,
        storage=storage,
        num_samples=num_samples,
        max_epochs=int(previous.get("max_epochs", args.max_epochs)),
        grace_period=args.grace_period,
        brackets=int(previous.get("settings", {}).get("brackets") or args.brackets),
        patience=args.patience,
        validate_every=args.validate_every,
        time_budget_seconds=time_budget,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        precision=args.precision,
        concurrency=args.concurrency,
        seed=int(previous.get("seed", args.seed)),
        sampler=str(previous.get("sampler", args.sampler)),
        optuna_storage=optuna_storage,
        study_name=args.study_name or previous.get("study_name") or name,
        test_masks=args.test_masks,
        valid_masks=args.valid_masks,
        max_failures=args.max_failures,
        checkpoint_every=args.checkpoint_every,
        checkpoint_seconds=args.checkpoint_seconds,
        report_seconds=args.report_seconds,
        finalists=args.finalists,
        reseeds=args.reseeds,
        reseed_share=args.reseed_share,
        warm_start=warm_points,
        objective=str(previous.get("settings", {}).get("objective") or args.objective),
        tracking=args.tracking,
        verbose=args.verbose,
    )
    return plan, previous


def frozen_space(previous: dict[str, Any]) -> Any:
    """The search space stored in a resumed experiment's experiment.json, not the file it came from.

    Logs a note when that file still exists and now defines a different space.
    """
    from spaces import SearchSpace, SpaceError, get_space

    source = str(previous["space"])
    space = SearchSpace.from_data(previous["space_data"], default_name=Path(source).stem, source=source)
    try:
        on_disk = get_space(source).to_data()
    except SpaceError:
        on_disk = None  # gone or broken: the stored copy is all there is
    if on_disk is not None and on_disk != space.to_data():
        logger.warning(
            "the search space %s has changed since this sweep started; the resumed sweep uses the space stored in its %s",
            source,
            schema.EXPERIMENT_FILE,
        )
    return space


def check_cluster(plan: Any, shared_storage: bool) -> int:
    """Refuse requests the connected cluster cannot serve; returns the number of alive nodes."""
    import ray

    from search.cluster import check_storage_for_cluster, count_alive_nodes

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    gpus = sum(node.get("Resources", {}).get("GPU", 0) for node in nodes)
    largest_cpus = max((node.get("Resources", {}).get("CPU", 0) for node in nodes), default=0)
    _require(
        plan.gpus_per_trial == 0 or gpus > 0,
        f"--gpus-per-trial {plan.gpus_per_trial} but the Ray cluster has no GPU (nodes: {len(nodes)})",
    )
    _require(
        plan.cpus_per_trial <= largest_cpus,
        f"--cpus-per-trial {plan.cpus_per_trial} exceeds the largest node's {largest_cpus:g} CPUs: no trial could start",
    )
    largest_gpus = max((node.get("Resources", {}).get("GPU", 0) for node in nodes), default=0)
    _require(
        plan.gpus_per_trial <= max(largest_gpus, 1),
        f"--gpus-per-trial {plan.gpus_per_trial} exceeds the largest node's {largest_gpus:g} GPUs",
    )
    num_nodes = count_alive_nodes()
    try:
        check_storage_for_cluster(plan.storage, shared_storage, num_nodes)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return num_nodes


# -- the sweep --------------------------------------------------------------------------
def _utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def experiment_info(
    plan: Any,
    previous: dict[str, Any],
    status: str,
    started: float,
    data: Any,
    run: dict[str, Any],
    num_trials: int | None = None,
    fit_seconds: float | None = None,
) -> schema.ExperimentInfo:
    """experiment.json's fields (``results.schema.ExperimentInfo``). ``started`` is this run's ``time.time()`` at
    its start: the sweep's start unless it resumes an earlier one, whose ``started_at`` is kept.
    ``run`` holds this run's command, resolved settings and provenance. ``num_trials``, once the
    sweep has ended: how many trials it ran; ``fit_seconds``, how long this run's Ray Tune fit took."""
    wall = float(previous.get("wall_seconds", 0.0)) + (time.time() - started)
    this_command = run["command"]
    info: schema.ExperimentInfo = {
        "experiment": plan.name,
        "dataset": plan.dataset,
        "space": plan.space_source,
        "seed": plan.seed,
        "sampler": plan.sampler,
        "num_samples": plan.num_samples,
        "max_epochs": plan.max_epochs,
        "status": status,
        "started_at": previous.get("started_at") or _utc_iso(started),
        "finished_at": _utc_iso(time.time()) if status != "running" else None,
        "wall_seconds": round(wall, 1),
        "num_trials": previous.get("num_trials", 0),
        # The command that started the sweep; later --resume commands are listed after it.
        "command": previous.get("command") or this_command,
        "resume_commands": [*previous.get("resume_commands", []), this_command] if previous else [],
        "optuna_storage": plan.optuna_storage,
        "study_name": plan.study_name,
        "resumes": int(previous.get("resumes", -1)) + 1,
        "settings": run["settings"],
        "space_data": plan.space.to_data(),
        "provenance": run["provenance"],
    }
    if num_trials is not None:
        info["num_trials"] = num_trials
        # The time budget can end a sweep before every trial ran; the sweep still reports.
        # Without a trial count only the budget ends a sweep.
        info["stopped_by_time_budget"] = status == "finished" and (plan.num_samples is None or num_trials < plan.num_samples)
    if plan.warm_start:
        sources = previous.get("warm_start", {}).get("sources") or run["settings"].get("warm_start") or []
        info["warm_start"] = {"sources": list(sources), "points": [dict(point) for point in plan.warm_start]}
    if fit_seconds is not None:
        info["fit_seconds"] = round(float(previous.get("fit_seconds", 0.0)) + fit_seconds, 1)
    if plan.data_source != plan.dataset:
        info["data_file"] = plan.data_source
    if data.true_test_nll is not None:
        info["true_test_nll"] = data.true_test_nll
    if data.description:
        info["data_note"] = data.description
    return info


def resolved_settings(plan: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Every setting by flag name as this run uses it (a resumed sweep's stored ones included)."""
    from search.settings import setting_actions

    settings = {dest: getattr(args, dest, None) for dest in setting_actions(build_parser())}
    settings.update(
        dataset=plan.dataset,
        space=plan.space_source,
        seed=plan.seed,
        num_samples=plan.num_samples,
        max_epochs=plan.max_epochs,
        grace_period=plan.grace_period,
        name=plan.name,
        storage=plan.storage,
        optuna_storage=plan.optuna_storage,
        study_name=plan.study_name,
    )
    return settings


def output_dirs(args: argparse.Namespace, folder: Any) -> tuple[Path, Path]:
    """Where the aggregated tables and figures go: the storage's own (for a URI, its local
    staging copy's) unless --publish or explicit folders say otherwise."""
    if args.publish:
        return PUBLISHED_TABLES_DIR, PUBLISHED_FIGURES_DIR
    tables, figures = schema.STORAGE_OUTPUT_FOLDERS
    return (
        Path(args.tables_dir) if args.tables_dir else folder.local_storage / tables,
        Path(args.figures_dir) if args.figures_dir else folder.local_storage / figures,
    )


def prepare_fused_kernels(plan: Any) -> float | None:
    """Build (or load) made_core's fused masked-Adam kernels here, before any trial starts.

    They are compiled on first use and cached per CPU model; built inside a trial, the build
    (25-70 s on a fresh machine) would come out of that trial's share of the budget. CPU trials
    on this host then only load the cached build. Returns the seconds spent (None: not needed).
    """
    from made_core.allocator import opted_out
    from made_core.fused_adam import OPT_OUT_VARIABLE, load_kernels

    if plan.gpus_per_trial > 0 or opted_out(OPT_OUT_VARIABLE):
        return None
    started = time.perf_counter()
    load_kernels()
    seconds = time.perf_counter() - started
    if seconds > 2:
        logger.info("built the fused masked-Adam kernels for this CPU in %.0f s (cached for later sweeps)", seconds)
    return seconds


def run_sweep(plan: Any, previous: dict[str, Any], data: Any, args: argparse.Namespace, command: str) -> Any:
    """Run (or resume) the sweep and evaluate its best trial; returns a ``search.SweepResult``.

    Raises ``search.NoResultError`` when no trial produced a finite validation NLL.
    """
    import ray

    from made_core.ensembles import describe_test_mask_choice
    from results.storage import STUDY_UPLOAD_SECONDS, PeriodicUpload, remove_stale_staging
    from search.api import NoResultError, SweepResult
    from search.cluster import trial_slots
    from search.experiment import (
        EVALUATION_SHARE,
        MIN_EVALUATION_SECONDS,
        RAY_TIME_TOTAL,
        Finalist,
        TrialRecord,
        evaluate_best,
        evaluation_seconds,
        finalist_trials,
        quiet_about_trials_that_reported_nothing,
        read_ray_trials,
        reselect,
        trials_table,
        write_json,
        write_trial_files,
    )
    from search.provenance import provenance
    from search.reseed import reseed_count, retrain_leader
    from search.timeline import TrialTimeline, slot_time
    from search.tuner import ProgressPrinter, make_trainable, make_tuner, restore_tuner

    started = time.time()
    run = {"command": command, "settings": resolved_settings(plan, args), "provenance": provenance()}
    folder = experiment_folder(plan, args)
    # Where the driver writes: the experiment folder itself, or for a URI its local staging
    # folder, published to the URI at the points the local version writes.
    experiment_path = folder.local_path
    study_file = _sqlite_file(plan.optuna_storage)
    if study_file is not None and (study_file.name, study_file.parent.name) != (schema.STUDY_FILE, plan.name):
        study_file = None  # a SQLite file of the user's own (--optuna-storage): left where it is
    if folder.is_uri:
        if not previous and remove_stale_staging(experiment_path):
            logger.info("note: removed a stale staging folder %s (no such experiment at %s)", experiment_path, folder.location)
        if study_file is not None:
            if previous and not study_file.exists() and folder.download(schema.STUDY_FILE, study_file):
                logger.info("note: fetched the Optuna study's last uploaded copy to %s", study_file)
            logger.info(
                "note: the Optuna study is SQLite in the local staging folder (%s), uploaded to %s every %.0f minutes "
                "and at the end; on a cluster prefer --optuna-storage postgresql://...",
                study_file,
                folder.remote(schema.STUDY_FILE),
                STUDY_UPLOAD_SECONDS // 60,
            )
    experiment_path.mkdir(parents=True, exist_ok=True)
    marker = experiment_path / schema.EXPERIMENT_FILE
    write_json(marker, experiment_info(plan, previous, "running", started, data, run))
    folder.publish(schema.EXPERIMENT_FILE)
    prepare_fused_kernels(plan)
    trainable = make_trainable(plan, data.train, data.valid)
    progress = ProgressPrinter(plan.num_samples)
    resuming = bool(previous)
    if resuming and not ray.tune.Tuner.can_restore(folder.location):
        logger.info("note: %s has no restorable Ray state yet; starting its sweep afresh", plan.name)
        resuming = False
    timeline = TrialTimeline()  # a restored Tuner keeps its first fit's callbacks: measured on a first fit only
    tuner = (
        restore_tuner(folder.location, trainable)
        if resuming
        else make_tuner(plan, trainable, [progress, timeline], experiment_path)
    )
    logger.info(
        "sweep %s: %s of space %r on %s (%d train rows, D=%d), up to %d epochs each; folder %s%s",
        plan.name,
        f"{plan.num_samples} trials" if plan.num_samples is not None else f"trials until the {args.time_budget} budget is spent",
        plan.space_source,
        plan.dataset,
        data.train.shape[0],
        data.input_dim,
        plan.max_epochs,
        folder.location,
        f" (staged in {experiment_path})" if folder.is_uri else "",
    )
    status = "finished"
    study_upload = PeriodicUpload(folder, study_file, schema.STUDY_FILE) if study_file is not None else nullcontext()
    fit_started = time.time()
    try:
        with study_upload, quiet_about_trials_that_reported_nothing():
            tuner.fit()
    except KeyboardInterrupt:
        status = "interrupted"
        logger.warning("interrupted: finished trials are kept; continue with --resume")

    fit_ended = time.time()
    fit_seconds = fit_ended - fit_started
    records = read_ray_trials(folder.location)
    write_trial_files(experiment_path, records)
    completed = sum(1 for r in records if r.status == "TERMINATED")
    allowance = evaluation_seconds(plan.time_budget_seconds)
    ranked = reselect(records, data.valid, plan.test_masks, plan.finalists, plan.seed, seconds=allowance)
    evaluated = {finalist.record.trial_id for finalist in ranked}
    left_out = [r.trial_id for r in finalist_trials(records, plan.finalists) if r.trial_id not in evaluated]
    if left_out:
        logger.info(
            "note: %d of the top %d trials were not re-evaluated: validating them would pass the %.0f s allowed "
            "(%.0f%% of --time-budget, at least %.0f s)", len(left_out), len(left_out) + len(ranked), allowance or 0.0,
            100 * EVALUATION_SHARE, MIN_EVALUATION_SECONDS,
        )  # fmt: skip
    retrained: list[TrialRecord] = []  # the retrainings with other seeds
    reseeded: list[Finalist] = []  # those of them with a model, evaluated like finalists
    left = None
    if plan.time_budget_seconds is not None:
        left = plan.time_budget_seconds - float(previous.get("fit_seconds", 0.0)) - (time.time() - fit_started)
    leader_seconds = float(ranked[0].record.last_result.get(RAY_TIME_TOTAL, 0.0)) if ranked else 0.0
    slots = trial_slots(plan.cpus_per_trial, plan.gpus_per_trial, plan.concurrency)
    reseeds = reseed_count(plan.reseeds, left, leader_seconds, slots)
    if ranked and reseeds > 0 and status == "finished":
        reseed_started = time.time()
        try:
            retrained, reseeded = retrain_leader(plan, trainable, ranked[0], reseeds, folder, data.valid, left)
        except KeyboardInterrupt:
            status = "interrupted"
            logger.warning("interrupted while retraining with other seeds; continue with --resume")
        else:
            # trials.csv lists every trial the experiment ran: the retrainings too, after the search's.
            write_trial_files(experiment_path, [*records, *retrained])
        fit_seconds += time.time() - reseed_started
    info = experiment_info(plan, previous, status, started, data, run, len(records), fit_seconds)
    if not resuming:
        training = sum(float(r.last_result.get(RAY_TIME_TOTAL, 0.0)) for r in records)
        info["slot_time"] = slot_time(fit_started, fit_ended, slots, timeline.intervals(fit_ended), training)
    extra: schema.BestOptional = {"true_test_nll": data.true_test_nll} if data.true_test_nll is not None else {}
    if left_out:
        extra["finalists_left_out_for_time"] = left_out
    model_location = None
    if folder.is_uri:
        # best.json names the model relative to its experiment folder (valid after a download
        # or `aws s3 sync`) and by its URI.
        model_location = schema.BEST_MODEL_FOLDER
        extra["checkpoint_uri"] = folder.remote(schema.BEST_MODEL_FOLDER)
    best = evaluate_best(
        experiment_path, ranked, plan.dataset, data.test, extra, checkpoint_path=model_location, reseeded=reseeded,
        mix=True, mixture_seconds=allowance,
    )  # fmt: skip
    write_json(marker, info)
    folder.publish(
        schema.TRIALS_FILE, schema.CURVES_FILE, schema.BEST_MODEL_FOLDER, schema.BEST_MIXTURE_FOLDER, schema.BEST_FILE,
        schema.EXPERIMENT_FILE,
    )  # fmt: skip
    if folder.is_uri and study_file is not None:
        folder.publish_sqlite(study_file, schema.STUDY_FILE)
    failed = sum(1 for r in records if r.status == "ERROR")
    logger.info("%d trials: %d completed, %d failed; wall time %.0f s", len(records), completed, failed, info["wall_seconds"])
    if best is None:
        raise NoResultError(f"no trial of {plan.name} produced a finite validation NLL; nothing to evaluate")
    masks = best["test_masks"]
    chosen = best["valid_nll_by_test_masks"]
    choice = f"\n  test ensemble chosen on validation: {describe_test_mask_choice(chosen)}" if len(chosen) > 1 else ""
    finalists = best.get("finalists", [])
    if len(finalists) > 1:
        listed = ", ".join(f"{f['trial_id']} {f['valid_nll']:.3f} (sweep {f['sweep_valid_nll']:.3f})" for f in finalists)
        choice += (
            f"\n  chosen among the top {len(finalists)} by sweep objective, by validation NLL with their test ensembles: {listed}"
        )
    if best.get("reseeds"):
        by_seed = ", ".join(f"seed {r['seed']} {r['valid_nll']:.3f}" for r in best.get("reseeds", []))
        choice += f"\n  retrained with other seeds, chosen by validation NLL with its test ensemble: {by_seed}; chose seed {best['seed']}"
    if mixture := best.get("mixture"):
        parts = ", ".join(f"{m['trial_id']} (seed {m['seed']}) {m['weight']:.2f}" for m in mixture["models"])
        choice += (
            f"\n  mixture of the finalists, weights chosen on validation: {parts}; valid NLL {mixture['valid_nll']:.3f}, "
            f"test NLL {mixture['test_nll']:.3f} ± {mixture['test_nll_stderr']:.3f} ({folder.remote(schema.BEST_MIXTURE_FOLDER)})"
        )
    logger.info(
        "best trial %s (sweep valid NLL %.3f): with %d mask%s, valid NLL %.3f, test NLL %.3f ± %.3f%s\n  config: %s\n  written: %s",
        best["trial_id"],
        best["sweep_valid_nll"],
        masks,
        "s" if masks > 1 else "",
        best["valid_nll"],
        best["test_nll"],
        best["test_nll_stderr"],
        choice,
        best["config"],
        folder.remote(schema.BEST_FILE),
    )
    tables_dir = None
    if not args.no_tables:
        from results.aggregate import aggregate

        tables, figures = output_dirs(args, folder)
        try:
            # For a URI, the staged copies of its experiments (this machine's) stand in for it.
            result = aggregate([folder.local_storage], tables, figures)
        except Exception as error:  # noqa: BLE001 - the sweep's own files are written; say how to redo the tables
            logger.error(
                "refreshing the tables failed (%s: %s); the experiment is complete, rerun: python -m results.aggregate --storage %s",
                type(error).__name__,
                error,
                shlex.quote(plan.storage),
            )
        else:
            tables_dir = tables
            logger.info("tables refreshed: %s", ", ".join(str(p) for p in result.tables.values()))
    return SweepResult(
        experiment=plan.name,
        dataset=plan.dataset,
        path=folder.location,
        status=status,
        best_config=dict(best["config"]),
        test_nll=float(best["test_nll"]),
        test_nll_stderr=float(best["test_nll_stderr"]),
        valid_nll=float(best["valid_nll"]),
        test_masks=int(masks),
        trial_id=str(best["trial_id"]),
        seed=int(best.get("seed", plan.seed)),
        trials=trials_table([*records, *retrained]),  # trials.csv
        tables_dir=tables_dir,
        mixture=best.get("mixture"),
    )


def execute(args: argparse.Namespace, command: str) -> Any:
    """Validate ``args``, load the data, run the sweep on a Ray started here (or the one this
    process already joined) and return its ``SweepResult``. Bad input raises UsageError
    before anything is written."""
    from made_core.data import DatasetError, load_dataset

    plan, previous = make_plan(args)
    from search.tuner import preload_fit_imports

    preload = preload_fit_imports()  # while the data loads and Ray starts
    try:
        data = load_dataset(plan.data_source, data_dir=args.data_dir)
    except DatasetError as error:
        raise UsageError(str(error)) from None

    import ray

    from search.cluster import trial_slots

    # --resume loses what Ray's last experiment snapshot lacks: trials that started and finished
    # after it. Ray snapshots every 10 s or more unless trial checkpoints force it, and
    # checkpoints by time force few; a snapshot took 10-40 ms in a 60-trial dna sweep.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Ray warns about forced snapshots' frequency on every epoch of short trials (--checkpoint-every 1).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    own_ray = not ray.is_initialized()
    if not own_ray:
        _require(
            args.address is None and args.num_cpus is None,
            "Ray is already initialised in this process: drop --address/--num-cpus",
        )
    elif args.address:
        ray.init(address=args.address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    try:
        check_cluster(plan, args.shared_storage)
        if own_ray and args.address is None:
            # A Ray started here has the trial slots it will ever have (a cluster may still grow).
            plan = replace(plan, local_slots=trial_slots(plan.cpus_per_trial, plan.gpus_per_trial, plan.concurrency))
        preload.join()
        return run_sweep(plan, previous, data, args, command)
    finally:
        if own_ray:
            ray.shutdown()


class _CurrentStream(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout``/``sys.stderr`` is at the time (test capture swaps them)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    @property
    def stream(self) -> Any:
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _LevelPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """The command line's output: progress on stdout, warnings and errors on stderr.

    Quiet: warnings and errors only; verbose: debug messages too (Ray Tune's own trial
    table is turned on by the tuner).
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    out, err = _CurrentStream("stdout"), _CurrentStream("stderr")
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    out.setFormatter(logging.Formatter("%(message)s"))
    err.setLevel(logging.WARNING)
    err.setFormatter(_LevelPrefix())
    for name in ("search", "results"):
        named = logging.getLogger(name)
        named.handlers = [out, err]
        named.setLevel(level)
        named.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    configure_logging(args.verbose, args.quiet)

    from results.storage import StorageError
    from search.api import NoResultError

    try:
        result = execute(args, shlex.join([sys.executable, "-m", "search.run", *argv]))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (StorageError, NoResultError) as error:  # an upload or download failed mid-sweep; or no trial finished
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NO_RESULT
    if result.status != "finished":
        return EXIT_INTERRUPTED
    return EXIT_NO_RESULT if result.tables_dir is None and not args.no_tables else 0


if __name__ == "__main__":
    sys.exit(main())
