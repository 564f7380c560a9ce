"""The files an experiment folder holds and the columns of every CSV we write.

One place for the results schema: `search` writes experiment folders with these
names and columns, `results.aggregate` reads them and writes the tables.

An experiment folder is ``<storage>/<experiment name>/``. Besides Ray Tune's own
files it holds:

- ``experiment.json`` (EXPERIMENT_FILE): one JSON object, ``ExperimentInfo``: the keys of
  EXPERIMENT_KEYS, then EXPERIMENT_RUN_KEYS and EXPERIMENT_OPTIONAL_KEYS where they apply.
  ``status`` is "running" while the sweep runs, then "finished" (or "interrupted" / "failed").
- the per-epoch trial metrics (Ray Tune's own result files): ``TrialMetrics``, TRIAL_METRICS.
- ``trials.csv`` (TRIALS_FILE): one row per trial, ``TrialRow`` (TRIAL_COLUMNS) then one
  column per hyperparameter (the keys of the trial's config).
- ``curves.csv`` (CURVES_FILE): one row per (trial, epoch), ``CurveRow`` (CURVE_COLUMNS).
- ``best.json`` (BEST_FILE): the best trial by validation NLL, evaluated once on
  the test set, ``BestTrial``: keys of BEST_KEYS, then BEST_OPTIONAL_KEYS. ``config`` is the
  trial's hyperparameters; ``checkpoint_path`` is a folder holding ``model.pt`` that
  ``made_core.load_model`` reads.
- ``best_model/`` (BEST_MODEL_FOLDER): that folder.
- ``best_mixture/`` (BEST_MIXTURE_FOLDER): the finalists' mixture, ``made_core.load_mixture`` reads it.
- ``study.db``: the Optuna study (SQLite) unless another URL was given.

The key and column tuples are derived from the types, so a key is declared once. Readers
must cope with any key beyond the required ones missing: older experiments lack them.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, get_type_hints

EXPERIMENT_FILE = "experiment.json"
TRIALS_FILE = "trials.csv"
CURVES_FILE = "curves.csv"
BEST_FILE = "best.json"
STUDY_FILE = "study.db"
BEST_MODEL_FOLDER = "best_model"  # the best trial's model (made_core.save_model), written beside best.json
BEST_MIXTURE_FOLDER = "best_mixture"  # the finalists' mixture (made_core.save_mixture), written beside best.json
# Ray Tune's experiment of the leading configuration retrained with other seeds (--reseeds), inside the experiment folder.
RESEEDS_FOLDER = "reseeds"
# The config key under which a retrained trial carries its seed (the sweep's trials use experiment.json's seed).
TRIAL_SEED_KEY = "trial_seed"


class ExperimentCore(TypedDict):
    """The keys every experiment.json has (EXPERIMENT_KEYS)."""

    experiment: str  # folder name
    dataset: str  # canonical dataset name (made_core.data)
    space: str  # search space name or path
    seed: int
    num_samples: int | None  # None: trials until the time budget was spent
    max_epochs: int
    status: str  # running | finished | interrupted | failed
    started_at: str  # ISO 8601 UTC
    finished_at: str | None  # ISO 8601 UTC or null
    wall_seconds: float  # driver wall time of the sweep (summed over resumes)
    num_trials: int
    command: str  # the command line that ran it


class Provenance(TypedDict):
    """experiment.json's ``provenance``: where and with what the sweep ran (PROVENANCE_KEYS)."""

    python: str  # version
    python_executable: str
    packages: dict[str, str | None]  # {"made-search": version, "torch": ..., "ray": ..., "optuna": ..., "numpy": ...}
    git_commit: str | None  # the project's commit when run from a git checkout, else null
    git_dirty: bool | None  # tracked files differed from that commit (null outside a checkout)
    host: str
    platform: str
    cpu: str  # CPU model
    gpus: list[str]  # CUDA device names, [] without CUDA


