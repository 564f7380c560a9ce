"""Warm start: the best configurations of earlier sweeps as start points of a new one.

A source (``--warm-start``, repeatable) is an experiment folder, a storage folder of
experiments, or a results table (``trials.csv`` or ``best_test_nll.csv``, as
``results.aggregate`` writes them). From each dataset a source holds, its best
``count`` configurations by validation NLL are taken, best first and interleaved across
datasets, mapped onto the current space (``map_onto``) and de-duplicated against each
other and the space's own start points. Optuna evaluates them before it samples, like
the space's ``start`` points (Ray's ``OptunaSearch(points_to_evaluate=...)``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from made_core.hyperparameters import HYPERPARAMETERS
from results import schema
from search.settings import UsageError
from spaces import SearchSpace
from spaces.domains import Choice, FloatRange, IntRange, same_value

DEFAULT_COUNT = 3  # configurations taken from each dataset of a source
_RANK_COLUMNS = (schema.OBJECTIVE, "valid_nll")  # trials tables, then the best table


def read_source(source: str | Path) -> list[pd.DataFrame]:
    """The configurations a source holds: one frame per dataset, rows of hyperparameter columns
    ordered best first. Raises UsageError (one line naming the source) for a missing or foreign one."""
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"--warm-start {source}: no such file or folder")
    if path.is_file():
        frame = _read_table(path, source)
        return _per_dataset(frame, source)
    if (path / schema.EXPERIMENT_FILE).is_file():
        return _per_dataset(_experiment_trials(path, source), source)
    experiments = sorted(
        p for p in path.iterdir() if (p / schema.EXPERIMENT_FILE).is_file() and (p / schema.TRIALS_FILE).is_file()
    )
    if not experiments:
        raise UsageError(
            f"--warm-start {source}: not an experiment folder, a storage of experiments or a results table "
            f"(no {schema.EXPERIMENT_FILE} with a {schema.TRIALS_FILE} in it or below it)"
        )
    return _per_dataset(pd.concat([_experiment_trials(p, source) for p in experiments], ignore_index=True), source)


def _read_table(path: Path, source: str | Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--warm-start {source}: not a readable CSV table ({type(error).__name__})") from None
    if not set(HYPERPARAMETERS) & set(frame.columns) or not set(_RANK_COLUMNS) & set(frame.columns):
        raise UsageError(
            f"--warm-start {source}: not a results table (needs hyperparameter columns and {' or '.join(_RANK_COLUMNS)})"
        )
    return frame


def _experiment_trials(folder: Path, source: str | Path) -> pd.DataFrame:
    import json

    trials_file = folder / schema.TRIALS_FILE
    if not trials_file.is_file():
        raise UsageError(f"--warm-start {source}: experiment {folder.name} has no {schema.TRIALS_FILE} (did it finish?)")
    frame = _read_table(trials_file, source)
    info = json.loads((folder / schema.EXPERIMENT_FILE).read_text())
    frame.insert(0, "dataset", str(info.get("dataset", folder.name)))
    return frame


def _per_dataset(frame: pd.DataFrame, source: str | Path) -> list[pd.DataFrame]:
    rank = next(column for column in _RANK_COLUMNS if column in frame.columns)
    values = pd.to_numeric(frame[rank], errors="coerce")
    frame = frame.assign(_rank=values)[values.notna() & (values.abs() < math.inf)]
    if frame.empty:
        raise UsageError(f"--warm-start {source}: no configuration with a finite {rank}")
    groups = frame.groupby("dataset", sort=True) if "dataset" in frame.columns else [("", frame)]
    return [group.sort_values("_rank", kind="stable") for _, group in groups]


def _coerced(value: Any, reference: Any) -> Any:
    """A value read back from CSV (strings, floats for ints) in the type of ``reference``."""
    if isinstance(reference, bool):
        text = str(value).strip().lower()
        return True if text in ("true", "1", "1.0") else False if text in ("false", "0", "0.0") else value
    if isinstance(reference, int):
        number = pd.to_numeric(value, errors="coerce")
        return int(number) if pd.notna(number) and float(number).is_integer() else value
    if isinstance(reference, float):
        number = pd.to_numeric(value, errors="coerce")
        return float(number) if pd.notna(number) else value
    return value if isinstance(value, str) else str(value)


def _nearest(value: float, options: Sequence[Any], log: bool) -> Any:
    scale = (lambda v: math.log(v)) if log else (lambda v: v)
    return min(options, key=lambda option: abs(scale(float(option)) - scale(value)))


def map_onto(config: Mapping[str, Any], space: SearchSpace, dataset: str | None) -> dict[str, Any]:
    """``config`` as a start point of ``space`` for ``dataset``: each searched parameter's value
    if its domain holds it; a number outside a range clipped into it, and a number missing from
    a numeric choice replaced by the nearest listed one (on a log scale for positive values);
    anything else (absent, blank, a category the space lacks) is left to the sampler."""
    point: dict[str, Any] = {}
    for name, parameter in space.layout(dataset).searched.items():
        raw = config.get(name)
        if raw is None or (isinstance(raw, float) and math.isnan(raw)):
            continue
        domain = parameter.domain
        reference = domain.values[0] if isinstance(domain, Choice) else domain.low
        value = _coerced(raw, reference)
        if domain.contains(value):
            point[name] = value
        elif isinstance(domain, Choice):
            numeric = [v for v in domain.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if numeric and len(numeric) == len(domain.values) and isinstance(value, (int, float)) and not isinstance(value, bool):
                point[name] = _nearest(float(value), numeric, log=all(v > 0 for v in numeric) and value > 0)
        elif isinstance(domain, (IntRange, FloatRange)) and isinstance(value, (int, float)) and not isinstance(value, bool):
            clipped = min(max(value, domain.low), domain.high)
            if isinstance(domain, IntRange):
                clipped = domain.low + domain.step * round((clipped - domain.low) / domain.step)
                clipped = int(min(clipped, domain.high))
            else:
                clipped = float(clipped)
            if domain.contains(clipped):
                point[name] = clipped
    return point


def _same_point(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) or a[k] == b[k] for k in a)


def warm_start_points(
    sources: Iterable[str | Path], space: SearchSpace, dataset: str | None, count: int = DEFAULT_COUNT
) -> list[dict[str, Any]]:
    """Start points from ``sources``: each dataset's best ``count``, interleaved, mapped, de-duplicated
    (against each other and ``space``'s own start points). Raises UsageError for a bad source."""
    per_dataset = [frame.head(count) for source in sources for frame in read_source(source)]
    ranked = [row for rows in itertools.zip_longest(*(f.to_dict("records") for f in per_dataset)) for row in rows if row]
    taken: list[dict[str, Any]] = []
    existing = space.start_points(dataset)
    for row in ranked:
        point = map_onto(row, space, dataset)
        if point and not any(_same_point(point, other) for other in [*existing, *taken]):
            taken.append(point)
    return taken
