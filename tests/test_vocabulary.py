"""Every consumer of a hyperparameter agrees with its one declaration in made_core.hyperparameters.

Adding a hyperparameter there is all it takes for TrainConfig's default and validation, the
model's default, the training CLI's flag and the spaces' validation to follow; these tests
fail when one of them restates a name, default or allowed value by hand and drifts.
"""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys

import optuna
import pytest

import spaces
from made_core import hyperparameters as vocabulary
from made_core.config import HYPERPARAMETER_FIELDS, TrainConfig
from made_core.hyperparameters import DEFAULTS, PARAMETERS
from made_core.model import ACTIVATION_FUNCTIONS, MADE
from made_core.train_cli import build_parser


def test_train_config_takes_every_default_from_the_vocabulary():
    config = TrainConfig()
    assert set(HYPERPARAMETER_FIELDS) == set(PARAMETERS) - {"hidden_layers", "hidden_units"}
    for name in HYPERPARAMETER_FIELDS:
        assert getattr(config, name) == DEFAULTS[name], name
    assert config.hidden_sizes == (DEFAULTS["hidden_units"],) * DEFAULTS["hidden_layers"]
    assert TrainConfig.from_hyperparameters(DEFAULTS) == config


@pytest.mark.parametrize("name", [n for n in HYPERPARAMETER_FIELDS if PARAMETERS[n].type is not bool])
def test_train_config_refuses_what_the_vocabulary_refuses(name):
    info = PARAMETERS[name]
    bad = "no-such-value" if info.type is str else info.minimum - 1  # every numeric one has a minimum
    with pytest.raises(ValueError, match=f"{name} must be {info.requirement()}"):
        TrainConfig(**{name: bad})


def test_model_defaults_are_the_vocabulary_defaults():
    signature = inspect.signature(MADE)
    for name in ("num_masks", "ordering", "direct_connection", "activation"):
        assert signature.parameters[name].default == DEFAULTS[name], name
    assert set(ACTIVATION_FUNCTIONS) == set(vocabulary.ACTIVATIONS)


def test_training_cli_flags_follow_the_vocabulary():
    parser = build_parser()
    args = parser.parse_args(["--dataset", "dna"])
    actions = {action.dest: action for action in parser._actions}
    for name in HYPERPARAMETER_FIELDS:
        info = PARAMETERS[name]
        assert getattr(args, name) == info.default, name
        action = actions[name]
        assert action.choices == info.choices or (info.type is bool and isinstance(action, argparse.BooleanOptionalAction)), name
        assert info.doc in action.help
    assert args.hidden == [DEFAULTS["hidden_units"]] * DEFAULTS["hidden_layers"]


def test_spaces_use_the_vocabulary_and_fill_its_defaults():
    assert spaces.PARAMETERS is PARAMETERS and spaces.DEFAULTS is DEFAULTS
    assert spaces.HYPERPARAMETERS == tuple(PARAMETERS)
    space = spaces.SearchSpace.from_data({"params": {"hidden_units": {"choice": [16, 32]}}}, default_name="narrow")
    trial = optuna.create_study().ask()
    config = space.define_by_run(None)(trial)
    assert {name: value for name, value in config.items() if name != "hidden_units"} == {
        name: value for name, value in DEFAULTS.items() if name != "hidden_units"
    }


def test_the_vocabulary_imports_without_torch():
    code = "import made_core.hyperparameters, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
