"""Aggregate finished experiments into tables and figures.

    python -m results.aggregate [--storage DIR|URI ...] [--tables-dir results/tables]
                                [--figures-dir results/figures] [--no-figures]
                                [--no-samples] [--replace]

Scans every experiment folder ``<storage>/<name>/`` (layout: ``results.schema``; default
storage ``./runs``, several ``--storage`` allowed; a URI such as ``s3://bucket/prefix`` is read
through pyarrow, its experiment files fetched into a temporary folder) and writes, under the
tables folder:

- ``best_test_nll.csv``: one row per dataset, the best over all experiments whose best.json
  exists, **chosen by validation NLL** (never test NLL); columns BEST_TABLE_COLUMNS with the
  winning configuration's hyperparameters after ``delta_vs_mask_sampling``, then
  BEST_TABLE_EXTRA_COLUMNS (``true_test_nll``/``delta_vs_true`` for synthetic data whose
  best.json or experiment.json carries ``true_test_nll``; ``note`` from experiment.json's
  ``data_note``). ``paper_made_nll`` is the paper's "MADE" (fixed masks; dna 83.63) and
  ``paper_mask_sampling_nll`` its "MADE mask sampling" (dna 79.66); ``delta_vs_paper =
  test_nll - paper_made_nll`` and ``delta_vs_mask_sampling = test_nll -
  paper_mask_sampling_nll``, each empty without that paper number.
- ``trials.csv``: every trial of every experiment: dataset, experiment, TRIAL_COLUMNS,
  test_nll (filled only for each experiment's best trial), hyperparameters.
- ``by_masks.csv``: per (dataset, num_masks, ordering), the trial with the lowest validation
  NLL, its validation NLL, and its test NLL *only if that trial happens to be an
  experiment's best trial* -- no other trial is ever evaluated on the test set, so
  ``test_nll`` is often empty; it is never filled from a different trial than the one the
  validation NLL picked.
- ``best_test_nll.md``: the best table rendered for GitHub, numbers rounded as it states.

Tables are "the best so far": the rows of experiments read in this run replace their old
rows, the rows of experiments not read in this run are kept (``--replace`` starts from
empty tables instead). The read-merge-write runs under an exclusive ``flock`` on
``<tables>/.lock`` and every file is replaced atomically, so concurrent aggregations (two
sweeps finishing at once) never corrupt or lose a table, and readers never see half a file.

Unusable folders (no experiment.json, bad JSON, a CSV that does not parse or lacks columns)
are skipped with a warning naming them; an empty storage gives header-only tables.

Figures (PNG, ``results.figures``/``results.samples``): ``<experiment>_curves.png``,
``<experiment>_best_so_far.png``, ``<dataset>_nll_vs_masks.png`` and, for image datasets
whose winning experiment was read in this run, ``<dataset>_samples.png`` (redrawn only when
the checkpoint is newer than the figure).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from made_core.cli import DefaultsHelpFormatter
from made_core.files import atomic_write_all
from results import schema
from results.experiments import Experiment, Skipped, local_storages, scan_storages
from results.paper import paper_made_nll, paper_mask_sampling_nll
from results.storage import exclusive_lock
from results.tables import (
    by_masks_table,
    merge_best,
    merge_trials,
    render_best_markdown,
    required_best_columns,
    required_trials_columns,
)

logger = logging.getLogger("results")

# The project's published tables and figures (relative to the working directory): the
# command line's defaults, and what ``search.run --publish`` writes.
PUBLISHED_TABLES_DIR = Path("results/tables")
PUBLISHED_FIGURES_DIR = Path("results/figures")
DEFAULT_STORAGE = "runs"


@dataclass
class AggregateResult:
    """What one aggregation read and wrote."""

    best: pd.DataFrame
    trials: pd.DataFrame
    by_masks: pd.DataFrame
    experiments: list[str]  # names of the experiment folders read in this run
    skipped: list[Skipped]  # folders left out, with the reason
    tables: dict[str, Path] = field(default_factory=dict)  # file name -> path written
    figures: list[Path] = field(default_factory=list)


def _read_existing(path: Path, required: list[str]) -> pd.DataFrame | None:
    """A table written by an earlier aggregation, or None if absent or unreadable."""
    if not path.exists():
        return None
    try:
        frame = pd.read_csv(path, dtype={"trial_id": str, "experiment": str, schema.COMMIT_COLUMN: str})
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        logger.warning("ignoring unreadable %s (%s); it will be rewritten", path, error)
        return None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        logger.warning("ignoring %s: it lacks columns %s; it will be rewritten", path, missing)
        return None
    return frame


def write_tables(
    tables_dir: Path, experiments: list[Experiment], *, merge: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Path]]:
    """Read-merge-write the four tables under the tables lock; returns (best, trials, by_masks, paths)."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        name: tables_dir / name
        for name in (schema.BEST_TABLE, schema.ALL_TRIALS_TABLE, schema.BY_MASKS_TABLE, schema.BEST_MARKDOWN)
    }
    with exclusive_lock(tables_dir / schema.TABLES_LOCK_FILE):
        existing_trials = existing_best = None
        if merge:
            existing_trials = _read_existing(paths[schema.ALL_TRIALS_TABLE], required_trials_columns())
            existing_best = _read_existing(paths[schema.BEST_TABLE], required_best_columns())
        trials = merge_trials(existing_trials, experiments)
        best = merge_best(existing_best, experiments)
        by_masks = by_masks_table(trials)
        markdown = render_best_markdown(best)
        # All four or none: a full disk must not leave a new trials table beside an old best table.
        atomic_write_all(
            {
                paths[schema.ALL_TRIALS_TABLE]: lambda temp: trials.to_csv(temp, index=False),
                paths[schema.BY_MASKS_TABLE]: lambda temp: by_masks.to_csv(temp, index=False),
                paths[schema.BEST_TABLE]: lambda temp: best.to_csv(temp, index=False),
                paths[schema.BEST_MARKDOWN]: lambda temp: temp.write_text(markdown, encoding="utf-8"),
            }
        )
    return best, trials, by_masks, paths


