"""The MADE hyperparameter vocabulary: the one place each training hyperparameter is declared.

Name, type, allowed values or bounds, default and a one-line help for each, and the rules
between them. ``TrainConfig``, the model, the search spaces' validation, the command lines'
flags and the trainable all derive from this module, so a new hyperparameter is added here
once. It imports nothing heavy (no torch), so ``spaces`` can use it cheaply.

Every trial configuration is a flat dict with exactly the keys of
``HYPERPARAMETERS`` (in that order when order matters, e.g. table columns), each
holding a value of the parameter's ``type`` inside its domain. Search spaces
choose values only for these names; whatever a space does not search or fix
takes the ``default`` below.

The defaults are one deliberate choice, not the plain MADE: one layer of 500 units
trained as an ensemble of 8 order-agnostic masks with the direct input->output
connection, Adam at 1e-3 (on dna it reaches a test NLL of about 83.8 where the plain
natural-order MADE stops near 85-90). The lr is halved whenever validation stalls for a third of
the patience (``lr_decay``; the evidence is results/ablation_lr_decay.md).

- ``num_masks``: K >= 1 connectivity masks cycled one per minibatch, K = 1 being
  the plain MADE; ``MASK_SAMPLING`` (0) means a fresh mask every minibatch, the
  paper's "mask sampling".
- ``learning_rate``, ``momentum`` and ``weight_decay`` are the ``lr``,
  ``momentum`` and ``weight_decay`` arguments of the ``torch.optim`` optimizer
  named by ``optimizer`` (so Adadelta's reference learning rate is 1.0, Adam's
  1e-3). ``momentum`` is used by SGD only. ``lr_decay`` multiplies that lr on a validation
  plateau (``made_core.train.Trainer``); 1.0 keeps it constant.
"""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass
from typing import Any

MASK_SAMPLING = 0
"""``num_masks`` value meaning a fresh mask every minibatch (the paper's mask sampling)."""

ORDERINGS: tuple[str, ...] = ("natural", "random", "agnostic")
ACTIVATIONS: tuple[str, ...] = ("relu", "tanh")
OPTIMIZERS: tuple[str, ...] = ("adam", "adagrad", "adadelta", "sgd")


@dataclass(frozen=True)
class ParameterInfo:
    """One canonical hyperparameter.

    ``type`` is int, float, bool or str. bool and str parameters take one of
    ``choices``; int and float parameters take a number between ``minimum`` and
    ``maximum`` (None: unbounded), exclusive where ``exclusive_minimum`` /
    ``exclusive_maximum`` say so.
    """

    name: str
    type: type
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False

    @property
    def is_numeric(self) -> bool:
        """True for int and float parameters (those that take ranges)."""
        return self.type in (int, float)

    def requirement(self) -> str:
        """What a value must be, e.g. ``> 0`` or ``one of adam, sgd`` (for error messages)."""
        if self.choices is not None:
            return "one of " + ", ".join(str(choice) for choice in self.choices)
        text = self.domain_text()
        return text.removeprefix(self.type.__name__).strip() or f"a {self.type.__name__}"

    def problem_for_setting(self, value: Any) -> str | None:
        """``problem_with`` after ``normalize``, as ``"<name> must be <requirement>, got <value>"``."""
        if self.problem_with(self.normalize(value)) is None:
            return None
        return f"{self.name} must be {self.requirement()}, got {value!r}"

    def domain_text(self) -> str:
        """The allowed values in words, e.g. ``int >= 1`` or ``one of adam, sgd``."""
        if self.choices is not None:
            return "one of " + ", ".join(_show(choice) for choice in self.choices)
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"{'<' if self.exclusive_maximum else '<='} {self.maximum:g}")
        return f"{self.type.__name__} " + " and ".join(parts) if parts else self.type.__name__

    def problem_with(self, value: Any) -> str | None:
        """Why ``value`` is not a valid value of this parameter, or None if it is.

        Exact types: bool is not an int here, an int is accepted for a float
        parameter only after ``normalize``.
        """
        if self.type is bool:
            if not isinstance(value, bool):
                return f"expected true or false, got {_show(value)} ({type(value).__name__})"
            return None
        if self.type is str:
            choices = self.choices or ()
            if value not in choices:
                return f"unknown value {_show(value)} (allowed: {', '.join(choices)})"
            return None
        if self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            return f"expected an integer, got {_show(value)} ({type(value).__name__})"
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, float):
                return f"expected a number, got {_show(value)} ({type(value).__name__})"
            if not math.isfinite(value):
                return f"expected a finite number, got {_show(value)}"
        if not self._within_bounds(value):
            return f"{_show(value)} is outside the allowed range ({self.domain_text()})"
        return None

    def normalize(self, value: Any) -> Any:
        """``value`` in this parameter's Python type where that loses nothing.

        Integers become floats for float parameters and integral objects (such as
        numpy integers) plain ints for int parameters; anything else is returned
        unchanged for ``problem_with`` to judge.
        """
        if isinstance(value, bool):
            return value
        if self.type is float and isinstance(value, numbers.Real):
            return float(value)
        if self.type is int and isinstance(value, numbers.Integral):
            return int(value)
        return value

    def _within_bounds(self, value: float) -> bool:
        if self.minimum is not None:
            if value < self.minimum or (self.exclusive_minimum and value == self.minimum):
                return False
        if self.maximum is not None:
            if value > self.maximum or (self.exclusive_maximum and value == self.maximum):
                return False
        return True


