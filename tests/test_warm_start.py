"""Warm start from earlier sweeps: reading sources, mapping onto another space, de-duplication, bad sources."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from results import schema
from search.run import main, make_plan, parse_args
from search.settings import UsageError
from search.tuner import make_searcher
from search.warm_start import map_onto, read_source, warm_start_points
from spaces import get_space

DEFAULT = get_space("default")
PAPER_STYLE = {"hidden_layers": 2, "hidden_units": 8000, "num_masks": 32, "ordering": "agnostic", "direct_connection": "True",
               "optimizer": "adagrad", "learning_rate": 0.05, "weight_decay": 0.0, "batch_size": 100.0}  # fmt: skip


def test_a_config_of_another_space_is_mapped_into_this_one():
    point = map_onto(PAPER_STYLE, DEFAULT, "dna")
    assert point["hidden_units"] == 1000  # 8000 is not a choice: the nearest one
    assert point["learning_rate"] == 1.0e-2  # clipped into the log range [3e-4, 1e-2]
    assert point["direct_connection"] is True and point["batch_size"] == 100  # types read back from CSV
    assert point["hidden_layers"] == 2 and point["num_masks"] == 32 and point["ordering"] == "agnostic"
    assert "optimizer" not in point  # fixed in the default space
    assert map_onto({"ordering": "spiral", "hidden_units": None}, DEFAULT, "dna") == {}  # left to the sampler


def _experiment(folder, dataset, rows):
    folder.mkdir(parents=True)
    (folder / schema.EXPERIMENT_FILE).write_text(json.dumps({"experiment": folder.name, "dataset": dataset}))
    pd.DataFrame(rows).to_csv(folder / schema.TRIALS_FILE, index=False)


def _trial(nll, units, masks=1, lr=1.0e-3):
    """A trials.csv row with (at least) every hyperparameter the default space's start points pin,
    as real rows carry them all."""
    return {"trial_id": f"t{units}{masks}", "best_valid_nll": nll, "hidden_layers": 1, "hidden_units": units,
            "num_masks": masks, "ordering": "natural", "direct_connection": True, "activation": "relu",
            "learning_rate": lr, "weight_decay": 0.0, "batch_size": 100}  # fmt: skip


def test_best_per_dataset_interleaved_and_deduplicated(tmp_path):
    storage = tmp_path / "runs"
    _experiment(storage / "a", "dna", [_trial(80.0, 250), _trial(79.0, 750), _trial(81.0, 1000), _trial(float("nan"), 500)])
    _experiment(storage / "b", "mnist", [_trial(90.0, 750), _trial(89.0, 500, 8)])
    # The same configuration as dna's best, and the space's own start point (the library's defaults, 1000 wide,
    # weight decay 1e-4): both dropped.
    start = {**_trial(12.0, 1000, 8), "ordering": "agnostic", "weight_decay": 1e-4}
    _experiment(storage / "c", "adult", [_trial(13.0, 750), start])
    frames = read_source(storage)
    assert [frame["dataset"].iloc[0] for frame in frames] == ["adult", "dna", "mnist"]
    points = warm_start_points([storage], DEFAULT, "synthetic-bn-100", count=2)
    units = [(p["hidden_units"], p["num_masks"]) for p in points]
    assert units == [(750, 1), (500, 8), (250, 1)], points  # best of each dataset first, then the second bests
    assert len(warm_start_points([storage, storage / "a"], DEFAULT, "dna", count=2)) == 3


def test_results_tables_are_sources(tmp_path):
    best = tmp_path / "best_test_nll.csv"
    pd.DataFrame([{**_trial(0.0, 250), "dataset": "dna", "valid_nll": 79.0, "best_valid_nll": None}]).drop(
        columns=["best_valid_nll"]
    ).to_csv(best, index=False)
    assert warm_start_points([best], DEFAULT, "dna") == [map_onto(_trial(0, 250), DEFAULT, "dna")]


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "absent", "no such file or folder"),
        (lambda p: p, "not an experiment folder, a storage of experiments or a results table"),
        (lambda p: (p / "x.csv").write_text("a,b\n1,2\n") and p / "x.csv", "not a results table"),
        (lambda p: (p / "bin.csv").write_bytes(b"\xff\xfe\x00garbage") and p / "bin.csv", "not a readable CSV table"),
    ],
)
def test_a_missing_or_foreign_source_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    source = make(tmp_path / "src" if (tmp_path / "src").mkdir() is None else tmp_path)
    with pytest.raises(UsageError, match=message):
        read_source(source)
    storage = tmp_path / "runs"
    assert main(["--dataset", "dna", "--warm-start", str(source), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not storage.exists() or not any(storage.iterdir())


def test_the_plan_evaluates_warm_points_after_the_space_start(tmp_path):
    source = tmp_path / "old"
    _experiment(source, "dna", [_trial(79.0, 750, 16, 3.0e-3)])
    plan, _ = make_plan(
        parse_args(["--dataset", "synthetic-tiny", "--warm-start", str(source), "--storage", str(tmp_path / "r")])
    )
    assert plan.warm_start == (map_onto(_trial(79.0, 750, 16, 3.0e-3), DEFAULT, "synthetic-tiny"),)
    plan = plan.__class__(**{**plan.__dict__, "optuna_storage": f"sqlite:///{tmp_path / 'study.db'}"})
    searcher = make_searcher(plan)
    assert searcher._points_to_evaluate[-1] == plan.warm_start[0]
    assert len(searcher._points_to_evaluate) == len(DEFAULT.start_points("synthetic-tiny")) + 1