def _checkpoint_dir(experiment: Experiment) -> Path | None:
    raw = (experiment.best or {}).get("checkpoint_path")
    if not isinstance(raw, str) or not raw:
        return None
    path = Path(raw)
    for candidate in [path] if path.is_absolute() else [experiment.path / path, path]:
        if candidate.exists():
            return candidate
    return None


def _newest_mtime(path: Path) -> float:
    if path.is_dir():
        return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.iterdir())])
    return path.stat().st_mtime


def _true_nll(experiment: Experiment) -> float | None:
    for source in (experiment.best or {}, experiment.info):
        value = source.get("true_test_nll")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def draw_figures(
    figures_dir: Path,
    experiments: list[Experiment],
    best: pd.DataFrame,
    by_masks: pd.DataFrame,
    *,
    samples: bool = True,
) -> list[Path]:
    """Every figure of this run's experiments and datasets; a failing figure only warns."""
    # Imported here: tables-only callers never pay for matplotlib.
    from results import figures
    from results.samples import IMAGE_SHAPES, samples_figure

    figures_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def attempt(description: str, draw) -> None:
        try:
            path = draw()
        except Exception as error:  # a figure must never cost the tables
            logger.warning("could not draw %s: %s: %s", description, type(error).__name__, error)
            return
        if path is not None:
            written.append(path)

    for experiment in experiments:
        paper = paper_made_nll(experiment.dataset)
        sampling = paper_mask_sampling_nll(experiment.dataset)
        true = _true_nll(experiment)
        best_trial = experiment.best["trial_id"] if experiment.best else None
        if best_trial is None and not experiment.trials.empty:
            valid = pd.to_numeric(experiment.trials["best_valid_nll"], errors="coerce")
            if valid.notna().any():
                best_trial = str(experiment.trials.loc[valid.idxmin(), "trial_id"])
        title = f"{experiment.name} ({experiment.dataset})"
        if experiment.curves is not None and not experiment.curves.empty:
            attempt(
                f"curves of {experiment.name}",
                lambda e=experiment, t=title, b=best_trial, p=paper, s=sampling, tr=true: figures.plot_curves(
                    e.curves,
                    figures_dir / schema.CURVES_FIGURE.format(experiment=e.name),
                    title=t,
                    best_trial_id=b,
                    paper_nll=p,
                    true_nll=tr,
                    paper_mask_sampling_nll=s,
                ),
            )
        if not experiment.trials.empty:
            attempt(
                f"best-so-far of {experiment.name}",
                lambda e=experiment, t=title, p=paper, s=sampling, tr=true: figures.plot_best_so_far(
                    e.trials,
                    figures_dir / schema.BEST_SO_FAR_FIGURE.format(experiment=e.name),
                    title=t,
                    paper_nll=p,
                    true_nll=tr,
                    paper_mask_sampling_nll=s,
                ),
            )

    datasets = sorted({e.dataset for e in experiments})
    for dataset in datasets:
        rows = by_masks[by_masks["dataset"] == dataset]
        if not rows.empty:
            attempt(
                f"NLL vs masks of {dataset}",
                lambda d=dataset, r=rows: figures.plot_nll_vs_masks(
                    r,
                    figures_dir / schema.NLL_VS_MASKS_FIGURE.format(dataset=d),
                    title=f"{d}: best trial per mask count and ordering",
                    paper_nll=paper_made_nll(d),
                    paper_mask_sampling_nll=paper_mask_sampling_nll(d),
                ),
            )

    if samples:
        by_name = {e.name: e for e in experiments}
        for _, row in best.iterrows():
            dataset, winner = str(row["dataset"]), by_name.get(str(row["experiment"]))
            if dataset not in IMAGE_SHAPES or winner is None:
                continue
            checkpoint = _checkpoint_dir(winner)
            if checkpoint is None:
                logger.warning("no samples figure for %s: best.json of %s names no existing checkpoint", dataset, winner.name)
                continue
            target = figures_dir / schema.SAMPLES_FIGURE.format(dataset=dataset)
            if target.exists() and target.stat().st_mtime >= _newest_mtime(checkpoint):
                written.append(target)  # sampling is slow; the model has not changed
                continue
            attempt(
                f"samples of {dataset}",
                lambda d=dataset, c=checkpoint, t=target, w=winner, trial=row["trial_id"]: samples_figure(
                    d, c, t, title=f"{d}: samples of {w.name} / {trial} and nearest training examples"
                ),
            )
    return written


