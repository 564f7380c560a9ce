"""The Ray Tune side of made-search; ``search.sweep`` runs a sweep from Python."""

from search.api import NoResultError, SweepResult, UsageError, sweep

__all__ = ["NoResultError", "SweepResult", "UsageError", "sweep"]
