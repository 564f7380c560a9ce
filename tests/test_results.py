"""Tests of results/: paper numbers, aggregation tables, Markdown, figures, concurrency.

Synthetic experiment folders are built in tmp_path following results.schema; nothing here
needs Ray or a trained model (the model path of the samples figure is skipped while
made_core.load_model does not exist).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from results import schema
from results.aggregate import aggregate, main
from results.paper import load_paper_nll, paper_made_nll, paper_mask_sampling_nll
from results.samples import image_grid, nearest_neighbours, render_samples_figure
from results.tables import DERIVED_BEST_COLUMNS, order_hyperparameters

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- builders


def config(num_masks: int, ordering: str, hidden_units: int = 500, learning_rate: float = 1e-3) -> dict:
    return {
        "hidden_layers": 1,
        "hidden_units": hidden_units,
        "num_masks": num_masks,
        "ordering": ordering,
        "direct_connection": False,
        "activation": "relu",
        "optimizer": "adam",
        "learning_rate": learning_rate,
        "batch_size": 100,
    }


def write_experiment(
    storage: Path,
    name: str,
    dataset: str,
    trials: list[tuple[str, float, dict]],
    best: tuple[str, float, float] | None,
    *,
    extra_info: dict | None = None,
    extra_best: dict | None = None,
    epochs: int = 4,
) -> Path:
    """An experiment folder; trials = [(trial_id, best_valid_nll, config)], best = (id, valid, test)."""
    folder = storage / name
    folder.mkdir(parents=True)
    info = {
        "experiment": name,
        "dataset": dataset,
        "space": "default",
        "seed": 0,
        "num_samples": len(trials),
        "max_epochs": epochs,
        "status": "finished",
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T01:00:00Z",
        "wall_seconds": 3723.4,
        "num_trials": len(trials),
        "command": f"python -m search.run --dataset {dataset}",
        **(extra_info or {}),
    }
    (folder / schema.EXPERIMENT_FILE).write_text(json.dumps(info))
    hyperparameters = sorted({k for _, _, c in trials for k in c})
    with open(folder / schema.TRIALS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*schema.TRIAL_COLUMNS, *hyperparameters])
        for number, (trial_id, valid, cfg) in enumerate(trials, start=1):
            writer.writerow(
                [trial_id, number, "TERMINATED", epochs, valid, valid + 1.0, 12.5, "10.0.0.1", 0]
                + [cfg.get(h, "") for h in hyperparameters]
            )
    with open(folder / schema.CURVES_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(schema.CURVE_COLUMNS)
        for trial_id, valid, _ in trials:
            running = math.inf
            for epoch in range(1, epochs + 1):
                value = valid + 10.0 / epoch - 10.0 / epochs
                running = min(running, value)
                writer.writerow([trial_id, epoch, value + 1.0, value, running, 3.0])
    if best is not None:
        trial_id, valid, test = best
        cfg = next(c for t, _, c in trials if t == trial_id)
        payload = {
            "dataset": dataset,
            "experiment": name,
            "trial_id": trial_id,
            "config": cfg,
            "valid_nll": valid,
            "test_nll": test,
            "test_nll_stderr": 0.321,
            "test_masks": cfg["num_masks"] or 16,
            "checkpoint_path": str(folder / trial_id / "checkpoint"),
            "finished_at": "2025-01-01T01:00:00Z",
            **(extra_best or {}),
        }
        (folder / schema.BEST_FILE).write_text(json.dumps(payload))
    return folder


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """3 good experiments over 2 datasets + 4 bad folders.

    dna: exp_dna_a has valid 85.0 / test 84.0; exp_dna_b has valid 84.5 / test 86.0, so by
    validation b wins although a has the lower test NLL.
    """
    root = tmp_path / "runs"
    root.mkdir()
    write_experiment(
        root,
        "exp_dna_a",
        "dna",
        [
            ("a_00000", 85.0, config(1, "natural")),
            ("a_00001", 86.0, config(8, "random")),
            ("a_00002", 88.0, config(0, "agnostic")),
        ],
        ("a_00000", 85.0, 84.0),
    )
    write_experiment(
        root,
        "exp_dna_b",
        "dna",
        [("b_00000", 84.5, config(0, "agnostic", hidden_units=1000)), ("b_00001", 87.0, config(1, "natural"))],
        ("b_00000", 84.5, 86.0),
        extra_info={"data_note": "stand-in dna file"},
    )
    write_experiment(
        root,
        "exp_synth",
        "synthetic_mixture",
        [("s_00000", 20.5, config(1, "natural")), ("s_00001", 20.1, config(4, "random"))],
        ("s_00001", 20.1, 20.3),
        extra_info={"true_test_nll": 20.0},
    )
    # Bad folders: corrupt best.json, foreign (no experiment.json), trials.csv missing a column.
    bad_best = write_experiment(root, "exp_bad_best", "dna", [("x_00000", 10.0, config(1, "natural"))], None)
    (bad_best / schema.BEST_FILE).write_text('{"dataset": "dna", "valid_nll": 1.0')  # half-written
    foreign = root / "not_an_experiment"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    bad_trials = write_experiment(root, "exp_bad_trials", "dna", [("y_00000", 9.0, config(1, "natural"))], ("y_00000", 9.0, 9.0))
    frame = pd.read_csv(bad_trials / schema.TRIALS_FILE).drop(columns=["best_valid_nll"])
    frame.to_csv(bad_trials / schema.TRIALS_FILE, index=False)
    bad_json = write_experiment(root, "exp_bad_json", "dna", [("z_00000", 8.0, config(1, "natural"))], ("z_00000", 8.0, 8.0))
    (bad_json / schema.EXPERIMENT_FILE).write_text("{not json")
    return root


# --------------------------------------------------------------------------- paper


def test_paper_numbers_for_dna_and_mnist():
    # paper_made_nll: rows whose model is exactly "MADE" (fixed masks); mask sampling apart.
    assert paper_made_nll("dna") == pytest.approx(83.63)
    assert paper_mask_sampling_nll("dna") == pytest.approx(79.66)
    assert paper_made_nll("mnist") == pytest.approx(86.64)  # best of the MADE rows: 2hl, 32 masks
    assert paper_made_nll("binarized_mnist") == pytest.approx(86.64)
    assert paper_mask_sampling_nll("mnist") is None
    assert paper_mask_sampling_nll("binarized_mnist") is None
    assert paper_made_nll("synthetic_mixture") is None
    assert paper_mask_sampling_nll("synthetic_mixture") is None
    assert schema.PAPER_MADE_MODEL == "MADE"
    assert schema.PAPER_MASK_SAMPLING_MODEL == "MADE mask sampling"
    dna = load_paper_nll("dna").set_index("model")["test_nll"]
    assert dna["MADE"] == pytest.approx(83.63)
    assert dna["MADE mask sampling"] == pytest.approx(79.66)


def test_paper_mnist_rows_checked_against_other_sources():
    mnist = load_paper_nll("mnist")
    row = lambda model, layers, masks=None: mnist[  # noqa: E731
        (mnist["model"] == model) & (mnist["hidden_layers"] == layers) & (masks is None or mnist["num_masks"] == masks)
    ].iloc[0]
    eonade_1hl = row("EoNADE", 1)
    assert eonade_1hl["test_nll"] == pytest.approx(87.71) and "128 orderings" in eonade_1hl["note"]  # 90.69 is 2 orderings
    assert eonade_1hl["verified"] and row("EoNADE", 2)["verified"] and row("MADE", 1, 32)["verified"]
    assert row("MADE", 1, 32)["test_nll"] == pytest.approx(88.04)
    mushrooms = load_paper_nll("mushrooms").set_index("model")
    assert mushrooms.loc["EoNADE", "test_nll"] == pytest.approx(9.68) and not mushrooms.loc["EoNADE", "verified"]


def test_paper_table_shape_and_datasets():
    table = load_paper_nll()
    assert tuple(table.columns) == schema.PAPER_NLL_COLUMNS
    expected = {"mnist", "adult", "connect4", "dna", "mushrooms", "nips", "ocr_letters", "rcv1", "web"}
    assert set(table["dataset"]) == expected
    assert (table["test_nll"] > 0).all()
    for dataset in expected:
        assert paper_made_nll(dataset) is not None
        assert (paper_mask_sampling_nll(dataset) is None) == (dataset == "mnist")
    # Every number says whether it was verified, and unverified ones say so in the note.
    assert table["verified"].isin([True, False]).all()
    assert table["note"].notna().all()


# --------------------------------------------------------------------------- tables


def test_best_is_chosen_by_validation_not_test(storage: Path, tmp_path: Path):
    result = aggregate([storage], tmp_path / "tables", None)
    best = pd.read_csv(tmp_path / "tables" / schema.BEST_TABLE).set_index("dataset")
    assert best.loc["dna", "experiment"] == "exp_dna_b"  # valid 84.5 < 85.0 despite test 86.0 > 84.0
    assert best.loc["dna", "trial_id"] == "b_00000"
    assert best.loc["dna", "test_nll"] == pytest.approx(86.0)
    assert best.loc["dna", "valid_nll"] == pytest.approx(84.5)
    assert best.loc["dna", "paper_made_nll"] == pytest.approx(83.63)
    assert best.loc["dna", "paper_mask_sampling_nll"] == pytest.approx(79.66)
    assert best.loc["dna", "delta_vs_paper"] == pytest.approx(86.0 - 83.63)
    assert best.loc["dna", "delta_vs_mask_sampling"] == pytest.approx(86.0 - 79.66)
    assert best.loc["dna", "hidden_units"] == 1000
    assert best.loc["dna", "num_masks"] == 0
    assert best.loc["dna", "note"] == "stand-in dna file"
    assert best.loc["dna", "sweep_num_trials"] == 2
    assert best.loc["dna", "sweep_wall_seconds"] == pytest.approx(3723.4)
    # Synthetic data: no paper number, but the gap to the true NLL.
    for column in ("paper_made_nll", "paper_mask_sampling_nll", "delta_vs_paper", "delta_vs_mask_sampling"):
        assert math.isnan(best.loc["synthetic_mixture", column]), column
    assert best.loc["synthetic_mixture", "true_test_nll"] == pytest.approx(20.0)
    assert best.loc["synthetic_mixture", "delta_vs_true"] == pytest.approx(0.3)
    assert sorted(result.experiments) == ["exp_dna_a", "exp_dna_b", "exp_synth"]


def test_best_table_column_order(storage: Path, tmp_path: Path):
    aggregate([storage], tmp_path / "tables", None)
    columns = list(pd.read_csv(tmp_path / "tables" / schema.BEST_TABLE).columns)
    paper = ["paper_made_nll", "paper_mask_sampling_nll", "delta_vs_paper", "delta_vs_mask_sampling"]
    at_paper = columns.index("paper_made_nll")
    assert columns[at_paper : at_paper + 4] == paper
    assert schema.BEST_TABLE_HYPERPARAMETERS_AFTER == paper[-1]
    at = columns.index(schema.BEST_TABLE_HYPERPARAMETERS_AFTER) + 1
    fixed = list(schema.BEST_TABLE_COLUMNS)
    n_hyper = len(columns) - len(fixed) - len(schema.BEST_TABLE_EXTRA_COLUMNS)
    assert columns[:at] == fixed[: fixed.index(schema.BEST_TABLE_HYPERPARAMETERS_AFTER) + 1]
    hyper = columns[at : at + n_hyper]
    assert hyper == order_hyperparameters(hyper)
    assert hyper[:4] == ["hidden_layers", "hidden_units", "num_masks", "ordering"]
    assert columns[at + n_hyper :] == fixed[fixed.index(schema.BEST_TABLE_HYPERPARAMETERS_AFTER) + 1 :] + list(
        schema.BEST_TABLE_EXTRA_COLUMNS
    )


def test_hyperparameter_order_known_first_then_sorted():
    ordered = order_hyperparameters(["zeta", "batch_size", "alpha", "num_masks", "hidden_layers"])
    assert ordered == ["hidden_layers", "num_masks", "batch_size", "alpha", "zeta"]


def test_trials_table(storage: Path, tmp_path: Path):
    aggregate([storage], tmp_path / "tables", None)
    trials = pd.read_csv(tmp_path / "tables" / schema.ALL_TRIALS_TABLE, dtype={"trial_id": str})
    fixed = [*schema.ALL_TRIALS_LEADING_COLUMNS, *schema.TRIAL_COLUMNS, schema.ALL_TRIALS_TEST_COLUMN]
    assert list(trials.columns[: len(fixed)]) == fixed
    assert len(trials) == 7  # 3 + 2 + 2; the bad folders contribute nothing
    assert set(trials["experiment"]) == {"exp_dna_a", "exp_dna_b", "exp_synth"}
    tested = trials[trials["test_nll"].notna()].set_index("trial_id")["test_nll"]
    assert tested.to_dict() == {"a_00000": 84.0, "b_00000": 86.0, "s_00001": 20.3}


def test_by_masks_table(storage: Path, tmp_path: Path):
    aggregate([storage], tmp_path / "tables", None)
    by_masks = pd.read_csv(tmp_path / "tables" / schema.BY_MASKS_TABLE, dtype={"trial_id": str})
    assert tuple(by_masks.columns) == schema.BY_MASKS_COLUMNS
    dna = by_masks[by_masks["dataset"] == "dna"].set_index(["num_masks", "ordering"])
    # (1, natural): a_00000 (85.0) beats b_00001 (87.0); it is exp_dna_a's best -> has a test NLL.
    assert dna.loc[(1, "natural"), "trial_id"] == "a_00000"
    assert dna.loc[(1, "natural"), "test_nll"] == pytest.approx(84.0)
    assert dna.loc[(1, "natural"), "group_trials"] == 2
    # (0, agnostic): b_00000 (84.5) beats a_00002 (88.0).
    assert dna.loc[(0, "agnostic"), "trial_id"] == "b_00000"
    assert dna.loc[(0, "agnostic"), "valid_nll"] == pytest.approx(84.5)
    # (8, random): a_00001 is not an experiment's best: no test NLL, honestly empty.
    assert math.isnan(dna.loc[(8, "random"), "test_nll"])


def test_skipped_folders_are_named_in_warnings(storage: Path, tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="results"):
        result = aggregate([storage], tmp_path / "tables", None)
    skipped = {s.path.name: s.reason for s in result.skipped}
    assert set(skipped) == {"exp_bad_best", "not_an_experiment", "exp_bad_trials", "exp_bad_json"}
    assert "best.json" in skipped["exp_bad_best"]
    assert "experiment.json" in skipped["not_an_experiment"]
    assert "best_valid_nll" in skipped["exp_bad_trials"]
    for name in skipped:
        assert any(name in record.getMessage() for record in caplog.records), name


def test_half_written_trials_csv_is_skipped(tmp_path: Path):
    root = tmp_path / "runs"
    folder = write_experiment(root, "exp_half", "dna", [("h_00000", 85.0, config(1, "natural"))], None)
    text = (folder / schema.TRIALS_FILE).read_text()
    (folder / schema.TRIALS_FILE).write_text(text + "h_00001,TERMI")  # cut mid-row
    result = aggregate([root], tmp_path / "tables", None)
    assert [s.path.name for s in result.skipped] == ["exp_half"]


def test_empty_storage_gives_header_only_tables(tmp_path: Path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="results"):
        result = aggregate([empty], tmp_path / "tables", tmp_path / "figures")
    assert result.experiments == [] and result.skipped == []
    assert any("no usable experiment" in r.getMessage() for r in caplog.records)
    for name in (schema.BEST_TABLE, schema.ALL_TRIALS_TABLE, schema.BY_MASKS_TABLE):
        frame = pd.read_csv(tmp_path / "tables" / name)
        assert frame.empty and len(frame.columns) > 0
    assert list(pd.read_csv(tmp_path / "tables" / schema.BY_MASKS_TABLE).columns) == list(schema.BY_MASKS_COLUMNS)
    assert (tmp_path / "tables" / schema.BEST_MARKDOWN).read_text().startswith("# Best test NLL")


def test_cli_on_missing_and_empty_storage(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    status = main(
        [
            "--storage",
            str(tmp_path / "empty"),
            "--storage",
            str(tmp_path / "missing"),
            "--tables-dir",
            str(tmp_path / "tables"),
            "--no-figures",
        ]
    )
    assert status == 0
    assert "no experiments found" in capsys.readouterr().out
    assert (tmp_path / "tables" / schema.BEST_TABLE).exists()


def test_merge_keeps_other_storages_and_replace_drops_them(storage: Path, tmp_path: Path):
    tables = tmp_path / "tables"
    other = tmp_path / "other"
    other.mkdir()
    write_experiment(other, "exp_web", "web", [("w_00000", 30.0, config(2, "random"))], ("w_00000", 30.0, 29.0))
    aggregate([storage], tables, None)
    aggregate([other], tables, None)
    best = pd.read_csv(tables / schema.BEST_TABLE).set_index("dataset")
    assert set(best.index) == {"dna", "synthetic_mixture", "web"}
    assert best.loc["dna", "experiment"] == "exp_dna_b"  # kept from the first run
    assert best.loc["web", "delta_vs_paper"] == pytest.approx(29.0 - (paper_made_nll("web") or math.nan))
    trials = pd.read_csv(tables / schema.ALL_TRIALS_TABLE)
    assert len(trials) == 8
    aggregate([other], tables, None, merge=False)
    assert set(pd.read_csv(tables / schema.BEST_TABLE)["dataset"]) == {"web"}


def test_mnist_row_has_made_but_no_mask_sampling_number(tmp_path: Path):
    root = tmp_path / "runs"
    root.mkdir()
    write_experiment(root, "exp_mnist", "binarized_mnist", [("m_00000", 88.0, config(32, "random"))], ("m_00000", 88.0, 87.5))
    aggregate([root], tmp_path / "tables", None)
    best = pd.read_csv(tmp_path / "tables" / schema.BEST_TABLE).set_index("dataset")
    assert list(best.index) == ["mnist"]
    assert best.loc["mnist", "paper_made_nll"] == pytest.approx(86.64)
    assert best.loc["mnist", "delta_vs_paper"] == pytest.approx(87.5 - 86.64)
    assert math.isnan(best.loc["mnist", "paper_mask_sampling_nll"])
    assert math.isnan(best.loc["mnist", "delta_vs_mask_sampling"])
    cells = _markdown_rows((tmp_path / "tables" / schema.BEST_MARKDOWN).read_text())["mnist"]
    assert cells[4:7] == ["86.64", "—", "+0.86"]


def test_merge_with_an_older_best_table_recomputes_paper_columns(tmp_path: Path):
    """An older table (no mask-sampling columns, the old 79.66 as paper_made_nll) is merged, not dropped."""
    tables = tmp_path / "tables"
    tables.mkdir()
    old_columns = [c for c in schema.BEST_TABLE_COLUMNS if c not in ("paper_mask_sampling_nll", "delta_vs_mask_sampling")]
    old_columns[old_columns.index("delta_vs_paper") + 1 : old_columns.index("delta_vs_paper") + 1] = [
        "hidden_layers",
        "hidden_units",
        "num_masks",
        "ordering",
    ]
    old_columns += list(schema.BEST_TABLE_EXTRA_COLUMNS)
    old_row = {
        "dataset": "dna",
        "test_nll": 84.0,
        "test_nll_stderr": 0.3,
        "valid_nll": 84.2,
        "paper_made_nll": 79.66,
        "delta_vs_paper": 84.0 - 79.66,
        "hidden_layers": 1,
        "hidden_units": 500,
        "num_masks": 0,
        "ordering": "agnostic",
        "experiment": "exp_old_dna",
        "trial_id": "o_00000",
        "finished_at": "2025-01-01T00:00:00Z",
        "sweep_wall_seconds": 754.0,
        "sweep_num_trials": 40,
    }
    pd.DataFrame([old_row], columns=old_columns).to_csv(tables / schema.BEST_TABLE, index=False)
    other = tmp_path / "other"
    other.mkdir()
    write_experiment(other, "exp_web", "web", [("w_00000", 30.0, config(2, "random"))], ("w_00000", 30.0, 29.0))
    aggregate([other], tables, None)
    best = pd.read_csv(tables / schema.BEST_TABLE).set_index("dataset")
    assert set(best.index) == {"dna", "web"}  # the old dna row was kept
    assert best.loc["dna", "experiment"] == "exp_old_dna"
    assert best.loc["dna", "paper_made_nll"] == pytest.approx(83.63)  # recomputed, not the old 79.66
    assert best.loc["dna", "paper_mask_sampling_nll"] == pytest.approx(79.66)
    assert best.loc["dna", "delta_vs_paper"] == pytest.approx(84.0 - 83.63)
    assert best.loc["dna", "delta_vs_mask_sampling"] == pytest.approx(84.0 - 79.66)
    assert best.loc["web", "paper_mask_sampling_nll"] == pytest.approx(paper_mask_sampling_nll("web"))
    assert best.loc["web", "delta_vs_mask_sampling"] == pytest.approx(29.0 - (paper_mask_sampling_nll("web") or math.nan))
    assert set(DERIVED_BEST_COLUMNS) <= set(best.columns)
    rows = _markdown_rows((tables / schema.BEST_MARKDOWN).read_text())
    assert rows["dna"][4:7] == ["83.63", "79.66", "+0.37"]
    assert rows["dna"][8] == "40" and rows["dna"][9] == "0:12:34"


def test_rerun_replaces_an_experiments_rows(storage: Path, tmp_path: Path):
    tables = tmp_path / "tables"
    aggregate([storage], tables, None)
    aggregate([storage], tables, None)
    trials = pd.read_csv(tables / schema.ALL_TRIALS_TABLE)
    assert len(trials) == 7  # not duplicated


# --------------------------------------------------------------------------- markdown


def _markdown_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| dataset"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


def test_markdown_agrees_with_csv(storage: Path, tmp_path: Path):
    aggregate([storage], tmp_path / "tables", None)
    best = pd.read_csv(tmp_path / "tables" / schema.BEST_TABLE).set_index("dataset")
    text = (tmp_path / "tables" / schema.BEST_MARKDOWN).read_text()
    rows = _markdown_rows(text)
    assert set(rows) == set(best.index)
    assert "rounded to 2 decimals" in text
    for dataset, cells in rows.items():
        row = best.loc[dataset]
        match = re.fullmatch(r"(\S+) ± (\S+)", cells[1])
        assert match is not None, cells[1]
        test, stderr = match.groups()
        assert float(test) == round(row["test_nll"], 2)
        assert float(stderr) == round(row["test_nll_stderr"], 2)
        assert int(cells[2]) == row["test_masks"]
        assert float(cells[3]) == round(row["valid_nll"], 2)
        if math.isnan(row["paper_made_nll"]):
            assert cells[4] == cells[6] == "—"
        else:
            assert float(cells[4]) == round(row["paper_made_nll"], 2)
            assert float(cells[6]) == round(row["delta_vs_paper"], 2)
        if math.isnan(row["paper_mask_sampling_nll"]):
            assert cells[5] == "—"
        else:
            assert float(cells[5]) == round(row["paper_mask_sampling_nll"], 2)
        assert int(cells[8]) == row["sweep_num_trials"]
        hours, minutes, seconds = (int(x) for x in cells[9].split(":"))
        assert hours * 3600 + minutes * 60 + seconds == round(row["sweep_wall_seconds"])
        assert cells[10] == f"{row['experiment']} / {row['trial_id']}"
    header = next(line for line in text.splitlines() if line.startswith("| dataset"))
    assert [c.strip() for c in header.strip().strip("|").split(" | ")][1:7] == [
        "test NLL ± stderr",
        "test masks",
        "valid NLL",
        "paper MADE",
        "paper MADE mask sampling",
        "Δ vs paper MADE",
    ]
    assert rows["dna"][4:7] == ["83.63", "79.66", "+2.37"]
    assert "1×1000, mask sampling, agnostic" in rows["dna"][7]
    assert "stand-in dna file" in text and "Δ vs true +0.30" in text


# --------------------------------------------------------------------------- figures


def _assert_png(path: Path, min_bytes: int = 2000) -> None:
    assert path.exists(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > min_bytes, path


def test_figures_exist_and_are_pngs(storage: Path, tmp_path: Path):
    figures = tmp_path / "figures"
    result = aggregate([storage], tmp_path / "tables", figures, samples=False)
    for name in ("exp_dna_a", "exp_dna_b", "exp_synth"):
        _assert_png(figures / schema.CURVES_FIGURE.format(experiment=name))
        _assert_png(figures / schema.BEST_SO_FAR_FIGURE.format(experiment=name))
    for dataset in ("dna", "synthetic_mixture"):
        _assert_png(figures / schema.NLL_VS_MASKS_FIGURE.format(dataset=dataset))
    assert len(result.figures) == 8
    assert not list(figures.glob(".*.tmp"))  # no temp files left behind


def test_nearest_neighbours_hamming():
    rng = np.random.default_rng(0)
    train = (rng.random((300, 49)) < 0.3).astype(np.float32)
    picks = rng.choice(300, size=12, replace=False)
    samples = train[picks].copy()
    samples[:, 0] = 1 - samples[:, 0]  # one flipped bit each
    indices, distances = nearest_neighbours(samples, train)
    brute = np.abs(samples[:, None, :] - train[None, :, :]).sum(axis=2)
    assert np.array_equal(distances, brute.min(axis=1))
    assert np.array_equal(indices, brute.argmin(axis=1))
    assert (distances <= 1).all()
    with pytest.raises(ValueError):
        nearest_neighbours(samples, train[:, :10])


def test_nearest_neighbours_across_chunks(monkeypatch):
    import results.samples as samples_module

    monkeypatch.setattr(samples_module, "_CHUNK_ROWS", 7)
    rng = np.random.default_rng(1)
    train = (rng.random((50, 16)) < 0.5).astype(np.float32)
    samples = (rng.random((9, 16)) < 0.5).astype(np.float32)
    indices, distances = nearest_neighbours(samples, train)
    brute = np.abs(samples[:, None, :] - train[None, :, :]).sum(axis=2)
    assert np.array_equal(indices, brute.argmin(axis=1))
    assert np.array_equal(distances, brute.min(axis=1))


def test_samples_grid_rendering_model_free(tmp_path: Path):
    rng = np.random.default_rng(2)
    train = (rng.random((500, 784)) < 0.2).astype(np.float32)
    samples = (rng.random((100, 784)) < 0.2).astype(np.float32)
    indices, _ = nearest_neighbours(samples, train)
    grid = image_grid(samples, (28, 28))
    assert grid.shape == (10 * 29 + 1, 10 * 29 + 1)
    assert np.array_equal(grid[1:29, 1:29], samples[0].reshape(28, 28))
    path = render_samples_figure(samples, train[indices], (28, 28), tmp_path / "mnist_samples.png", title="test")
    _assert_png(path, min_bytes=5000)


def test_samples_figure_with_a_model(tmp_path: Path):
    pytest.importorskip("made_core")
    model_module = pytest.importorskip("made_core.model")
    if not hasattr(model_module, "load_model"):
        pytest.skip("made_core.load_model does not exist yet")
    data = pytest.importorskip("made_core.data")
    if not hasattr(data, "load_dataset"):
        pytest.skip("made_core.data.load_dataset does not exist yet")
    data_dir = os.environ.get("MADE_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "binarized_mnist.npz").exists():
        pytest.skip("binarized_mnist.npz not in $MADE_DATA_DIR (never download in a unit test)")
    from made_core.model import MADE, save_model
    from results.samples import samples_figure

    model = MADE(784, [16], num_masks=1, ordering="natural")
    save_model(model, tmp_path / "ckpt")
    path = samples_figure("mnist", tmp_path / "ckpt", tmp_path / "mnist_samples.png")
    assert path is not None
    _assert_png(path, min_bytes=5000)


def test_samples_figure_warns_and_skips_without_model(tmp_path: Path, caplog):
    from results.samples import samples_figure

    with caplog.at_level(logging.WARNING, logger="results"):
        assert samples_figure("mnist", tmp_path / "no_such_checkpoint", tmp_path / "s.png") is None
    assert any("no samples figure" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "s.png").exists()
    assert samples_figure("dna", tmp_path / "whatever", tmp_path / "s.png") is None  # not an image dataset


# --------------------------------------------------------------------------- concurrency


def _aggregate_rounds(storage: str, tables: str, rounds: int) -> None:
    for _ in range(rounds):
        aggregate([Path(storage)], Path(tables), None)


def _read_tables_until(tables: str, stop, counts) -> None:
    """Read every table again and again; any unparsable read is counted as a failure."""
    tables_dir = Path(tables)
    while not stop.is_set():
        for name in (schema.BEST_TABLE, schema.ALL_TRIALS_TABLE, schema.BY_MASKS_TABLE):
            path = tables_dir / name
            if not path.exists():
                continue
            try:
                frame = pd.read_csv(path)
                assert list(frame.columns[:1]) == ["dataset"]
                counts["ok"] += 1
            except Exception:
                counts["bad"] += 1


def test_concurrent_aggregations_never_corrupt_tables(tmp_path: Path):
    tables = tmp_path / "tables"
    storages = []
    for index, dataset in enumerate(["dna", "web", "adult", "connect4"]):
        root = tmp_path / f"storage{index}"
        root.mkdir()
        trials = [(f"t{index}_{k:05d}", 30.0 + k, config(1 + k % 3, "random")) for k in range(30)]
        write_experiment(root, f"exp_{dataset}", dataset, trials, (trials[0][0], 30.0, 29.5), epochs=2)
        storages.append(root)
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        counts = manager.dict(ok=0, bad=0)
        stop = context.Event()
        reader = context.Process(target=_read_tables_until, args=(str(tables), stop, counts))
        reader.start()
        writers = [context.Process(target=_aggregate_rounds, args=(str(s), str(tables), 5)) for s in storages]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(timeout=120)
        stop.set()
        reader.join(timeout=30)
        assert all(w.exitcode == 0 for w in writers)
        assert counts["bad"] == 0 and counts["ok"] > 0
    best = pd.read_csv(tables / schema.BEST_TABLE)
    assert sorted(best["dataset"]) == ["adult", "connect4", "dna", "web"]  # no writer lost another's rows
    assert len(pd.read_csv(tables / schema.ALL_TRIALS_TABLE)) == 4 * 30
    assert not list(tables.glob(".*.tmp"))


def test_tables_carry_each_rows_commit_and_old_tables_still_merge(tmp_path: Path):
    runs = tmp_path / "runs"
    provenance = {"provenance": {"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": True}}
    write_experiment(
        runs, "new", "dna", [("n_00000", 84.0, config(1, "natural"))], ("n_00000", 84.0, 85.0), extra_info=provenance
    )
    write_experiment(runs, "old", "mushrooms", [("o_00000", 9.9, config(1, "natural"))], ("o_00000", 9.9, 9.8))
    (runs / "tables").mkdir()  # the storage's own aggregated outputs are not an experiment
    tables = tmp_path / "tables"
    # A trials table written before the commit column existed still merges (its rows are kept).
    tables.mkdir()
    legacy = ["dataset", "experiment", *schema.TRIAL_COLUMNS, schema.ALL_TRIALS_TEST_COLUMN]
    pd.DataFrame([["adult", "legacy", "l_00000", 1, "TERMINATED", 4, 13.5, 14.0, 1.0, "", 0, 13.4]], columns=legacy).to_csv(
        tables / schema.ALL_TRIALS_TABLE, index=False
    )
    result = aggregate([runs], tables, None)
    assert result.skipped == []
    best = pd.read_csv(tables / schema.BEST_TABLE, dtype={schema.COMMIT_COLUMN: str}).set_index("dataset")
    assert best.loc["dna", schema.COMMIT_COLUMN] == "0123456789abcdef0123456789abcdef01234567-dirty"
    assert pd.isna(best.loc["mushrooms", schema.COMMIT_COLUMN])  # no provenance: empty
    trials = pd.read_csv(tables / schema.ALL_TRIALS_TABLE, dtype={schema.COMMIT_COLUMN: str}).set_index("experiment")
    assert set(trials.index) == {"new", "old", "legacy"}
    assert trials.loc["new", schema.COMMIT_COLUMN].endswith("-dirty") and pd.isna(trials.loc["legacy", schema.COMMIT_COLUMN])