def aggregate(
    storages: list[Path | str] | tuple[Path | str, ...] = (DEFAULT_STORAGE,),
    tables_dir: Path | str = PUBLISHED_TABLES_DIR,
    figures_dir: Path | str | None = PUBLISHED_FIGURES_DIR,
    *,
    merge: bool = True,
    samples: bool = True,
) -> AggregateResult:
    """Scan ``storages``, update the tables in ``tables_dir`` and draw figures.

    A storage is a local folder or a URI (``s3://bucket/prefix``, ``gs://...``; pyarrow's
    query parameters allowed): a URI's experiment files are fetched into a temporary folder
    first. ``figures_dir=None`` draws no figures; ``merge=False`` rewrites the tables from this
    run's experiments only; ``samples=False`` skips the (slow) samples figure. Never raises
    for a bad experiment folder: it is skipped with a warning and listed in ``skipped``.
    """
    with local_storages(list(storages)) as local:
        figures = None if figures_dir is None else Path(figures_dir)
        return _aggregate(local, Path(tables_dir), figures, merge=merge, samples=samples)


def _aggregate(
    storages: list[Path],
    tables_dir: Path,
    figures_dir: Path | None,
    *,
    merge: bool,
    samples: bool,
) -> AggregateResult:
    experiments, skipped = scan_storages(storages)
    if not experiments:
        logger.warning(
            "no usable experiment folders under %s; tables keep %s",
            ", ".join(str(s) for s in storages) or "(no storage given)",
            "their earlier rows" if merge else "headers only",
        )
    best, trials, by_masks, paths = write_tables(Path(tables_dir), experiments, merge=merge)
    result = AggregateResult(
        best=best,
        trials=trials,
        by_masks=by_masks,
        experiments=[e.name for e in experiments],
        skipped=skipped,
        tables=paths,
    )
    if figures_dir is not None:
        result.figures = draw_figures(Path(figures_dir), experiments, best, by_masks, samples=samples)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="made-aggregate", description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument(
        "--storage",
        action="append",
        help=f"experiment storage folder or URI, e.g. s3://bucket/prefix (repeatable; unset: {DEFAULT_STORAGE})",
    )
    parser.add_argument("--tables-dir", type=Path, default=PUBLISHED_TABLES_DIR, help="where the tables are written")
    parser.add_argument("--figures-dir", type=Path, default=PUBLISHED_FIGURES_DIR, help="where the figures are drawn")
    parser.add_argument("--no-figures", action="store_true", help="write the tables only")
    parser.add_argument("--no-samples", action="store_true", help="skip the samples figure (needs the model)")
    parser.add_argument("--replace", action="store_true", help="rebuild the tables from these storages only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)

    storages = args.storage or [DEFAULT_STORAGE]
    try:
        result = aggregate(
            storages,
            args.tables_dir,
            None if args.no_figures else args.figures_dir,
            merge=not args.replace,
            samples=not args.no_samples,
        )
    except OSError as error:  # a full or read-only disk: the tables were written all or not at all
        print(f"error: cannot write the tables in {args.tables_dir}: {error}; the previous tables are unchanged", file=sys.stderr)
        return 1
    print(f"read {len(result.experiments)} experiment(s), skipped {len(result.skipped)}")
    for skipped in result.skipped:
        print(f"  skipped {skipped.path}: {skipped.reason}")
    if not result.experiments:
        print(f"no experiments found under {', '.join(str(s) for s in storages)}")
    print(f"best test NLL for {len(result.best)} dataset(s); {len(result.trials)} trial row(s)")
    for path in result.tables.values():
        print(f"  wrote {path}")
    if result.figures:
        print(f"  {len(result.figures)} figure(s) in {args.figures_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
