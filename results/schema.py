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
    "valid_nll",
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
    "paper_made_nll",
    "delta_vs_paper",  # test_nll - paper_made_nll (negative: we beat the paper)
    # ... then one column per hyperparameter of the winning configuration ...
    "experiment",
    "trial_id",
    "finished_at",
    "sweep_wall_seconds",
    "sweep_num_trials",
)