def _show(value: Any) -> str:
    """A value as a space file writes it: strings quoted, booleans true/false, numbers bare."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


PARAMETERS: dict[str, ParameterInfo] = {
    info.name: info
    for info in (
        ParameterInfo("hidden_layers", int, 1, "Depth: the number of hidden layers.", minimum=1),
        ParameterInfo("hidden_units", int, 500, "Width: units in every hidden layer (all layers equally wide).", minimum=1),
        ParameterInfo(
            "num_masks",
            int,
            8,
            "Connectivity masks cycled one per minibatch: 1 is the plain MADE, K > 1 is "
            "connectivity-agnostic training with K masks, 0 (MASK_SAMPLING) draws a fresh mask "
            "every minibatch (the paper's mask sampling). Convention shared with made_core.",
            minimum=0,
        ),
        ParameterInfo(
            "ordering",
            str,
            "agnostic",
            "Input ordering strategy: natural (1..D), random (one fixed random permutation), "
            "agnostic (every mask draws its own ordering; with num_masks=1 this is one random ordering).",
            choices=ORDERINGS,
        ),
        ParameterInfo(
            "direct_connection",
            bool,
            True,
            "Add a direct input-to-output connection, masked strictly lower-triangular in ordering space.",
            choices=(True, False),
        ),
        ParameterInfo("activation", str, "relu", "Hidden-unit nonlinearity.", choices=ACTIVATIONS),
        ParameterInfo("optimizer", str, "adam", "The torch.optim optimizer.", choices=OPTIMIZERS),
        ParameterInfo(
            "learning_rate",
            float,
            1e-3,
            "The optimizer's lr (torch.optim semantics: Adam ~1e-3, Adagrad ~1e-2, Adadelta 1.0).",
            minimum=0.0,
            exclusive_minimum=True,
        ),
        ParameterInfo(
            "momentum",
            float,
            0.0,
            "SGD momentum; ignored by the other optimizers.",
            minimum=0.0,
            maximum=1.0,
            exclusive_maximum=True,
        ),
        ParameterInfo("weight_decay", float, 0.0, "L2 penalty: the optimizer's weight_decay argument.", minimum=0.0),
        ParameterInfo(
            "lr_decay",
            float,
            0.5,
            "Learning-rate decay on a plateau: the optimizer's lr is multiplied by this whenever the "
            "validation NLL has not improved for a third of the early-stopping patience (1.0: constant lr).",
            minimum=0.0,
            maximum=1.0,
            exclusive_minimum=True,
        ),
        ParameterInfo("batch_size", int, 100, "Training minibatch size.", minimum=1),
    )
}
"""Every canonical hyperparameter by name, in canonical order."""

HYPERPARAMETERS: tuple[str, ...] = tuple(PARAMETERS)
"""The canonical hyperparameter names in canonical order (config keys, table columns)."""

DEFAULTS: dict[str, Any] = {name: info.default for name, info in PARAMETERS.items()}
"""The default configuration (see the module's docstring for why these values)."""


def ensemble_size_allowed(size: int, num_masks: int) -> bool:
    """The rule between an evaluation ensemble and its model: 1 to K masks of a K-mask model,
    any positive number of a mask-sampling model."""
    return size >= 1 and (num_masks == MASK_SAMPLING or size <= num_masks)


def hidden_sizes_problem(hidden_sizes: Any) -> str | None:
    """Why ``hidden_sizes`` (one width per hidden layer, the model's form of hidden_layers x
    hidden_units) is not a valid architecture, or None."""
    sizes = list(hidden_sizes)
    if not sizes or any(PARAMETERS["hidden_units"].problem_for_setting(h) for h in sizes):
        return f"hidden_sizes must be one or more widths, each {PARAMETERS['hidden_units'].requirement()}, got {sizes}"
    return None


def capped_ensemble_size(size: int, num_masks: int) -> int:
    """``size`` masks, or all K of a K-mask model that has fewer (a sweep-wide size per trial)."""
    return size if num_masks == MASK_SAMPLING else min(size, num_masks)


def add_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """Add ``--<name>`` flags (dashes for underscores) for these hyperparameters to a parser:
    types, choices, defaults and help all from ``PARAMETERS``. A bool gets ``--x``/``--no-x``."""
    for name in names:
        info = PARAMETERS[name]
        flag = "--" + name.replace("_", "-")
        help_text = f"{info.doc} (default: %(default)s)"
        if info.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=info.default, help=help_text)
        elif info.choices is not None:
            parser.add_argument(flag, choices=info.choices, default=info.default, help=help_text)
        else:
            parser.add_argument(flag, type=info.type, default=info.default, help=help_text)
