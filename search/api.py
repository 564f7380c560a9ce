"""``search.sweep``: a sweep called from Python (a notebook, a script), with a typed result.

    from search import sweep
    result = sweep("dna", space="default", time_budget="20m", storage="runs")
    print(result.test_nll, "±", result.test_nll_stderr, result.best_config)

The keywords are the command line's settings by their flag names (``num_samples=8`` for
``--num-samples 8``; ``config="sweep.yaml"`` reads a settings file first, keywords override
it), with the same defaults and the same checks: bad input raises ``UsageError`` (a
``ValueError``) before anything is written. Progress goes to the ``search`` logger
(``logging.basicConfig(level=logging.INFO)`` shows it).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from search.settings import UsageError, check_settings, defaults, read_config

__all__ = ["NoResultError", "SweepResult", "UsageError", "sweep"]


class NoResultError(RuntimeError):
    """The sweep ran but no trial produced a finite validation NLL (exit status 1 on the command line)."""


@dataclass(frozen=True, eq=False)
class SweepResult:
    """A finished (or interrupted) sweep's best trial by validation NLL, evaluated once on the test set.

    NLLs are nats per example; ``valid_nll`` uses the same test-time ensemble (``test_masks``)
    as ``test_nll``. ``path`` is the experiment folder (a local path or a URI); ``trials`` is
    its trials.csv as a DataFrame; ``tables_dir`` the aggregated tables refreshed (None when
    not refreshed). ``mixture``: best.json's mixture of the finalists (its models and weights,
    ``valid_nll``, ``test_nll``, ``test_nll_stderr``, and ``path``, which ``made_core.load_mixture``
    reads), beside the single chosen model the other fields describe.
    """

    experiment: str
    dataset: str
    path: str
    status: str  # "finished" or "interrupted"
    best_config: dict[str, Any]
    test_nll: float
    test_nll_stderr: float
    valid_nll: float
    test_masks: int
    trial_id: str
    seed: int  # the chosen model's training seed (the sweep's, or a retraining's: --reseeds)
    trials: pd.DataFrame
    tables_dir: Path | None
    mixture: dict[str, Any] | None = None


def sweep(dataset: str, *, config: str | Path | None = None, **settings: Any) -> SweepResult:
    """Run the sweep ``made-search --dataset DATASET ...`` would, and return its result."""
    from search.run import build_parser, execute

    parser = build_parser()
    values = defaults(parser)
    if config is not None:
        values.update(read_config(config, parser))
    values.update(check_settings(parser, {**settings, "dataset": dataset}, "sweep()"))
    args = argparse.Namespace(**values, verbose=False, quiet=False)
    shown = ", ".join(f"{key}={value!r}" for key, value in {"config": config, **settings}.items() if value is not None)
    return execute(args, f"search.sweep({dataset!r}{', ' if shown else ''}{shown})")
