"""Tests for spaces: built-in spaces through real Optuna studies, file loading, validation errors."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from spaces import (
    DEFAULTS,
    HYPERPARAMETERS,
    MASK_SAMPLING,
    PARAMETERS,
    SearchSpace,
    SpaceError,
    available_spaces,
    get_space,
    load_space_file,
)
from spaces.domains import Choice, FloatRange

optuna.logging.set_verbosity(optuna.logging.WARNING)

CANONICAL = (
    "hidden_layers",
    "hidden_units",
    "num_masks",
    "ordering",
    "direct_connection",
    "activation",
    "optimizer",
    "learning_rate",
    "momentum",
    "weight_decay",
    "lr_decay",
    "batch_size",
)
BUILTINS = ("default", "paper", "quick")


def run_study(space: SearchSpace, dataset: str | None, trials: int = 20, seed: int = 0):
    """Ask a seeded TPE study ``trials`` times; yield (optuna trial, config) after telling a random value."""
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    define_by_run = space.define_by_run(dataset)
    objective = random.Random(seed)
    results = []
    for _ in range(trials):
        trial = study.ask()
        config = define_by_run(trial)
        study.tell(trial, objective.uniform(80.0, 100.0))
        results.append((study.trials[-1], config))
    return results


# --- the canonical parameters -------------------------------------------------------------


def test_canonical_names_order_and_defaults():
    assert HYPERPARAMETERS == CANONICAL
    assert tuple(PARAMETERS) == CANONICAL
    assert MASK_SAMPLING == 0
    for name, info in PARAMETERS.items():
        assert info.name == name
        assert info.doc
        assert info.problem_with(info.default) is None, name
    # The one default (made_core.hyperparameters): 8 order-agnostic masks with the direct connection.
    assert DEFAULTS["num_masks"] == 8 and DEFAULTS["ordering"] == "agnostic" and DEFAULTS["optimizer"] == "adam"


def test_parameter_domains():
    assert PARAMETERS["hidden_layers"].problem_with(0)
    assert PARAMETERS["hidden_layers"].problem_with(True)  # bool is not an int here
    assert PARAMETERS["num_masks"].problem_with(0) is None
    assert PARAMETERS["momentum"].problem_with(1.0)
    assert PARAMETERS["momentum"].problem_with(0.0) is None
    assert PARAMETERS["learning_rate"].problem_with(0.0)
    assert "natural" in PARAMETERS["ordering"].problem_with("foo")
    assert PARAMETERS["direct_connection"].problem_with(1)


# --- built-in spaces through Optuna ---------------------------------------------------------


def test_available_spaces():
    assert available_spaces() == sorted(BUILTINS)


@pytest.mark.parametrize("dataset", [None, "dna", "mnist"])
@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_space_in_a_study_gives_complete_valid_configs(name: str, dataset: str | None):
    space = get_space(name)
    assert space.name == name and space.description
    layout = space.layout(dataset)
    distributions = space.distributions(dataset)
    for trial, config in run_study(space, dataset):
        assert tuple(config) == HYPERPARAMETERS
        for key, value in config.items():
            assert PARAMETERS[key].problem_with(value) is None, (key, value)
        # Optuna records exactly the suggested parameters, under canonical names.
        assert set(trial.params) <= set(space.searched_parameters(dataset))
        for key, value in trial.params.items():
            assert config[key] == value
            assert layout.searched[key].domain.contains(value), (key, value)
            assert trial.distributions[key] == distributions[key]
        for key, value in layout.fixed.items():
            assert config[key] == value
        for key in set(HYPERPARAMETERS) - set(layout.searched) - set(layout.fixed):
            assert config[key] == PARAMETERS[key].default


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_searches_vary_the_papers_subjects(name: str):
    searched = get_space(name).searched_parameters("dna")
    for key in ("num_masks", "ordering", "learning_rate"):
        assert key in searched
    masks = get_space(name).layout("dna").searched["num_masks"].domain
    assert isinstance(masks, Choice) and MASK_SAMPLING in masks.values
    configs = [config for _, config in run_study(get_space(name), "dna")]
    assert len({config["num_masks"] for config in configs}) > 1
    assert len({config["ordering"] for config in configs}) > 1


def test_paper_space_contents():
    space = get_space("paper")
    dna, mnist = space.layout("dna"), space.layout("mnist")
    assert dna.fixed["hidden_units"] == 500 and dna.fixed["batch_size"] == 100
    assert dna.fixed["activation"] == "relu"
    assert mnist.searched["hidden_units"].domain.values == (500, 1000, 2000, 4000, 8000)
    assert "hidden_units" not in mnist.fixed
    assert dna.searched["num_masks"].domain.values == (1, 2, 4, 8, 16, 32, 0)
    assert set(dna.searched["optimizer"].domain.values) == {"adagrad", "adadelta", "sgd"}
    assert set(dna.searched["direct_connection"].domain.values) == {True, False}


def test_default_space_is_cpu_sized_and_mnist_drops_narrow_nets():
    space = get_space("default")
    dna, mnist = space.layout("dna"), space.layout("mnist")
    assert max(dna.searched["hidden_units"].domain.values) <= 1000
    assert min(mnist.searched["hidden_units"].domain.values) >= 500
    assert max(mnist.searched["hidden_units"].domain.values) <= 2000  # a 2 x 8000 net is GPU work
    assert dna.searched["hidden_layers"].domain.high <= 2
    # MNIST starts from its own wide plain MADE; the UCI sets from the base points.
    assert [point["hidden_units"] for point in space.start_points("mnist")] == [2000]
    assert [(point["hidden_units"], point["num_masks"]) for point in space.start_points("dna")] == [(500, 32), (1000, 8)]
    from made_core.hyperparameters import DEFAULTS

    # The library's defaults, wider (results/ablation_width.md), with weight decay 1e-4
    # (results/ablation_start_point_depth_wd.md).
    wide = space.start_points("dna")[1]
    assert (wide["hidden_units"], wide["weight_decay"]) == (1000, 1e-4)
    as_defaults = {**wide, "hidden_units": DEFAULTS["hidden_units"], "weight_decay": DEFAULTS["weight_decay"]}
    assert as_defaults.items() <= DEFAULTS.items()
    assert 0.0 in dna.searched["weight_decay"].domain.values  # no weight decay is possible
    assert space.distributions("mnist")["hidden_units"] != space.distributions("dna")["hidden_units"]
    assert space.layout("binarized_mnist") == mnist  # both names of MNIST
    assert space.layout("some_other_set") == space.layout(None)


def test_dataset_override_changes_only_that_dataset():
    space = get_space("paper")
    mnist_units = {config["hidden_units"] for _, config in run_study(space, "mnist", trials=25)}
    dna_units = {config["hidden_units"] for _, config in run_study(space, "dna", trials=25)}
    assert dna_units == {500}
    assert len(mnist_units) > 1 and mnist_units <= {500, 1000, 2000, 4000, 8000}


def test_conditional_parameters_follow_the_optimizer():
    space = get_space("paper")
    seen = set()
    for trial, config in run_study(space, "dna", trials=40):
        optimizer = config["optimizer"]
        seen.add(optimizer)
        if optimizer == "sgd":
            assert "momentum" in trial.params and config["momentum"] in (0.0, 0.9)
        else:
            assert "momentum" not in trial.params and config["momentum"] == 0.0
        if optimizer == "adadelta":
            assert "learning_rate" not in trial.params and config["learning_rate"] == 1.0
        else:
            assert "learning_rate" in trial.params and 0.005 <= config["learning_rate"] <= 0.1
    assert seen == {"adagrad", "adadelta", "sgd"}


def test_conditions_may_read_fixed_parameters():
    space = SearchSpace.from_data(
        {
            "params": {"momentum": {"float": [0.5, 0.9], "when": {"optimizer": "sgd"}}},
            "fixed": {"optimizer": "sgd"},
            "datasets": {"other": {"fixed": {"optimizer": "adam"}}},
        },
        default_name="fixed-condition",
    )
    assert all(0.5 <= config["momentum"] <= 0.9 for _, config in run_study(space, None, trials=5))
    assert all(config["momentum"] == 0.0 for _, config in run_study(space, "other", trials=5))


@pytest.mark.parametrize("dataset", [None, "dna", "mnist"])
@pytest.mark.parametrize("name", BUILTINS)
def test_default_config_lies_in_the_space(name: str, dataset: str | None):
    space = get_space(name)
    config = space.default_config(dataset)
    layout = space.layout(dataset)
    assert tuple(config) == HYPERPARAMETERS
    for key, value in config.items():
        assert PARAMETERS[key].problem_with(value) is None
        parameter = layout.searched.get(key)
        if parameter is not None and (parameter.when is None or parameter.when.holds(config)):
            assert parameter.domain.contains(value), (key, value)


@pytest.mark.parametrize("name", BUILTINS)
def test_to_data_round_trips(name: str, tmp_path: Path):
    space = get_space(name)
    assert SearchSpace.from_data(space.to_data(), default_name="unused") == space
    file = tmp_path / "dumped.yaml"
    file.write_text(yaml.safe_dump(space.to_data()))
    loaded = get_space(str(file))
    assert loaded.name == name and loaded.source == str(file)
    assert (loaded.params, loaded.fixed, loaded.dataset_overrides) == (
        space.params,
        space.fixed,
        space.dataset_overrides,
    )


def test_define_by_run_pickles():
    define_by_run = get_space("paper").define_by_run("mnist")
    restored = pickle.loads(pickle.dumps(define_by_run))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    assert tuple(restored(study.ask())) == HYPERPARAMETERS
    assert "paper" in repr(define_by_run) and "mnist" in repr(define_by_run)


# --- Ray Tune's OptunaSearch ------------------------------------------------------------------


def test_ray_optuna_search_accepts_the_function_without_a_running_ray(tmp_path: Path):
    from ray.tune.search.optuna import OptunaSearch

    def searcher() -> OptunaSearch:
        return OptunaSearch(
            space=get_space("paper").define_by_run("mnist"),
            metric="valid_nll",
            mode="min",
            sampler=optuna.samplers.TPESampler(seed=0),
        )

    search = searcher()
    config = search.suggest("t1")
    assert config is not None and set(config) == set(HYPERPARAMETERS)
    assert all(PARAMETERS[key].problem_with(value) is None for key, value in config.items())
    search.on_trial_complete("t1", {"valid_nll": 90.0})
    # Ray checkpoints the searcher with pickle, define-by-run function included.
    search.save(str(tmp_path / "searcher.pkl"))
    restored = searcher()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert set(restored.suggest("t2") or {}) == set(HYPERPARAMETERS)


# --- space files --------------------------------------------------------------------------------

MINE_YAML = """\
description: tiny space for file tests
params:
  hidden_layers: {int: [1, 2]}
  hidden_units: {choice: [16, 32]}
  learning_rate: {float: [1e-3, 3.0e-2], log: true}
  num_masks: {choice: [1, 4, 0]}
  optimizer: {choice: [adam, sgd]}
  momentum: {float: [0.0, 0.95], when: {optimizer: sgd}}
