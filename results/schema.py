"""The files an experiment folder holds and the columns of every CSV we write.

One place for the results schema: `search` writes experiment folders with these
names and columns, `results.aggregate` reads them and writes the tables.

An experiment folder is ``<storage>/<experiment name>/``. Besides Ray Tune's own
files it holds:

- ``experiment.json`` (EXPERIMENT_FILE): one JSON object with the keys of
  EXPERIMENT_KEYS. ``status`` is "running" while the sweep runs, then
  "finished" (or "interrupted" / "failed").
- ``trials.csv`` (TRIALS_FILE): one row per trial, TRIAL_COLUMNS then one column
  per hyperparameter (the keys of the trial's config).
- ``curves.csv`` (CURVES_FILE): one row per (trial, epoch), CURVE_COLUMNS.
- ``best.json`` (BEST_FILE): the best trial by validation NLL, evaluated once on
  the test set; keys of BEST_KEYS. ``config`` is the trial's hyperparameters;
  ``checkpoint_path`` is a folder holding ``model.pt`` that
  ``made_core.load_model`` reads.
- ``study.db``: the Optuna study (SQLite) unless another URL was given.
"""

from __future__ import annotations

EXPERIMENT_FILE = "experiment.json"
TRIALS_FILE = "trials.csv"
CURVES_FILE = "curves.csv"
BEST_FILE = "best.json"
STUDY_FILE = "study.db"
BEST_MODEL_FOLDER = "best_model"  # the best trial's model (made_core.save_model), written beside best.json

EXPERIMENT_KEYS = (
    "experiment",  # folder name
    "dataset",  # canonical dataset name (made_core.data)
    "space",  # search space name or path
    "seed",
    "num_samples",
    "max_epochs",
    "status",  # running | finished | interrupted | failed
    "started_at",  # ISO 8601 UTC
    "finished_at",  # ISO 8601 UTC or null
    "wall_seconds",  # driver wall time of the sweep (summed over resumes)
    "num_trials",
    "command",  # the command line that ran it
)

TRIAL_COLUMNS = (
    "trial_id",
    "trial_number",  # 1, 2, ... in the order the search created the trials (Ray ids are random)
    "status",  # TERMINATED | ERROR | ... as Ray reports it
    "epochs",  # epochs trained
    "best_valid_nll",  # nats per example, the minimum over epochs
    "final_train_nll",
    "wall_seconds",
    "node_ip",  # the node the trial last ran on
    "num_failures",  # how many times it was restarted from a checkpoint
)

CURVE_COLUMNS = ("trial_id", "epoch", "train_nll", "valid_nll", "best_valid_nll", "epoch_seconds")

BEST_KEYS = (
    "dataset",
    "experiment",
    "trial_id",
    "config",  # dict: hyperparameter -> value
    "valid_nll",  # validation NLL with the test-time ensemble (test_masks); the sweep's own is sweep_valid_nll
    "test_nll",
    "test_nll_stderr",
    "test_masks",  # masks in the test-time ensemble
    "checkpoint_path",
    "finished_at",
)

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

# --- Added for results.aggregate (additions only; the names above are unchanged) ---

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
    "note",  # EXPERIMENT_OPTIONAL_KEYS["data_note"], e.g. "stand-in binarization of MNIST"
    COMMIT_COLUMN,
)

# Optional keys an experiment.json may carry beyond EXPERIMENT_KEYS.
EXPERIMENT_OPTIONAL_KEYS = (
    "data_note",  # free text copied into the best table's `note` column
    "true_test_nll",  # synthetic datasets: exact test NLL of the generating distribution
)

# Keys search.run writes into every experiment.json beyond EXPERIMENT_KEYS (experiments
# written by older versions may lack any of them; readers must cope).
EXPERIMENT_RUN_KEYS = (
    "optuna_storage",  # SQLAlchemy URL of the Optuna study
    "study_name",  # the Optuna study's name in it (experiments may share one)
    "resumes",  # how many times --resume continued the sweep
    "resume_commands",  # the command of each resume
    "stopped_by_time_budget",
    "settings",  # every setting of the sweep as resolved (flags, --config file, defaults), by flag name
    "space_data",  # the search space as data (spaces.SearchSpace.to_data): what --resume uses
    "provenance",  # PROVENANCE_KEYS: where and with what the sweep ran
)
PROVENANCE_KEYS = (
    "python",  # version
    "python_executable",
    "packages",  # {"made-search": version, "torch": ..., "ray": ..., "optuna": ..., "numpy": ...}
    "git_commit",  # the project's commit when run from a git checkout, else null
    "git_dirty",  # tracked files differed from that commit (null outside a checkout)
    "host",
    "platform",
    "cpu",  # CPU model
    "gpus",  # CUDA device names, [] without CUDA
)

# Folders of a storage that hold the sweeps' aggregated tables and figures, not experiments.
STORAGE_OUTPUT_FOLDERS = ("tables", "figures")

# Optional keys a best.json may carry beyond BEST_KEYS (it wins over experiment.json).
BEST_OPTIONAL_KEYS = (
    "true_test_nll",
    "sweep_valid_nll",  # the best trial's best_valid_nll (the sweep objective, a smaller ensemble)
    "valid_nll_by_test_masks",  # {"32": nll, ...}: the ensemble sizes test_masks was chosen from
)

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
