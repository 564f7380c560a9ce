"""Declarative space data (dicts from Python, YAML or JSON) to typed pieces.

This module checks the *shape* of the data (known keys, mappings where mappings
belong, ``[low, high]`` pairs) and converts values to the parameter's Python type
where nothing is lost (an int bound of a float parameter becomes a float).
Whether values are allowed for their parameter is ``SearchSpace.validate``'s
job. Errors name the space and the dotted path of the offending entry, e.g.
``space 'mine': datasets.mnist.params.hidden_units: ...``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from made_core.hyperparameters import HYPERPARAMETERS, PARAMETERS
from spaces.domains import Choice, Condition, Domain, FloatRange, IntRange, SearchedParameter
from spaces.errors import SpaceError

SPACE_KEYS = ("name", "description", "params", "fixed", "datasets", "start")
OVERRIDE_KEYS = ("params", "fixed", "start")
DOMAIN_KEYS = ("int", "float", "choice")
OPTION_KEYS = ("step", "log", "when", "otherwise")


@dataclass(frozen=True)
class DatasetOverride:
    """Entries that replace the base space's entries of the same parameters for one dataset.

    A parameter named here (in ``params`` or ``fixed``) drops whatever the base
    space said about it; parameters not named keep the base entry.
    """

    params: dict[str, SearchedParameter]
    fixed: dict[str, Any]
    start: tuple[dict[str, Any], ...] | None = None
    """This dataset's start points, in place of the base space's; None keeps the base's."""


def space_error(space: str, path: str, problem: str) -> SpaceError:
    """The error for ``problem`` at ``path`` (dotted, may be empty) of space ``space``."""
    where = f"{path}: " if path else ""
    return SpaceError(f"space {space!r}: {where}{problem}")