class ExperimentRun(TypedDict, total=False):
    """Keys search.run writes into every experiment.json beyond EXPERIMENT_KEYS
    (EXPERIMENT_RUN_KEYS; experiments written by older versions may lack any of them)."""

    optuna_storage: str  # SQLAlchemy URL of the Optuna study; --resume reads it back
    study_name: str  # the Optuna study's name in it (experiments may share one)
    sampler: str  # the Optuna sampler: "tpe" (guided) or "random"
    resumes: int  # how many times --resume continued the sweep
    resume_commands: list[str]  # the command of each resume
    stopped_by_time_budget: bool  # written when the sweep ends
    settings: dict[str, Any]  # every setting of the sweep as resolved (flags, --config file, defaults), by flag name
    space_data: dict[str, Any]  # the search space as data (spaces.SearchSpace.to_data): what --resume uses
    provenance: Provenance


class SlotTime(TypedDict):
    """Where the trial slots spent a sweep's fit, in slot-seconds (``search.timeline``): the parts
    add up to ``fit`` (slots x the fit's wall time)."""

    slots: int
    fit: float
    training: float  # on the trials' own clocks (Ray's time_total_s): what slot use counts
    in_trials: float  # in a running trial off its clock: reports' round trips, work the budget's stop lost
    before_first: float  # idle before the first trial ran: Ray Tune starting, trial processes starting
    between: float  # idle between trials
    after_last: float  # idle after the last trial ended: the budget's end, Ray Tune stopping


class ExperimentOptional(TypedDict, total=False):
    """Keys an experiment.json carries only where they apply (EXPERIMENT_OPTIONAL_KEYS)."""

    warm_start: dict[str, Any]  # {"sources": [...], "points": [...]}: start points taken from earlier sweeps
    fit_seconds: float  # how long Ray Tune ran the trials (wall time, summed over resumes): slot use's denominator
    slot_time: SlotTime  # the search's fit when it ran in one go (none after a --resume)
    data_file: str  # an own .npz dataset: its absolute path (``dataset`` is then its stem)
    data_note: str  # free text copied into the best table's `note` column
    true_test_nll: float  # synthetic datasets: exact test NLL of the generating distribution


class ExperimentInfo(ExperimentCore, ExperimentRun, ExperimentOptional):
    """experiment.json as a whole."""


EXPERIMENT_KEYS = tuple(ExperimentCore.__annotations__)
EXPERIMENT_RUN_KEYS = tuple(ExperimentRun.__annotations__)
EXPERIMENT_OPTIONAL_KEYS = tuple(ExperimentOptional.__annotations__)
PROVENANCE_KEYS = tuple(Provenance.__annotations__)
# The parts of a SlotTime, in slot-seconds, that add up to its ``fit``.
SLOT_TIME_PARTS = tuple(name for name in SlotTime.__annotations__ if name not in ("slots", "fit"))

# A running minimum: Optuna records a trial that ASHA stopped with its last reported value,
# which must therefore be its best.
OBJECTIVE: Literal["best_valid_nll"] = "best_valid_nll"
# What that validation NLL measures (--objective): an estimate of the test-time ensemble's NLL,
# extrapolated from the validation ensemble (made_core.ensembles.extrapolated_nll), or the
# validation ensemble's own.
OBJECTIVES = ("test-ensemble", "valid-ensemble")


class TrialMetrics(TypedDict):
    """What a trial reports to Ray Tune after every validation: every epoch, or every few where
    validating costs more (made_core.train). search.trainable builds it; Ray stores it in the
    trial's result files; search.experiment reads it back into trials.csv and curves.csv."""

    best_valid_nll: float  # OBJECTIVE: the minimum validation NLL so far
    valid_nll: float  # this validation's NLL (nats per example)
    train_nll: float  # mean over the epochs since the previous report
    epoch: int  # the epochs trained so far: ASHA's time attribute
    epoch_seconds: float  # seconds since the previous report: its epochs and this validation
    examples_per_second: float
    stopped_early: bool  # early stopping (patience) ended the trial
    node_ip: str  # the node the trial runs on
    pid: int  # which process on the node trains this trial
    device: str  # cpu | cuda


TRIAL_METRICS = tuple(TrialMetrics.__annotations__)


class TrialRow(TypedDict):
    """One row of trials.csv before its hyperparameter columns (TRIAL_COLUMNS)."""

    trial_id: str
    trial_number: int  # 1, 2, ... in the order the search created the trials (Ray ids are random)
    status: str  # TERMINATED | ERROR | ... as Ray reports it
    epochs: int  # epochs trained: the last TrialMetrics epoch
    best_valid_nll: float  # nats per example, the minimum over epochs: the last OBJECTIVE
    final_train_nll: float  # the last TrialMetrics train_nll
    wall_seconds: float  # Ray's time_total_s
    node_ip: str  # the node the trial last ran on
    num_failures: int  # how many times it was restarted from a checkpoint