fixed: {activation: relu, direct_connection: false}
datasets:
  mnist: {params: {hidden_units: {choice: [500, 1000]}}}
"""

MINE_DATA: dict[str, Any] = {
    "description": "tiny space for file tests",
    "params": {
        "hidden_layers": {"int": [1, 2]},
        "hidden_units": {"choice": [16, 32]},
        "learning_rate": {"float": [1e-3, 3e-2], "log": True},
        "num_masks": {"choice": [1, 4, 0]},
        "optimizer": {"choice": ["adam", "sgd"]},
        "momentum": {"float": [0.0, 0.95], "when": {"optimizer": "sgd"}},
    },
    "fixed": {"activation": "relu", "direct_connection": False},
    "datasets": {"mnist": {"params": {"hidden_units": {"choice": [500, 1000]}}}},
}


def write_space_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "yaml": tmp_path / "mine.yaml",
        "yml": tmp_path / "mine_yml.yml",
        "json": tmp_path / "mine_json.json",
        "py": tmp_path / "mine_py.py",
    }
    files["yaml"].write_text(MINE_YAML)
    files["yml"].write_text(MINE_YAML)
    files["json"].write_text(json.dumps(MINE_DATA))
    files["py"].write_text(f"SPACE = {MINE_DATA!r}\n")
    return files


@pytest.mark.parametrize("kind", ["yaml", "yml", "json", "py"])
def test_space_files_load(kind: str, tmp_path: Path):
    file = write_space_files(tmp_path)[kind]
    space = get_space(str(file))
    assert space.name == file.stem  # no name in the file: the stem
    assert space.source == str(file)
    reference = SearchSpace.from_data(MINE_DATA, default_name="reference")
    assert (space.params, space.fixed, space.dataset_overrides) == (
        reference.params,
        reference.fixed,
        reference.dataset_overrides,
    )
    learning_rate = space.layout().searched["learning_rate"].domain
    assert isinstance(learning_rate, FloatRange) and learning_rate.low == 1e-3  # YAML's 1e-3 is a number
    for trial, config in run_study(space, "mnist", trials=12):
        assert tuple(config) == HYPERPARAMETERS
        assert config["hidden_units"] in (500, 1000)
        assert config["activation"] == "relu" and config["direct_connection"] is False
        assert ("momentum" in trial.params) == (config["optimizer"] == "sgd")


def test_get_space_accepts_path_objects_and_names_from_files(tmp_path: Path):
    file = tmp_path / "named.json"
    file.write_text(json.dumps({"name": "my-sweep", "params": {}}))
    space = get_space(file)
    assert space.name == "my-sweep"
    assert space.default_config() == DEFAULTS
    assert load_space_file(file) == space


# --- invalid spaces ---------------------------------------------------------------------------------


def bad(params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Space data named 'bad' with ``params`` (default: none) and any other top-level entries."""
    data: dict[str, Any] = {"name": "bad", "params": params or {}}
    data.update(extra)
    return data


