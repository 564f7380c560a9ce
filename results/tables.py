"""Building, merging and rendering the aggregated tables (pure functions, no file I/O).

Conventions:

- NLLs are nats per example; lower is better.
- The best configuration of a dataset is chosen by **validation** NLL (best.json's
  ``valid_nll``), never by test NLL: test numbers are only reported, never selected on.
- Hyperparameter columns come in a fixed order: the canonical hyperparameters first, in
  the order of ``spaces.HYPERPARAMETERS``, then any other config keys, sorted.
- Merging: tables are "the best so far" over every aggregation that wrote them. Rows of
  experiments read in this run replace that experiment's old rows; rows of experiments
  not read in this run (other storages) are kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from results import schema
from results.experiments import Experiment
from results.paper import paper_made_nll, paper_mask_sampling_nll
from spaces import HYPERPARAMETERS

MISSING_MARK = "—"  # how the Markdown shows an empty cell


def order_hyperparameters(names: Iterable[str]) -> list[str]:
    """Known hyperparameters first (in their canonical order), then the rest sorted."""
    names = set(names)
    return [n for n in HYPERPARAMETERS if n in names] + sorted(names - set(HYPERPARAMETERS))


def best_table_columns(hyperparameters: Iterable[str]) -> list[str]:
    """BEST_TABLE_COLUMNS with the hyperparameters inserted, then the extra columns."""
    fixed = list(schema.BEST_TABLE_COLUMNS)
    at = fixed.index(schema.BEST_TABLE_HYPERPARAMETERS_AFTER) + 1
    ordered = [h for h in order_hyperparameters(hyperparameters) if h not in fixed]
    ordered = [h for h in ordered if h not in schema.BEST_TABLE_EXTRA_COLUMNS]
    return fixed[:at] + ordered + fixed[at:] + list(schema.BEST_TABLE_EXTRA_COLUMNS)


# Best-table columns recomputed from the other columns on every merge
# (add_reference_columns): an older table may lack them.
DERIVED_BEST_COLUMNS = (
    "paper_made_nll",
    "paper_mask_sampling_nll",
    "delta_vs_paper",
    "delta_vs_mask_sampling",
    "delta_vs_true",
)


def required_best_columns() -> list[str]:
    """Columns an existing best table must have to be merged (derived ones are recomputed)."""
    return [c for c in schema.BEST_TABLE_COLUMNS if c not in DERIVED_BEST_COLUMNS]


def all_trials_columns(hyperparameters: Iterable[str]) -> list[str]:
    """Columns of the aggregated trials.csv."""
    fixed = [*required_trials_columns(), schema.COMMIT_COLUMN]
    return fixed + [h for h in order_hyperparameters(hyperparameters) if h not in fixed]


def required_trials_columns() -> list[str]:
    """Columns an existing trials table must have to be merged (older tables lack the commit)."""
    return [*schema.ALL_TRIALS_LEADING_COLUMNS, *schema.TRIAL_COLUMNS, schema.ALL_TRIALS_TEST_COLUMN]


def experiment_commit(experiment: Experiment) -> str | None:
    """The commit an experiment ran (schema.COMMIT_COLUMN), None when its experiment.json has no provenance."""
    recorded = experiment.info.get("provenance")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("git_commit"), str):
        return None
    return recorded["git_commit"] + ("-dirty" if recorded.get("git_dirty") else "")


def _number(value: Any) -> float:
    """A float, NaN for anything missing or not a number."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _true_test_nll(experiment: Experiment) -> float:
    best = experiment.best or {}
    value = _number(best.get("true_test_nll"))
    return value if math.isfinite(value) else _number(experiment.info.get("true_test_nll"))


# --------------------------------------------------------------------------- trials


def experiment_trials(experiment: Experiment) -> pd.DataFrame:
    """One experiment's trials in the aggregated trials.csv layout."""
    frame = experiment.trials.copy()
    frame.insert(0, "experiment", experiment.name)
    frame.insert(0, "dataset", experiment.dataset)
    test = pd.Series(np.nan, index=frame.index, dtype=float)
    if experiment.best is not None:
        test[frame["trial_id"] == experiment.best["trial_id"]] = _number(experiment.best["test_nll"])
    frame[schema.ALL_TRIALS_TEST_COLUMN] = test
    frame[schema.COMMIT_COLUMN] = experiment_commit(experiment)
    return frame[all_trials_columns(experiment.hyperparameters)]