class CurveRow(TypedDict):
    """One row of curves.csv: a trial's TrialMetrics of one report (CURVE_COLUMNS)."""

    trial_id: str
    epoch: int
    train_nll: float
    valid_nll: float
    best_valid_nll: float
    epoch_seconds: float


TRIAL_COLUMNS = tuple(TrialRow.__annotations__)
# trials.csv's numeric columns: read as numbers, an unparsable cell becomes NaN.
TRIAL_NUMERIC_COLUMNS = tuple(name for name, kind in get_type_hints(TrialRow).items() if kind in (int, float))
CURVE_COLUMNS = tuple(CurveRow.__annotations__)
# The TrialMetrics curves.csv keeps, under their own names.
CURVE_METRICS = tuple(name for name in CURVE_COLUMNS if name != "trial_id")


class BestCore(TypedDict):
    """The keys every best.json has (BEST_KEYS)."""

    dataset: str
    experiment: str
    trial_id: str
    config: dict[str, Any]  # hyperparameter -> value
    valid_nll: float  # validation NLL with the test-time ensemble (test_masks); the sweep's own is sweep_valid_nll
    test_nll: float
    test_nll_stderr: float
    test_masks: int  # masks in the test-time ensemble
    checkpoint_path: str  # the BEST_MODEL_FOLDER: absolute, or relative to the experiment folder (URI storage)
    finished_at: str


class BestOptional(TypedDict, total=False):
    """Keys a best.json may carry beyond BEST_KEYS (BEST_OPTIONAL_KEYS; it wins over experiment.json)."""

    true_test_nll: float
    sweep_valid_nll: float  # the best trial's best_valid_nll (the sweep objective, a smaller ensemble)
    valid_nll_by_test_masks: dict[str, float]  # {"32": nll, ...}: the ensemble sizes test_masks was chosen from
    checkpoint_uri: str  # URI storage: the BEST_MODEL_FOLDER's URI
    # The finalists (the top trials by sweep objective) re-evaluated on validation with their
    # test-time ensembles; the one with the lowest such NLL is the chosen trial.
    finalists: list[dict[str, Any]]  # [{"trial_id", "seed", "sweep_valid_nll", "valid_nll", "test_masks"}, ...]
    # With --time-budget: the top trials not re-evaluated, their validation past the allowance.
    finalists_left_out_for_time: list[str]
    seed: int  # the chosen model's training seed
    # The leading finalist and its retrainings with other seeds (--reseeds; empty without), each
    # evaluated like a finalist; the one with the lowest validation NLL is the chosen model.
    reseeds: list[dict[str, Any]]  # [{"trial_id", "seed", "sweep_valid_nll", "valid_nll", "test_masks"}, ...]
    # The finalists and retrainings mixed in probability space, weights chosen on validation
    # (made_core.mixture), tested once: {"models": [{..., "weight"}, ...], "valid_nll", "test_nll",
    # "test_nll_stderr", "path"} (path: the BEST_MIXTURE_FOLDER); a sweep with a time budget adds
    # "test_seconds_allowed" and "left_out_for_time" (trial ids whose test evaluation would not fit).
    mixture: dict[str, Any]


class BestTrial(BestCore, BestOptional):
    """best.json as a whole."""


BEST_KEYS = tuple(BestCore.__annotations__)
BEST_OPTIONAL_KEYS = tuple(BestOptional.__annotations__)

# Aggregated tables under results/tables/.
BEST_TABLE = "best_test_nll.csv"
ALL_TRIALS_TABLE = "trials.csv"
BY_MASKS_TABLE = "by_masks.csv"
BEST_MARKDOWN = "best_test_nll.md"

BEST_TABLE_COLUMNS = (
    "dataset",
    "test_nll",
    "test_nll_stderr",
    "valid_nll",
    "paper_made_nll",  # the paper's best "MADE" row (fixed number of masks): PAPER_MADE_MODEL
    "paper_mask_sampling_nll",  # the paper's "MADE mask sampling" row: PAPER_MASK_SAMPLING_MODEL
    "delta_vs_paper",  # test_nll - paper_made_nll (negative: we beat the paper)
    "delta_vs_mask_sampling",  # test_nll - paper_mask_sampling_nll
    # ... then one column per hyperparameter of the winning configuration ...
    "experiment",
    "trial_id",
    "finished_at",
    "sweep_wall_seconds",
    "sweep_num_trials",
)