def case(case_id: str, data: dict[str, Any], *fragments: str) -> Any:
    """One invalid space and the fragments its error message must contain."""
    return pytest.param(data, fragments, id=case_id)


SGD_MOMENTUM = {"float": [0.0, 0.9], "when": {"optimizer": "sgd"}}

INVALID_SPACES = [
    case("unknown parameter", bad({"hidden_unitz": {"choice": [1]}}), "params", "unknown parameter 'hidden_unitz'"),
    case("unknown fixed parameter", bad(fixed={"dropout": 0.5}), "fixed", "unknown parameter 'dropout'"),
    case(
        "unknown choice",
        bad({"ordering": {"choice": ["natural", "foo"]}}),
        "params.ordering",
        "unknown value 'foo'",
        "natural, random, agnostic",
    ),
    case("unknown fixed value", bad(fixed={"optimizer": "rmsprop"}), "fixed.optimizer", "unknown value 'rmsprop'"),
    case("low above high", bad({"hidden_layers": {"int": [3, 1]}}), "params.hidden_layers", "low 3 > high 1"),
    case("float low above high", bad({"learning_rate": {"float": [0.1, 0.01]}}), "low 0.1 > high 0.01"),
    case(
        "zero log bound",
        bad({"weight_decay": {"float": [0.0, 1e-3], "log": True}}),
        "params.weight_decay",
        "log ranges need low > 0",
    ),
    case(
        "zero int log bound",
        bad({"num_masks": {"int": [0, 32], "log": True}}),
        "params.num_masks",
        "log ranges need low >= 1",
    ),
    case(
        "negative bound",
        bad({"learning_rate": {"float": [-1.0, 0.1]}}),
        "params.learning_rate",
        "low bound",
        "outside the allowed range (float > 0)",
    ),
    case(
        "bound outside domain",
        bad({"momentum": {"float": [0.0, 1.0]}}),
        "params.momentum",
        "high bound",
        "float >= 0 and < 1",
    ),
    case("float range for an int", bad({"hidden_units": {"float": [10, 20]}}), "hidden_units takes integers", "float:"),
    case("range for a categorical", bad({"ordering": {"int": [1, 2]}}), "ordering takes one of", "choice: [...]"),
    case("non-integer bound", bad({"hidden_units": {"int": [10.5, 20]}}), "params.hidden_units", "expected an integer"),
    case("string bound", bad({"learning_rate": {"float": ["small", 0.1]}}), "expected a number, got 'small'"),
    case("wrong fixed type", bad(fixed={"batch_size": "100"}), "fixed.batch_size", "expected an integer, got '100'"),
    case("wrong bool", bad(fixed={"direct_connection": "yes"}), "fixed.direct_connection", "expected true or false"),
    case("bool for an int", bad(fixed={"hidden_layers": True}), "fixed.hidden_layers", "expected an integer"),
    case("empty choice", bad({"hidden_units": {"choice": []}}), "params.hidden_units", "at least one value"),
    case("duplicate choice", bad({"hidden_units": {"choice": [16, 16]}}), "lists 16 twice"),
    case("step not dividing", bad({"hidden_units": {"int": [100, 1000], "step": 400}}), "not a multiple of step 400"),
    case(
        "log with step",
        bad({"learning_rate": {"float": [1e-4, 1e-2], "log": True, "step": 1e-4}}),
        "cannot have a step",
    ),
    case("two domains", bad({"hidden_units": {"choice": [1], "int": [1, 2]}}), "exactly one of int, float, choice"),
    case("no domain", bad({"hidden_units": {"log": True}}), "params.hidden_units", "exactly one of int, float, choice"),
    case("bare constant in params", bad({"hidden_units": 500}), "params.hidden_units", "constants go under fixed"),
    case("range not a pair", bad({"hidden_units": {"int": [1, 2, 3]}}), "params.hidden_units.int", "[low, high]"),
    case("unknown spec key", bad({"learning_rate": {"float": [1e-4, 1e-2], "lg": True}}), "unknown key 'lg'"),
    case("log not a bool", bad({"learning_rate": {"float": [1e-4, 1e-2], "log": "yes"}}), "log", "true or false"),
    case(
        "condition on unknown parameter",
        bad({"momentum": {**SGD_MOMENTUM, "when": {"optimiser": "sgd"}}}),
        "params.momentum.when",
        "condition on unknown parameter 'optimiser'",
    ),
    case(
        "condition on unknown value",
        bad({"momentum": {**SGD_MOMENTUM, "when": {"optimizer": "sgdd"}}}),
        "params.momentum.when.optimizer",
        "unknown value 'sgdd'",
    ),
    case(
        "condition on itself",
        bad({"momentum": {**SGD_MOMENTUM, "when": {"momentum": 0.5}}}),
        "cannot read the parameter itself",
    ),
    case("empty condition", bad({"momentum": {**SGD_MOMENTUM, "when": {}}}), "params.momentum.when", "at least one"),
    case("otherwise without when", bad({"momentum": {"float": [0.0, 0.9], "otherwise": 0.1}}), "needs a when:"),
    case(
        "bad otherwise",
        bad({"momentum": {**SGD_MOMENTUM, "otherwise": 2.0}}),
        "params.momentum.otherwise",
        "outside the allowed range",
    ),
    case(
        "condition cycle",
        bad(
            {
                "optimizer": {"choice": ["adam", "sgd"], "when": {"momentum": 0.9}},
                "momentum": {"choice": [0.0, 0.9], "when": {"optimizer": "sgd"}},
            }
        ),
        "cycle",
        "optimizer, momentum",
    ),
    case(
        "searched and fixed",
        bad({"hidden_units": {"choice": [16]}}, fixed={"hidden_units": 16}),
        "fixed.hidden_units",
        "both searched (params) and fixed",
    ),
    case("missing params", {"name": "bad", "fixed": {}}, "missing 'params'"),
    case("unknown top-level key", bad(param={}), "unknown key 'param'", "name, description, params, fixed, datasets"),
    case("params not a mapping", {"name": "bad", "params": ["hidden_units"]}, "params", "expected a mapping"),
    case(
        "bad override",
        bad(datasets={"mnist": {"params": {"hidden_units": {"choice": [0, 500]}}}}),
        "datasets.mnist.params.hidden_units",
        "outside the allowed range",
    ),
    case("unknown override key", bad(datasets={"mnist": {"parms": {}}}), "datasets.mnist", "unknown key 'parms'"),
    case(
        "override condition on unknown parameter",
        bad(datasets={"mnist": {"params": {"momentum": {**SGD_MOMENTUM, "when": {"optimzer": "sgd"}}}}}),
        "datasets.mnist.params.momentum.when",
        "unknown parameter 'optimzer'",
    ),
    case(
        "override searched and fixed",
        bad(datasets={"mnist": {"params": {"hidden_units": {"choice": [16]}}, "fixed": {"hidden_units": 16}}}),
        "datasets.mnist.fixed.hidden_units",
        "both searched",
    ),
    case("bad description", bad(description=3), "description", "expected a string"),
]