def merge_trials(existing: pd.DataFrame | None, experiments: list[Experiment]) -> pd.DataFrame:
    """Aggregated trials: the experiments' rows plus ``existing`` rows of other experiments."""
    parts = [experiment_trials(e) for e in experiments]
    names = {e.name for e in experiments}
    if existing is not None and not existing.empty:
        parts.insert(0, existing[~existing["experiment"].astype(str).isin(names)])
    parts = [p for p in parts if not p.empty]
    hyperparameters = {c for p in parts for c in p.columns}
    columns = all_trials_columns(hyperparameters - set(all_trials_columns(())))
    if not parts:
        return pd.DataFrame(columns=columns)
    merged = pd.concat(parts, ignore_index=True)
    merged = merged.reindex(columns=columns)
    merged["trial_id"] = merged["trial_id"].astype(str)
    return merged.sort_values(["dataset", "experiment", "trial_id"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- best


def experiment_best_row(experiment: Experiment) -> dict[str, Any] | None:
    """The best-table row an experiment contributes (None without best.json)."""
    best = experiment.best
    if best is None:
        return None
    info = experiment.info
    num_trials = _number(info.get("num_trials"))
    row: dict[str, Any] = {
        "dataset": experiment.dataset,
        "test_nll": _number(best["test_nll"]),
        "test_nll_stderr": _number(best.get("test_nll_stderr")),
        "valid_nll": _number(best["valid_nll"]),
        "test_masks": _number(best.get("test_masks")),
        "experiment": experiment.name,
        "trial_id": str(best["trial_id"]),
        "finished_at": best.get("finished_at") or info.get("finished_at"),
        "sweep_wall_seconds": _number(info.get("wall_seconds")),
        "sweep_num_trials": num_trials if math.isfinite(num_trials) else float(len(experiment.trials)),
        "true_test_nll": _true_test_nll(experiment),
        "note": info.get("data_note") if isinstance(info.get("data_note"), str) else None,
        schema.COMMIT_COLUMN: experiment_commit(experiment),
    }
    for key, value in best["config"].items():
        if key not in row:  # a config key never overwrites a result column
            row[key] = value
    return row


def add_reference_columns(best: pd.DataFrame) -> pd.DataFrame:
    """(Re)compute the paper columns, their deltas and delta_vs_true for every row.

    paper_made_nll / delta_vs_paper (the paper's "MADE", fixed masks) and
    paper_mask_sampling_nll / delta_vs_mask_sampling (its "MADE mask sampling") come from
    ``results.paper`` every time, so rows merged from an older table (which may lack these
    columns or hold an older definition) are brought up to date.
    """
    best = best.copy()
    test = pd.to_numeric(best["test_nll"], errors="coerce")
    for column, delta, lookup in (
        ("paper_made_nll", "delta_vs_paper", paper_made_nll),
        ("paper_mask_sampling_nll", "delta_vs_mask_sampling", paper_mask_sampling_nll),
    ):
        best[column] = pd.Series(
            [np.nan if (paper := lookup(str(d))) is None else paper for d in best["dataset"]],
            index=best.index,
            dtype=float,
        )
        best[delta] = test - best[column]
    best["delta_vs_true"] = test - pd.to_numeric(best["true_test_nll"], errors="coerce")
    return best


def merge_best(existing: pd.DataFrame | None, experiments: list[Experiment]) -> pd.DataFrame:
    """One row per dataset: the lowest validation NLL among the candidates.

    Candidates are the best.json rows of this run's experiments and the ``existing`` rows
    of experiments not read in this run. Ties keep this run's row (listed first).
    """
    rows = [row for e in experiments if (row := experiment_best_row(e)) is not None]
    candidates = pd.DataFrame(rows)
    names = {e.name for e in experiments}
    if existing is not None and not existing.empty:
        kept = existing[~existing["experiment"].astype(str).isin(names)]
        candidates = pd.concat([candidates, kept], ignore_index=True) if not candidates.empty else kept
    fixed = set(best_table_columns(()))
    hyperparameters = [c for c in candidates.columns if c not in fixed]
    columns = best_table_columns(hyperparameters)
    if candidates.empty:
        return pd.DataFrame(columns=columns)
    candidates = candidates.reindex(columns=columns)
    candidates["valid_nll"] = pd.to_numeric(candidates["valid_nll"], errors="coerce")
    candidates = candidates[candidates["valid_nll"].notna()].reset_index(drop=True)
    winners = candidates.loc[candidates.groupby("dataset", sort=True)["valid_nll"].idxmin()]
    winners = add_reference_columns(winners.reset_index(drop=True))
    # Drop hyperparameter columns no winning configuration uses.
    unused = [h for h in hyperparameters if winners[h].isna().all()]
    winners = winners.drop(columns=unused)
    return tidy_integers(winners[best_table_columns([h for h in hyperparameters if h not in unused])])


# --------------------------------------------------------------------------- by masks


def by_masks_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Best trial per (dataset, num_masks, ordering), chosen by validation NLL.

    Only each experiment's best trial was evaluated on the test set, so ``test_nll`` is
    filled only when the group's lowest-validation trial is such a trial; the validation
    NLL is always that of the chosen trial. Trials without num_masks or ordering in their
    config, or without a finite validation NLL, are left out.
    """
    columns = list(schema.BY_MASKS_COLUMNS)
    if trials.empty or "num_masks" not in trials.columns or "ordering" not in trials.columns:
        return pd.DataFrame(columns=columns)
    usable = trials.copy()
    usable["best_valid_nll"] = pd.to_numeric(usable["best_valid_nll"], errors="coerce")
    usable = usable[usable["best_valid_nll"].notna() & usable["num_masks"].notna() & usable["ordering"].notna()]
    if usable.empty:
        return pd.DataFrame(columns=columns)
    usable["num_masks"] = pd.to_numeric(usable["num_masks"], errors="coerce")
    usable = usable[usable["num_masks"].notna()].reset_index(drop=True)
    groups = usable.groupby(["dataset", "num_masks", "ordering"], sort=True)
    chosen = usable.loc[groups["best_valid_nll"].idxmin()].reset_index(drop=True)
    sizes = groups.size().reset_index(name="group_trials")
    chosen = chosen.merge(sizes, on=["dataset", "num_masks", "ordering"], how="left")
    chosen = chosen.rename(columns={"best_valid_nll": "valid_nll"})
    return tidy_integers(chosen[columns])


# --------------------------------------------------------------------------- helpers


def tidy_integers(frame: pd.DataFrame) -> pd.DataFrame:
    """Float columns holding only whole numbers (and blanks) become nullable integers.

    CSV round trips turn an integer column with a blank into floats ("32.0"); this keeps
    mask counts, layer sizes and trial counts written as integers.
    """
    frame = frame.copy()
    for column in frame.columns:
        series = frame[column]
        if series.dtype.kind != "f" or series.isna().all():
            continue
        values = series.dropna()
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)) and column in _INTEGER_COLUMNS:
            frame[column] = series.astype("Int64")
    return frame


# Columns that are integers by meaning (others, e.g. learning_rate = 1.0, stay floats).
_INTEGER_COLUMNS = frozenset(
    {
        "hidden_layers",
        "hidden_units",
        "num_masks",
        "batch_size",
        "epochs",
        "num_failures",
        "sweep_num_trials",
        "group_trials",
        "seed",
        "test_masks",
    }
)


# --------------------------------------------------------------------------- markdown

MARKDOWN_DECIMALS = 2
MARKDOWN_HEADER = (
    "dataset",
    "test NLL ± stderr",
    "test masks",
    "valid NLL",
    "paper MADE",
    "paper MADE mask sampling",
    "Δ vs paper MADE",
    "winning configuration",
    "trials",
    "sweep wall time",
    "experiment / trial",
)


def format_nll(value: Any) -> str:
    """An NLL as the Markdown shows it: 2 decimals (Python ``.2f``), or the missing mark."""
    number = _number(value)
    return f"{number:.{MARKDOWN_DECIMALS}f}" if math.isfinite(number) else MISSING_MARK


def format_delta(value: Any) -> str:
    """A signed difference with 2 decimals (``+.2f``), or the missing mark."""
    number = _number(value)
    return f"{number:+.{MARKDOWN_DECIMALS}f}" if math.isfinite(number) else MISSING_MARK


def format_wall_time(seconds: Any) -> str:
    """Seconds as h:mm:ss (rounded to whole seconds), or the missing mark."""
    number = _number(seconds)
    if not math.isfinite(number):
        return MISSING_MARK
    total = int(round(number))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _format_count(value: Any) -> str:
    number = _number(value)
    return str(int(round(number))) if math.isfinite(number) else MISSING_MARK


def _is_blank(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def summarize_config(row: pd.Series | dict[str, Any], hyperparameters: Iterable[str]) -> str:
    """A short human summary of a configuration, e.g. "2×500, 32 masks, random, relu"."""
    config = {h: row[h] for h in hyperparameters if h in row and not _is_blank(row[h])}
    parts: list[str] = []
    layers, units = config.pop("hidden_layers", None), config.pop("hidden_units", None)
    if layers is not None and units is not None:
        parts.append(f"{_format_count(layers)}×{_format_count(units)}")
    elif layers is not None:
        parts.append(f"{_format_count(layers)} hidden layers")
    elif units is not None:
        parts.append(f"{_format_count(units)} hidden units")
    if "num_masks" in config:
        masks = _number(config.pop("num_masks"))
        if masks == 0:
            parts.append("mask sampling")
        elif math.isfinite(masks):
            parts.append(f"{int(masks)} mask" + ("" if masks == 1 else "s"))
    for name in ("ordering", "activation", "optimizer"):
        if name in config:
            parts.append(str(config.pop(name)))
    if "direct_connection" in config:
        direct = config.pop("direct_connection")
        parts.append("direct" if str(direct).lower() in ("true", "1", "1.0") else "no direct")
    short = {"learning_rate": "lr", "momentum": "mom", "weight_decay": "wd", "lr_decay": "decay", "batch_size": "bs"}
    for name, value in config.items():
        number = _number(value)
        shown = f"{number:g}" if math.isfinite(number) and not isinstance(value, str) else str(value)
        parts.append(f"{short.get(name, name)}={shown}")
    return ", ".join(parts).replace("|", "\\|")


def render_best_markdown(best: pd.DataFrame) -> str:
    """The best table as GitHub Markdown; numbers are the CSV's, rounded as stated."""
    fixed = set(best_table_columns(()))
    hyperparameters = [c for c in best.columns if c not in fixed]
    lines = [
        "# Best test NLL per dataset",
        "",
        "Test negative log-likelihood in nats per example (lower is better) of the trial with",
        "the lowest **validation** NLL over all experiments of each dataset, evaluated once on",
        "the test set with its mask ensemble (*test masks*; the validation NLL shown uses the same",
        "ensemble). *paper MADE* is Germain et al. (2015)'s best",
        '"MADE" number (a fixed number of masks); *paper MADE mask sampling* is their "MADE',
        'mask sampling" number (a fresh mask every update; — where the paper has none).',
        "Δ vs paper MADE = test − paper MADE (negative: better than the paper); the CSV also",
        "holds `delta_vs_mask_sampling` = test − paper MADE mask sampling.",
        "",
        f"Generated by `python -m results.aggregate` from `{schema.BEST_TABLE}`: every NLL,",
        f"stderr and Δ here is that file's value rounded to {MARKDOWN_DECIMALS} decimals (Python's",
        f"`.{MARKDOWN_DECIMALS}f`); wall time is rounded to whole seconds.",
        "",
        "| " + " | ".join(MARKDOWN_HEADER) + " |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    if best.empty:
        lines.append("| " + " | ".join([MISSING_MARK] * len(MARKDOWN_HEADER)) + " |")
    for _, row in best.iterrows():
        test = format_nll(row["test_nll"])
        stderr = _number(row["test_nll_stderr"])
        if math.isfinite(stderr):
            test += f" ± {format_nll(stderr)}"
        cells = [
            str(row["dataset"]),
            test,
            _format_count(row.get("test_masks")),
            format_nll(row["valid_nll"]),
            format_nll(row["paper_made_nll"]),
            format_nll(row["paper_mask_sampling_nll"]),
            format_delta(row["delta_vs_paper"]),
            summarize_config(row, hyperparameters) or MISSING_MARK,
            _format_count(row["sweep_num_trials"]),
            format_wall_time(row["sweep_wall_seconds"]),
            f"{row['experiment']} / {row['trial_id']}".replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")

    notes = []
    for _, row in best.iterrows():
        extra = []
        if math.isfinite(_number(row.get("true_test_nll"))):
            extra.append(
                f"true NLL of the generating distribution {format_nll(row['true_test_nll'])}, "
                f"Δ vs true {format_delta(row['delta_vs_true'])}"
            )
        if not _is_blank(row.get("note")) and str(row.get("note")).strip():
            extra.append(str(row["note"]).strip())
        if extra:
            notes.append(f"- **{row['dataset']}**: " + "; ".join(extra))
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"