# Where the winning configuration's hyperparameter columns go in BEST_TABLE_COLUMNS:
# right after this column.
BEST_TABLE_HYPERPARAMETERS_AFTER = "delta_vs_mask_sampling"

# The commit column of the aggregated tables: provenance's git_commit, with "-dirty"
# appended when git_dirty; empty for experiments without provenance.
COMMIT_COLUMN = "commit"

# Always written after BEST_TABLE_COLUMNS (empty where they do not apply):
BEST_TABLE_EXTRA_COLUMNS = (
    "test_masks",  # best.json's test_masks: the size of the ensemble test_nll and valid_nll used
    "true_test_nll",  # synthetic data: the exact NLL of the true distribution on the test set
    "delta_vs_true",  # test_nll - true_test_nll (>= 0 up to noise)
    "note",  # experiment.json's data_note, e.g. "stand-in binarization of MNIST"
    COMMIT_COLUMN,
)

# Folders of a storage that hold the sweeps' aggregated tables and figures, not experiments.
STORAGE_OUTPUT_FOLDERS = ("tables", "figures")

# trials.csv under results/tables/: these, then TRIAL_COLUMNS, then ALL_TRIALS_TEST_COLUMN,
# then COMMIT_COLUMN (absent from tables written before it existed), then one column per
# hyperparameter.
ALL_TRIALS_LEADING_COLUMNS = ("dataset", "experiment")
# Filled only for each experiment's best trial (the only one evaluated on the test set).
ALL_TRIALS_TEST_COLUMN = "test_nll"

# by_masks.csv under results/tables/: for each (dataset, num_masks, ordering) the trial
# with the lowest validation NLL; test_nll only when that trial was its experiment's best.
BY_MASKS_COLUMNS = (
    "dataset",
    "num_masks",  # 0 = a fresh mask every minibatch ("mask sampling")
    "ordering",
    "valid_nll",  # the chosen trial's best_valid_nll
    "test_nll",  # empty unless the chosen trial was evaluated on the test set
    "experiment",
    "trial_id",
    "group_trials",  # how many trials the group holds
)

# The paper's numbers: results/paper_nll.csv (package data), one row per (dataset, model
# variant); test NLL in nats per example, positive.
PAPER_NLL_FILE = "paper_nll.csv"
PAPER_NLL_COLUMNS = (
    "dataset",  # canonical name (made_core.data)
    "model",  # MADE | MADE mask sampling | NADE | EoNADE | DARN | RBM | FVSBN | MoB | ...
    "hidden_layers",  # empty where the paper does not say
    "hidden_units",
    "num_masks",  # 0 = mask sampling; empty where not applicable / chosen by validation
    "test_nll",
    "approximate",  # True where the paper prints "≈" (an estimate or bound, not exact)
    "source",  # table/figure of Germain et al. 2015
    "verified",  # True when checked against a source other than memory (see note)
    "note",
)
# The `model` values of paper_nll.csv behind the best table's two paper columns (the one
# place for this fact):
# - paper_made_nll: the lowest test_nll among rows whose model is exactly PAPER_MADE_MODEL,
#   i.e. MADE trained with a fixed number of masks (dna 83.63; mnist 86.64, the 2-hidden-layer
#   32-mask row). This is what delta_vs_paper compares against.
# - paper_mask_sampling_nll: the lowest test_nll among rows whose model is exactly
#   PAPER_MASK_SAMPLING_MODEL, MADE with a fresh mask every update (dna 79.66; none for mnist).
PAPER_MADE_MODEL = "MADE"
PAPER_MASK_SAMPLING_MODEL = "MADE mask sampling"

# Figures under results/figures/ (str.format templates).
CURVES_FIGURE = "{experiment}_curves.png"
BEST_SO_FAR_FIGURE = "{experiment}_best_so_far.png"
NLL_VS_MASKS_FIGURE = "{dataset}_nll_vs_masks.png"
SAMPLES_FIGURE = "{dataset}_samples.png"

# Lock file in the tables folder that serialises read-merge-write of the tables.
TABLES_LOCK_FILE = ".lock"