@pytest.mark.parametrize("data, fragments", INVALID_SPACES)
def test_invalid_space_is_refused_with_its_problem(data: dict[str, Any], fragments: tuple[str, ...]):
    with pytest.raises(SpaceError) as caught:
        SearchSpace.from_data(data, default_name="bad")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.startswith("space 'bad': ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_override_may_move_a_parameter_between_searched_and_fixed():
    space = SearchSpace.from_data(
        bad(
            {"hidden_units": {"choice": [16, 32]}},
            fixed={"batch_size": 100},
            datasets={"mnist": {"params": {"batch_size": {"choice": [64, 128]}}, "fixed": {"hidden_units": 1000}}},
        ),
        default_name="bad",
    )
    assert space.searched_parameters("mnist") == ("batch_size",)
    assert space.layout("mnist").fixed == {"hidden_units": 1000}
    assert space.searched_parameters() == ("hidden_units",)


def test_unknown_builtin_lists_the_known_spaces():
    with pytest.raises(SpaceError, match="unknown search space 'defualt'.*default, paper, quick"):
        get_space("defualt")


def test_missing_file(tmp_path: Path):
    with pytest.raises(SpaceError, match="not found"):
        get_space(str(tmp_path / "absent.yaml"))


def test_yaml_syntax_error(tmp_path: Path):
    file = tmp_path / "broken.yaml"
    file.write_text("params:\n  hidden_units: {choice: [16, 32]\n")
    expected = r"broken\.yaml.*YAML syntax error at line 3, column 1: while parsing a flow mapping: expected ','"
    with pytest.raises(SpaceError, match=expected):
        get_space(str(file))


def test_json_syntax_error(tmp_path: Path):
    file = tmp_path / "broken.json"
    file.write_text('{"params": {"hidden_units": }}')
    with pytest.raises(SpaceError, match=r"broken\.json.*JSON syntax error at line 1"):
        get_space(str(file))


def test_file_errors_name_the_file_and_the_space(tmp_path: Path):
    file = tmp_path / "nop.yaml"
    file.write_text("description: forgot the params\n")
    with pytest.raises(SpaceError) as caught:
        get_space(str(file))
    assert str(file) in str(caught.value) and "space 'nop'" in str(caught.value)
    assert "missing 'params'" in str(caught.value)

    file = tmp_path / "wrong.yaml"
    file.write_text("params:\n  ordering: {choice: [foo]}\n")
    with pytest.raises(SpaceError, match=r"wrong\.yaml: space 'wrong': params\.ordering: .*unknown value 'foo'"):
        get_space(str(file))


def test_empty_yaml_file(tmp_path: Path):
    file = tmp_path / "empty.yaml"
    file.write_text("")
    with pytest.raises(SpaceError, match="expected a mapping with a 'params' key"):
        get_space(str(file))


def test_python_file_errors(tmp_path: Path):
    no_space = tmp_path / "nothing.py"
    no_space.write_text("OTHER = {}\n")
    with pytest.raises(SpaceError, match="defines no SPACE"):
        get_space(str(no_space))
    not_a_dict = tmp_path / "listy.py"
    not_a_dict.write_text("SPACE = ['params']\n")
    with pytest.raises(SpaceError, match="SPACE must be a dict"):
        get_space(str(not_a_dict))
    raising = tmp_path / "raising.py"
    raising.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(SpaceError, match="failed to run: RuntimeError: boom"):
        get_space(str(raising))


def test_unsupported_file_type(tmp_path: Path):
    file = tmp_path / "space.toml"
    file.write_text("params = {}\n")
    with pytest.raises(SpaceError, match=r"unsupported type '\.toml'"):
        get_space(str(file))


def test_the_documented_example_space_is_valid():
    import spaces

    doc = spaces.__doc__
    block = doc[doc.index("JSON (``.json``)::") :].split("::", 1)[1].split("\nRules:")[0]
    space = SearchSpace.from_data(yaml.load(block, Loader=spaces.loading.SpaceYamlLoader), default_name="doc")
    assert space.name == "mine"
    for trial, config in run_study(space, "mnist", trials=15):
        assert config["hidden_units"] in (500, 1000, 2000) and config["batch_size"] == 100
        if config["optimizer"] == "adadelta":
            assert config["learning_rate"] == 1.0 and "learning_rate" not in trial.params
        assert ("momentum" in trial.params) == (config["optimizer"] == "sgd")


def test_start_points_are_validated_and_evaluated_first():
    space = get_space("default")
    start = space.start_points("dna")
    assert start and start[0]["num_masks"] == 32 and start[0]["ordering"] == "agnostic"
    # The first trial of a study given the start point is exactly that point.
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(start[0])
    config = space.define_by_run("dna")(study.ask())
    assert {key: config[key] for key in start[0]} == start[0]
    base = {"params": {"num_masks": {"choice": [1, 8]}, "hidden_units": {"choice": [100, 200]}},
            "datasets": {"big": {"params": {"hidden_units": {"choice": [400]}}}}}  # fmt: skip
    with pytest.raises(SpaceError, match=r"start\[0\]\.num_masks: 32 is outside the parameter's domain"):
        SearchSpace.from_data({**base, "start": [{"num_masks": 32}]}, default_name="bad")
    with pytest.raises(SpaceError, match=r"start\[0\]\.activation: is not a searched parameter"):
        SearchSpace.from_data({**base, "start": [{"activation": "relu"}]}, default_name="bad")
    with pytest.raises(SpaceError, match="start: must be a list"):
        SearchSpace.from_data({**base, "start": {"num_masks": 8}}, default_name="bad")
    good = SearchSpace.from_data({**base, "start": [{"num_masks": 8, "hidden_units": 200}]}, default_name="good")
    assert good.start_points("other") == [{"num_masks": 8, "hidden_units": 200}]
    assert good.start_points("big") == [{"num_masks": 8}]  # the override no longer admits 200 units
    assert SearchSpace.from_data(good.to_data(), default_name="x").start == good.start


def test_dataset_override_start_points_replace_the_base_list():
    data = {"params": {"num_masks": {"choice": [1, 8]}, "hidden_units": {"choice": [100, 200]}},
            "start": [{"num_masks": 8, "hidden_units": 200}],
            "datasets": {"big": {"params": {"hidden_units": {"choice": [400, 800]}},
                                 "start": [{"hidden_units": 800, "num_masks": 1}]}}}  # fmt: skip
    space = SearchSpace.from_data(data, default_name="own")
    assert space.start_points("big") == [{"hidden_units": 800, "num_masks": 1}]
    assert space.start_points("small") == [{"num_masks": 8, "hidden_units": 200}]
    assert SearchSpace.from_data(space.to_data(), default_name="x").start_points("big") == space.start_points("big")
    # Checked against the dataset's own domains, with the dataset in the message.
    bad = {**data, "datasets": {"big": {"params": {"hidden_units": {"choice": [400]}}, "start": [{"hidden_units": 200}]}}}
    with pytest.raises(SpaceError, match=r"datasets\.big\.start\[0\]\.hidden_units: 200 is outside the parameter's domain"):
        SearchSpace.from_data(bad, default_name="bad")
    with pytest.raises(SpaceError, match=r"datasets\.big\.start: must be a list"):
        SearchSpace.from_data({**data, "datasets": {"big": {"start": {"num_masks": 1}}}}, default_name="bad")
