"""Finding spaces: built-in names and space files (.py, .yaml/.yml, .json)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from spaces.builtin import BUILTIN_SPACES
from spaces.errors import SpaceError
from spaces.space import SearchSpace

SPACE_FILE_SUFFIXES = (".py", ".yaml", ".yml", ".json")


def available_spaces() -> list[str]:
    """The built-in space names, sorted."""
    return sorted(BUILTIN_SPACES)


def get_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """A built-in space by name, or the space defined in a file.

    A string that names a built-in space gets it; anything ending in a space-file
    suffix, containing a path separator or naming an existing file is read as a
    file. Raises ``SpaceError`` for unknown names, missing or malformed files and
    invalid spaces.
    """
    text = os.fspath(name_or_path)
    if text in BUILTIN_SPACES:
        return SearchSpace.from_data(BUILTIN_SPACES[text], default_name=text, source="builtin")
    if text.endswith(SPACE_FILE_SUFFIXES) or "/" in text or os.sep in text or Path(text).is_file():
        return load_space_file(text)
    raise SpaceError(
        f"unknown search space {text!r}: the built-in spaces are {', '.join(available_spaces())}; "
        f"or give the path of a {', '.join(SPACE_FILE_SUFFIXES)} file"
    )


def load_space_file(path: str | os.PathLike[str]) -> SearchSpace:
    """The space in ``path``: YAML or JSON holding the declarative form, or Python defining ``SPACE = {...}``.

    The space's name defaults to the file's stem. Error messages start with the path.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise SpaceError(f"search space file {str(file)!r} not found")
    if file.suffix not in SPACE_FILE_SUFFIXES:
        raise SpaceError(
            f"search space file {str(file)!r}: unsupported type {file.suffix!r} (use one of {', '.join(SPACE_FILE_SUFFIXES)})"
        )
    data = _read(file)
    try:
        return SearchSpace.from_data(data, default_name=file.stem, source=str(file))
    except SpaceError as error:
        raise SpaceError(f"{file}: {error}") from None


def _read(file: Path) -> Any:
    if file.suffix == ".py":
        return _read_python(file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpaceError(f"search space file {str(file)!r} cannot be read: {error}") from None
    if file.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise SpaceError(
                f"search space file {str(file)!r}: JSON syntax error at line {error.lineno}, column {error.colno}: {error.msg}"
            ) from None
    try:
        return yaml.load(text, Loader=SpaceYamlLoader)
    except yaml.YAMLError as error:
        raise SpaceError(f"search space file {str(file)!r}: YAML syntax error{_yaml_problem(error)}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """`` at line L, column C: problem`` on one line where PyYAML says where, else the whole message."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or problem is None:
        return f": {error}"
    context = getattr(error, "context", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}: " + (f"{context}: {problem}" if context else problem)


def _read_python(file: Path) -> Mapping[str, Any]:
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"_made_search_space_{digest}", file)
    if spec is None or spec.loader is None:
        raise SpaceError(f"search space file {str(file)!r} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's file: report whatever it raised
        raise SpaceError(f"search space file {str(file)!r} failed to run: {type(error).__name__}: {error}") from error
    if not hasattr(module, "SPACE"):
        raise SpaceError(f"search space file {str(file)!r} defines no SPACE (a dict in the declarative format)")
    if not isinstance(module.SPACE, Mapping):
        raise SpaceError(f"search space file {str(file)!r}: SPACE must be a dict, got {type(module.SPACE).__name__}")
    return module.SPACE


class SpaceYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float the way YAML 1.2 and JSON do (PyYAML alone reads text)."""


SpaceYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
