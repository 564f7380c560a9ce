"""Typed pieces of a search space: value domains, conditions, searched parameters.

A domain is what one parameter is searched over: ``IntRange`` (integers low..high,
both included), ``FloatRange`` (floats in [low, high]) or ``Choice`` (categorical).
Each turns into exactly one Optuna distribution under the parameter's canonical
name, so a parameter keeps one distribution for the whole study.

These objects hold already-parsed values; ``problem_for`` says what is wrong
with one against a parameter's ``ParameterInfo`` (``SearchSpace.validate`` asks).
All are frozen and picklable (Ray pickles the define-by-run function with its
searcher's checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from made_core.hyperparameters import ParameterInfo


def same_value(a: Any, b: Any) -> bool:
    """Equality that also requires the same type (so True is not 1 and 1 is not 1.0)."""
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class IntRange:
    """Integers ``low``..``high`` (both included) every ``step``, optionally log-uniform."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def problem_for(self, info: ParameterInfo) -> str | None:
        """What is wrong with this range for ``info``'s parameter, or None."""
        problem = _range_problem("int", int, self.low, self.high, info)
        if problem:
            return problem
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 1:
            return f"step must be a positive integer, got {self.step!r}"
        if self.log and self.step != 1:
            return "log ranges cannot have a step"
        if self.log and self.low < 1:
            return f"log ranges need low >= 1, got low {self.low}"
        if (self.high - self.low) % self.step:
            return f"high - low ({self.high - self.low}) is not a multiple of step {self.step}"
        return None

    def distribution(self) -> optuna.distributions.IntDistribution:
        return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.trial.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        return type(value) is int and self.low <= value <= self.high and (value - self.low) % self.step == 0

    def representative(self) -> int:
        """The middle of the range (geometric middle for log ranges), on the step grid."""
        middle = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        return self.low + self.step * round((middle - self.low) / self.step)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"int": [self.low, self.high]}
        if self.step != 1:
            data["step"] = self.step
        if self.log:
            data["log"] = True
        return data


@dataclass(frozen=True)
class FloatRange:
    """Floats in [``low``, ``high``], uniform, log-uniform (``log``) or on a ``step`` grid."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def problem_for(self, info: ParameterInfo) -> str | None:
        """What is wrong with this range for ``info``'s parameter, or None."""
        problem = _range_problem("float", float, self.low, self.high, info)
        if problem:
            return problem
        if self.log and self.low <= 0:
            return f"log ranges need low > 0, got low {self.low}"
        if self.step is not None:
            if isinstance(self.step, bool) or not isinstance(self.step, float) or not self.step > 0:
                return f"step must be a positive number, got {self.step!r}"
            if self.log:
                return "log ranges cannot have a step"
            steps = (self.high - self.low) / self.step
            if abs(steps - round(steps)) > 1e-8 * max(1.0, steps):
                return f"high - low ({self.high - self.low}) is not a multiple of step {self.step}"
        return None

    def distribution(self) -> optuna.distributions.FloatDistribution:
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.trial.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        if type(value) is not float or not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return abs(steps - round(steps)) <= 1e-8 * max(1.0, steps)

    def representative(self) -> float:
        """The middle of the range (geometric middle for log ranges), on the step grid."""
        middle = math.sqrt(self.low * self.high) if self.log else (self.low + self.high) / 2
        if self.step is None:
            return middle
        return min(self.high, self.low + self.step * round((middle - self.low) / self.step))

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"float": [self.low, self.high]}
        if self.step is not None:
            data["step"] = self.step
        if self.log:
            data["log"] = True
        return data


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (categorical: Optuna treats them as unordered)."""

    values: tuple[Any, ...]

    def problem_for(self, info: ParameterInfo) -> str | None:
        """What is wrong with these choices for ``info``'s parameter, or None."""
        if not self.values:
            return "choice needs at least one value"
        for value in self.values:
            problem = info.problem_with(value)
            if problem:
                return f"choice: {problem}"
        for index, value in enumerate(self.values):
            if any(same_value(value, other) for other in self.values[:index]):
                return f"choice lists {value!r} twice"
        return None

    def distribution(self) -> optuna.distributions.CategoricalDistribution:
        return optuna.distributions.CategoricalDistribution(self.values)

    def suggest(self, trial: optuna.trial.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.values)

    def contains(self, value: Any) -> bool:
        return any(same_value(value, choice) for choice in self.values)

    def representative(self) -> Any:
        """The first listed value."""
        return self.values[0]

    def to_data(self) -> dict[str, Any]:
        return {"choice": list(self.values)}


Domain = IntRange | FloatRange | Choice


@dataclass(frozen=True)
class Condition:
    """``when``: every named parameter must currently hold one of its listed values.

    ``requirements`` pairs a parameter name with the values that satisfy it; the
    condition holds when all pairs are satisfied (AND over parameters, OR over a
    parameter's values).
    """

    requirements: tuple[tuple[str, tuple[Any, ...]], ...]

    @property
    def parameters(self) -> tuple[str, ...]:
        """The parameters this condition reads."""
        return tuple(name for name, _ in self.requirements)

    def holds(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` (which must already hold the read parameters) satisfies it."""
        return all(any(same_value(config[name], value) for value in values) for name, values in self.requirements)

    def to_data(self) -> dict[str, Any]:
        return {name: values[0] if len(values) == 1 else list(values) for name, values in self.requirements}


@dataclass(frozen=True)
class SearchedParameter:
    """A parameter Optuna suggests from ``domain``, under its canonical ``name``.

    With a ``when`` condition it is suggested only for trials where the condition
    holds; in the other trials it takes ``otherwise`` (the parameter's default
    unless the space says otherwise), so every configuration still has a value.
    """

    name: str
    domain: Domain
    when: Condition | None = None
    otherwise: Any = None

    def resolve(self, trial: optuna.trial.Trial, config: Mapping[str, Any]) -> Any:
        """This trial's value: suggested if the condition holds for ``config``, else ``otherwise``."""
        if self.when is None or self.when.holds(config):
            return self.domain.suggest(trial, self.name)
        return self.otherwise

    def to_data(self, default: Any) -> dict[str, Any]:
        """The declarative form; ``otherwise`` is written only where it differs from ``default``."""
        data = self.domain.to_data()
        if self.when is not None:
            data["when"] = self.when.to_data()
            if not same_value(self.otherwise, default):
                data["otherwise"] = self.otherwise
        return data


def _range_problem(kind: str, value_type: type, low: Any, high: Any, info: ParameterInfo) -> str | None:
    """What every range shares: the parameter takes this kind, both bounds are legal values, low <= high."""
    if info.type is not value_type:
        return _wrong_kind(kind, info)
    for label, bound in (("low", low), ("high", high)):
        problem = info.problem_with(bound)
        if problem:
            return f"{label} bound: {problem}"
    if low > high:
        return f"low {low} > high {high}"
    return None


def _wrong_kind(kind: str, info: ParameterInfo) -> str:
    if info.type is int:
        takes, allowed = "integers", "int: [low, high] or choice: [...]"
    elif info.type is float:
        takes, allowed = "numbers", "float: [low, high] or choice: [...]"
    else:
        takes, allowed = info.domain_text(), "choice: [...]"
    return f"{info.name} takes {takes}: use {allowed}, not {kind}:"
