"""A sweep's settings from a YAML config file or Python keywords, checked against the CLI's parser.

The parser of ``search.run`` is the one place that names every setting, its type and its
default: a config file (``--config sweep.yaml``) and ``search.sweep(**options)`` use its
destination names (``num_samples``; dashes allowed too), so every way to start a sweep
accepts the same settings and refuses the same mistakes.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class UsageError(ValueError):
    """Bad input for a sweep: reported as one line (exit status 2 on the command line)."""


# Options of the parser that are not settings of a sweep.
NOT_SETTINGS = frozenset({"help", "config", "verbose", "quiet"})


def setting_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Destination name -> argparse action for every setting of ``parser``."""
    return {action.dest: action for action in parser._actions if action.dest not in NOT_SETTINGS}


def defaults(parser: argparse.ArgumentParser) -> dict[str, Any]:
    return {dest: action.default for dest, action in setting_actions(parser).items()}


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))


def _checked_value(action: argparse.Action, value: Any, where: str) -> Any:
    """``value`` converted to the type the option takes; UsageError when it cannot be."""
    if value is None:
        if action.required or _is_flag(action):
            raise UsageError(f"{where}: null is not allowed")
        return None
    if isinstance(action, argparse._AppendAction):  # a repeatable option: one text or a list of them
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise UsageError(f"{where}: expected text or a list of texts, got {type(value).__name__} {value!r}")
        return list(items)
    if _is_flag(action):
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false, got {value!r}")
        return value
    kind = action.type
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:  # a text option; a number is its text (``time_budget: 90``)
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if not ok:
        expected = "an integer" if kind is int else "a number" if kind is float else "text"
        raise UsageError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")
    converted = kind(value) if kind in (int, float) else str(value)
    if action.choices is not None and converted not in action.choices:
        raise UsageError(f"{where}: {converted!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


def check_settings(parser: argparse.ArgumentParser, values: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """``values`` keyed by destination name and converted; UsageError names the first bad one."""
    actions = setting_actions(parser)
    checked: dict[str, Any] = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise UsageError(f"{origin}: unknown setting {key!r} (settings are the flags of --help, e.g. num_samples)")
        checked[dest] = _checked_value(actions[dest], value, f"{origin}: {key}")
    return checked


def read_config(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The settings in a YAML (or JSON) mapping file; UsageError for a missing, malformed or wrong file."""
    file = Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--config {str(file)!r} cannot be read: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"--config {str(file)!r}: YAML syntax error{where}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise UsageError(f"--config {str(file)!r}: expected a mapping of settings, got {type(data).__name__}")
    return check_settings(parser, data, f"--config {file}")
