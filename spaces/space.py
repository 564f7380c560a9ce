"""``SearchSpace``: a validated, named search space and its Optuna define-by-run functions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from made_core.hyperparameters import HYPERPARAMETERS, PARAMETERS
from spaces.domains import SearchedParameter
from spaces.parsing import (
    SPACE_KEYS,
    DatasetOverride,
    check_keys,
    parse_description,
    parse_fixed,
    parse_name,
    parse_overrides,
    parse_params,
    parse_start,
    space_error,
)


def dataset_key(dataset: str) -> str:
    """The registry's canonical name for a dataset name or alias (``binarized_mnist`` ->
    ``mnist``), so an override matches under every name of its dataset; a name the registry
    does not know (a user's own dataset) is its own key."""
    from made_core.data import DatasetError, canonical_name

    try:
        return canonical_name(dataset)
    except DatasetError:
        return dataset


@dataclass(frozen=True)
class Layout:
    """What one study searches: the base space, or the base space with one dataset's override.

    ``order`` lists every canonical parameter in evaluation order: canonical order,
    except that a conditional parameter comes after the parameters it reads.
    """

    searched: dict[str, SearchedParameter]
    fixed: dict[str, Any]
    order: tuple[str, ...]


@dataclass(frozen=True)
class DefineByRun:
    """The Optuna define-by-run function of one layout (a picklable callable).

    Calling it with a trial suggests every searched parameter under its canonical
    name (conditional ones only where their condition holds) and returns the
    complete configuration: every key of ``HYPERPARAMETERS``, in that order,
    suggested values included. Ray Tune's ``OptunaSearch`` merges the returned dict
    over the trial's suggested parameters, which gives the same configuration;
    plain Optuna users can use the returned dict directly.
    """

    space_name: str
    dataset: str | None
    layout: Layout

    def __call__(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for name in self.layout.order:
            if name in self.layout.searched:
                config[name] = self.layout.searched[name].resolve(trial, config)
            elif name in self.layout.fixed:
                config[name] = self.layout.fixed[name]
            else:
                config[name] = PARAMETERS[name].default
        return {name: config[name] for name in HYPERPARAMETERS}

    def __repr__(self) -> str:
        where = "" if self.dataset is None else f", dataset={self.dataset!r}"
        return f"DefineByRun(space={self.space_name!r}{where})"


@dataclass(frozen=True)
class SearchSpace:
    """A named search space over the canonical hyperparameters.

    ``params`` are searched, ``fixed`` are constants, every other parameter takes
    its default; ``dataset_overrides`` replace entries for one dataset (by the
    dataset name given to ``define_by_run``; other names get the base space).
    ``source`` says where it came from ("builtin" or a file path). ``start``
    holds partial configurations the search evaluates before sampling (a known
    strong point, so a short sweep is never worse than it). The mappings are
    read-only by convention. Building one validates it (``SpaceError``).
    """

    name: str
    description: str
    params: dict[str, SearchedParameter]
    fixed: dict[str, Any]
    dataset_overrides: dict[str, DatasetOverride] = field(default_factory=dict)
    source: str = "builtin"
    start: tuple[dict[str, Any], ...] = ()
    _layouts: dict[str | None, Layout] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_layouts", {})
        self.validate()

    @classmethod
    def from_data(cls, data: Any, *, default_name: str, source: str = "builtin") -> SearchSpace:
        """Build and validate a space from its declarative form (see the package docstring).

        ``default_name`` names the space when ``data`` has no ``name`` (a file's stem).
        """
        name = parse_name(data, default_name, source)
        check_keys(name, "", data, SPACE_KEYS)
        if "params" not in data:
            raise space_error(name, "", "missing 'params' (the searched parameters; write params: {} if none)")
        return cls(
            name=name,
            description=parse_description(name, data),
            params=parse_params(name, "params", data["params"]),
            fixed=parse_fixed(name, "fixed", data.get("fixed", {})),
            dataset_overrides={
                dataset_key(dataset): override
                for dataset, override in parse_overrides(name, "datasets", data.get("datasets", {})).items()
            },
            source=source,
            start=parse_start(name, "start", data.get("start", [])),
        )

    def validate(self) -> None:
        """Check every entry and every dataset's layout; raise ``SpaceError`` on the first problem."""
        layouts: dict[str | None, Layout] = {None: self._checked_layout(self.params, self.fixed, "")}
        for dataset, override in self.dataset_overrides.items():
            path = f"datasets.{dataset}."
            _check_overlap(self.name, path, override.params, override.fixed)
            searched = {k: v for k, v in self.params.items() if k not in override.fixed}
            searched.update(override.params)
            fixed = {k: v for k, v in self.fixed.items() if k not in override.params}
            fixed.update(override.fixed)
            self._check_entries(override.params, override.fixed, path)
            layouts[dataset] = Layout(searched, fixed, _evaluation_order(self.name, path, searched))
        self._layouts.clear()
        self._layouts.update(layouts)
        self._check_start(self.start, layouts[None], "start")
        for dataset, override in self.dataset_overrides.items():
            if override.start is not None:
                self._check_start(override.start, layouts[dataset], f"datasets.{dataset}.start")

    def _check_start(self, points: tuple[dict[str, Any], ...], layout: Layout, path: str) -> None:
        for index, point in enumerate(points):
            for name, value in point.items():
                where = f"{path}[{index}].{name}"
                if name not in layout.searched:
                    raise space_error(self.name, where, "is not a searched parameter of the space")
                if not layout.searched[name].domain.contains(value):
                    raise space_error(self.name, where, f"{value!r} is outside the parameter's domain")

    def start_points(self, dataset: str | None = None) -> list[dict[str, Any]]:
        """The ``start`` configurations for ``dataset``'s study: the dataset override's own
        ``start`` list when it has one, else the base space's.

        A base value a dataset override no longer admits (or a parameter it fixes) is left
        to the sampler, so every point is valid in that study.
        """
        override = self.dataset_overrides.get(dataset_key(dataset)) if dataset is not None else None
        if override is not None and override.start is not None:
            return [dict(point) for point in override.start if point]
        searched = self.layout(dataset).searched
        points = [
            {name: value for name, value in point.items() if name in searched and searched[name].domain.contains(value)}
            for point in self.start
        ]
        return [point for point in points if point]

    def layout(self, dataset: str | None = None) -> Layout:
        """The searched and fixed parameters for ``dataset`` (None or an unlisted name: the base space)."""
        return self._layouts.get(dataset_key(dataset) if dataset is not None else None, self._layouts[None])

    def define_by_run(self, dataset: str | None = None) -> DefineByRun:
        """The define-by-run function for ``OptunaSearch(space=...)`` or ``study.ask()`` for ``dataset``.

        Use one study per dataset: datasets with overrides give a parameter other
        distributions, and Optuna keeps one distribution per name within a study.
        """
        return DefineByRun(self.name, dataset, self.layout(dataset))

    def searched_parameters(self, dataset: str | None = None) -> tuple[str, ...]:
        """The names Optuna suggests for ``dataset`` (conditional ones included), canonical order."""
        searched = self.layout(dataset).searched
        return tuple(name for name in HYPERPARAMETERS if name in searched)

    def distributions(self, dataset: str | None = None) -> dict[str, optuna.distributions.BaseDistribution]:
        """The Optuna distribution of every searched parameter (for ``study.add_trial``, checks, dashboards)."""
        searched = self.layout(dataset).searched
        return {name: searched[name].domain.distribution() for name in self.searched_parameters(dataset)}

    def default_config(self, dataset: str | None = None) -> dict[str, Any]:
        """One complete configuration inside the space, without Optuna: a smoke-run or first-trial point.

        Fixed values; for searched parameters the canonical default where the
        domain contains it, else the domain's representative (first choice, or the
        middle of a range, geometric for log ranges); conditions are honoured.
        """
        layout = self.layout(dataset)
        config: dict[str, Any] = {}
        for name in layout.order:
            default = PARAMETERS[name].default
            if name in layout.fixed:
                config[name] = layout.fixed[name]
            elif name not in layout.searched:
                config[name] = default
            else:
                searched = layout.searched[name]
                if searched.when is not None and not searched.when.holds(config):
                    config[name] = searched.otherwise
                elif searched.domain.contains(default):
                    config[name] = default
                else:
                    config[name] = searched.domain.representative()
        return {name: config[name] for name in HYPERPARAMETERS}

    def to_data(self) -> dict[str, Any]:
        """The declarative form (plain lists and dicts, YAML/JSON-ready); ``from_data`` rebuilds the space."""
        data: dict[str, Any] = {"name": self.name, "description": self.description}
        data["params"] = _params_data(self.params)
        data["fixed"] = dict(self.fixed)
        if self.start:
            data["start"] = [dict(point) for point in self.start]
        if self.dataset_overrides:
            data["datasets"] = {}
            for dataset, override in self.dataset_overrides.items():
                entry: dict[str, Any] = {"params": _params_data(override.params), "fixed": dict(override.fixed)}
                if override.start is not None:
                    entry["start"] = [dict(point) for point in override.start]
                data["datasets"][dataset] = entry
        return data

    def _checked_layout(self, searched: dict[str, SearchedParameter], fixed: dict[str, Any], path: str) -> Layout:
        _check_overlap(self.name, path, searched, fixed)
        self._check_entries(searched, fixed, path)
        return Layout(dict(searched), dict(fixed), _evaluation_order(self.name, path, searched))

    def _check_entries(self, searched: Mapping[str, SearchedParameter], fixed: Mapping[str, Any], path: str) -> None:
        for name, value in fixed.items():
            _check_name(self.name, f"{path}fixed", name)
            problem = PARAMETERS[name].problem_with(value)
            if problem:
                raise space_error(self.name, f"{path}fixed.{name}", problem)
        for name, parameter in searched.items():
            where = f"{path}params.{name}"
            _check_name(self.name, f"{path}params", name)
            if parameter.name != name:
                raise space_error(self.name, where, f"entry is for parameter {parameter.name!r}")
            problem = parameter.domain.problem_for(PARAMETERS[name])
            if problem:
                raise space_error(self.name, where, problem)
            if parameter.when is not None:
                _check_condition(self.name, where, parameter)


def _check_name(space: str, path: str, name: str) -> None:
    if name not in PARAMETERS:
        raise space_error(space, path, f"unknown parameter {name!r} (known: {', '.join(HYPERPARAMETERS)})")


def _check_overlap(space: str, path: str, searched: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
    for name in fixed:
        if name in searched:
            raise space_error(space, f"{path}fixed.{name}", f"{name} is both searched (params) and fixed")


def _check_condition(space: str, path: str, parameter: SearchedParameter) -> None:
    assert parameter.when is not None  # called for conditional parameters only
    for name, values in parameter.when.requirements:
        where = f"{path}.when.{name}"
        if name not in PARAMETERS:
            raise space_error(
                space, f"{path}.when", f"condition on unknown parameter {name!r} (known: {', '.join(HYPERPARAMETERS)})"
            )
        if name == parameter.name:
            raise space_error(space, where, "a parameter's condition cannot read the parameter itself")
        for value in values:
            problem = PARAMETERS[name].problem_with(value)
            if problem:
                raise space_error(space, where, problem)
    problem = PARAMETERS[parameter.name].problem_with(parameter.otherwise)
    if problem:
        raise space_error(space, f"{path}.otherwise", problem)


def _evaluation_order(space: str, path: str, searched: Mapping[str, SearchedParameter]) -> tuple[str, ...]:
    """Canonical order, each conditional parameter moved after the parameters its condition reads."""
    reads = {
        name: set(parameter.when.parameters) if parameter.when is not None else set() for name, parameter in searched.items()
    }
    order: list[str] = []
    pending = list(HYPERPARAMETERS)
    while pending:
        ready = next((name for name in pending if reads.get(name, set()) <= set(order)), None)
        if ready is None:
            cycle = ", ".join(name for name in pending if reads.get(name))
            raise space_error(space, f"{path}params", f"conditions depend on each other in a cycle: {cycle}")
        order.append(ready)
        pending.remove(ready)
    return tuple(order)


def _params_data(params: Mapping[str, SearchedParameter]) -> dict[str, Any]:
    return {name: parameter.to_data(PARAMETERS[name].default) for name, parameter in params.items()}