def parse_name(data: Any, default_name: str, source: str) -> str:
    """The space's name: ``data['name']`` if given, else ``default_name``."""
    if not isinstance(data, Mapping):
        raise SpaceError(f"space {default_name!r} ({source}): expected a mapping with a 'params' key, got {type(data).__name__}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise SpaceError(f"space {default_name!r} ({source}): name must be a non-empty string, got {name!r}")
    return name


def parse_description(space: str, data: Mapping[str, Any]) -> str:
    description = data.get("description", "")
    if not isinstance(description, str):
        raise space_error(space, "description", f"expected a string, got {type(description).__name__}")
    return description


def check_keys(space: str, path: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse keys outside ``allowed`` (typos should not pass silently)."""
    for key in data:
        if key not in allowed:
            raise space_error(space, path, f"unknown key {key!r} (allowed: {', '.join(allowed)})")


def expect_mapping(space: str, path: str, value: Any, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise space_error(space, path, f"expected a mapping such as {example}, got {_kind(value)}")
    return value


def parse_params(space: str, path: str, raw: Any) -> dict[str, SearchedParameter]:
    """``params:``: parameter name to searched parameter."""
    entries = expect_mapping(space, path, raw, "{hidden_units: {choice: [250, 500]}}")
    return {_known_name(space, path, name): parse_searched(space, f"{path}.{name}", name, spec) for name, spec in entries.items()}


def parse_fixed(space: str, path: str, raw: Any) -> dict[str, Any]:
    """``fixed:``: parameter name to constant value."""
    entries = expect_mapping(space, path, raw, "{activation: relu}")
    return {_known_name(space, path, name): PARAMETERS[name].normalize(value) for name, value in entries.items()}


def parse_start(space: str, path: str, raw: Any) -> tuple[dict[str, Any], ...]:
    """``start``: a list of partial configurations the search evaluates first."""
    if not isinstance(raw, list):
        raise space_error(space, path, f"must be a list of {{parameter: value}} mappings, got {_kind(raw)}")
    points = []
    for index, point in enumerate(raw):
        mapping = expect_mapping(space, f"{path}[{index}]", point, "{num_masks: 32, learning_rate: 3.0e-3}")
        points.append({_known_name(space, f"{path}[{index}]", name): value for name, value in mapping.items()})
    return tuple(points)


def parse_overrides(space: str, path: str, raw: Any) -> dict[str, DatasetOverride]:
    """``datasets:``: dataset name to its override."""
    entries = expect_mapping(space, path, raw, "{mnist: {params: {...}}}")
    overrides = {}
    for dataset, override in entries.items():
        where = f"{path}.{dataset}"
        if not isinstance(dataset, str):
            raise space_error(space, path, f"dataset names must be strings, got {dataset!r}")
        override = expect_mapping(space, where, override, "{params: {...}, fixed: {...}}")
        check_keys(space, where, override, OVERRIDE_KEYS)
        overrides[dataset] = DatasetOverride(
            params=parse_params(space, f"{where}.params", override.get("params", {})),
            fixed=parse_fixed(space, f"{where}.fixed", override.get("fixed", {})),
            start=parse_start(space, f"{where}.start", override["start"]) if "start" in override else None,
        )
    return overrides


def parse_searched(space: str, path: str, name: str, raw: Any) -> SearchedParameter:
    """One entry of ``params:``: a domain key plus options."""
    if not isinstance(raw, Mapping):
        raise space_error(
            space,
            path,
            f"expected a mapping such as {{choice: [...]}}, {{int: [low, high]}} or {{float: [low, high]}}, "
            f"got {_kind(raw)} (constants go under fixed:)",
        )
    check_keys(space, path, raw, DOMAIN_KEYS + OPTION_KEYS)
    kinds = [key for key in DOMAIN_KEYS if key in raw]
    if len(kinds) != 1:
        raise space_error(space, path, f"give exactly one of {', '.join(DOMAIN_KEYS)} (got {len(kinds)})")
    kind = kinds[0]
    domain = _parse_domain(space, path, name, kind, raw)
    if "when" not in raw:
        if "otherwise" in raw:
            raise space_error(space, path, "otherwise: needs a when: condition")
        return SearchedParameter(name, domain)
    when = _parse_condition(space, f"{path}.when", raw["when"])
    otherwise = PARAMETERS[name].normalize(raw.get("otherwise", PARAMETERS[name].default))
    return SearchedParameter(name, domain, when, otherwise)


def _parse_domain(space: str, path: str, name: str, kind: str, raw: Mapping[str, Any]) -> Domain:
    if kind == "choice":
        for option in ("step", "log"):
            if option in raw:
                raise space_error(space, path, f"{option}: applies to int: and float: ranges, not choice:")
        values = raw["choice"]
        if not isinstance(values, (list, tuple)):
            raise space_error(space, f"{path}.choice", f"expected a list of values, got {_kind(values)}")
        return Choice(tuple(PARAMETERS[name].normalize(value) for value in values))
    bounds = raw[kind]
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise space_error(space, f"{path}.{kind}", f"expected [low, high], got {bounds!r}")
    as_kind = _as_int if kind == "int" else _as_float
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise space_error(space, f"{path}.log", f"expected true or false, got {log!r}")
    low, high = (as_kind(bound) for bound in bounds)
    if kind == "int":
        return IntRange(low, high, step=as_kind(raw.get("step", 1)), log=log)
    step = raw.get("step")
    return FloatRange(low, high, step=None if step is None else as_kind(step), log=log)


def _parse_condition(space: str, path: str, raw: Any) -> Condition:
    """``when: {param: value}`` or ``when: {param: [value, ...]}`` (several params: all must hold)."""
    entries = expect_mapping(space, path, raw, "{optimizer: sgd}")
    if not entries:
        raise space_error(space, path, "a condition needs at least one parameter")
    requirements = []
    for name, accepted in entries.items():
        values = tuple(accepted) if isinstance(accepted, (list, tuple)) else (accepted,)
        if not values:
            raise space_error(space, f"{path}.{name}", "needs at least one value")
        if name in PARAMETERS:
            values = tuple(PARAMETERS[name].normalize(value) for value in values)
        requirements.append((name, values))
    return Condition(tuple(requirements))


def _known_name(space: str, path: str, name: Any) -> str:
    if name not in PARAMETERS:
        raise space_error(space, path, f"unknown parameter {name!r} (known: {', '.join(HYPERPARAMETERS)})")
    return name


def _as_int(value: Any) -> Any:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def _as_float(value: Any) -> Any:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
