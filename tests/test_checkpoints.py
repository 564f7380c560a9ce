"""Files a sweep did not write itself: checkpoints that would run code, corrupt checkpoints, full disks.

Checkpoints and models load with ``weights_only=True`` and a refusal names the file; a
trial whose newest checkpoint is unreadable falls back to the one before it; every write
is durable (fsync before and after the rename) and a full disk leaves the old file intact.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from ray import tune

from made_core import files
from made_core.config import TrainConfig
from made_core.data import load_dataset
from made_core.files import CheckpointError, atomic_write
from made_core.model import load_model, save_model
from made_core.train import CHECKPOINT_FILE, Trainer, load_best_model
from made_core.train_cli import main
from results.storage import atomic_write_csv
from search.trainable import older_checkpoints, restore_trainer


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic-tiny")


def trained(tiny, epochs: int) -> Trainer:
    config = TrainConfig(hidden_sizes=(16,), num_masks=2, ordering="agnostic", learning_rate=1e-2, batch_size=100, max_epochs=20)
    trainer = Trainer(config, tiny.train, tiny.valid)
    for _ in range(epochs):
        trainer.run_to_validation()
    return trainer


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any planted code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant_object(path: Path, key: str, marker: Path) -> None:
    state = torch.load(path, weights_only=True)
    state[key] = _RunsCode(marker)
    torch.save(state, path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_checkpoint_holds_only_safe_types(tmp_path, tiny):
    path = trained(tiny, 2).save_checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)  # raises if anything needs arbitrary unpickling
    assert state["progress"]["epoch"] == 2


@pytest.mark.parametrize("loader", ["from_checkpoint", "load_best_model", "load_model"])
def test_a_planted_pickled_object_is_refused_and_never_runs(tmp_path, tiny, loader):
    trainer = trained(tiny, 1)
    marker = tmp_path / "code-ran"
    if loader == "load_model":
        path = save_model(trainer.model, tmp_path)
        plant_object(path, "config", marker)
        call = lambda: load_model(tmp_path)  # noqa: E731
    else:
        path = trainer.save_checkpoint(tmp_path)
        plant_object(path, "progress", marker)
        call = (
            (lambda: Trainer.from_checkpoint(tmp_path, tiny.train, tiny.valid))
            if loader == "from_checkpoint"
            else (lambda: load_best_model(tmp_path))
        )
    with pytest.raises(CheckpointError) as raised:
        call()
    message = str(raised.value)
    assert str(path) in message and "refusing" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "not a checkpoint"])
def test_a_damaged_checkpoint_gets_one_line_naming_it(tmp_path, tiny, damage):
    path = trained(tiny, 1).save_checkpoint(tmp_path)
    if damage == "truncate":
        truncate(path)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not a zip archive at all")
    else:
        torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError) as raised:
        Trainer.from_checkpoint(tmp_path, tiny.train, tiny.valid)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_cli_resume_from_a_truncated_checkpoint_exits_2(tmp_path, tiny, capsys):
    truncate(trained(tiny, 1).save_checkpoint(tmp_path))
    code = main(["--dataset", "synthetic-tiny", "--checkpoint-dir", str(tmp_path), "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: cannot read") and str(tmp_path / CHECKPOINT_FILE) in err
    assert len(err.splitlines()) == 1


def trial_folder(tmp_path: Path, tiny, epochs_per_checkpoint: list[int]) -> list[tune.Checkpoint]:
    """A trial folder as Ray lays it out: checkpoint_000000, checkpoint_000001, ..."""
    trainer = Trainer(trained(tiny, 0).config, tiny.train, tiny.valid)
    checkpoints = []
    for index, epochs in enumerate(epochs_per_checkpoint):
        while trainer.progress.epoch < epochs:
            trainer.run_to_validation()
        folder = tmp_path / "trial" / f"checkpoint_{index:06d}"
        trainer.save_checkpoint(folder)
        checkpoints.append(tune.Checkpoint(str(folder)))
    (tmp_path / "trial" / "checkpoint_tmp_junk").mkdir()  # not one of Ray's checkpoint names
    return checkpoints


def test_older_checkpoints_newest_first(tmp_path, tiny):
    checkpoints = trial_folder(tmp_path, tiny, [1, 2, 3])
    assert [Path(c.path).name for c in older_checkpoints(checkpoints[2])] == ["checkpoint_000001", "checkpoint_000000"]
    assert older_checkpoints(checkpoints[0]) == []


def test_restore_falls_back_to_the_checkpoint_before_a_truncated_one(tmp_path, tiny, capsys):
    checkpoints = trial_folder(tmp_path, tiny, [1, 2, 3])
    truncate(Path(checkpoints[2].path) / CHECKPOINT_FILE)
    trainer = restore_trainer(checkpoints[2], tiny.train, tiny.valid, "cpu")
    assert trainer is not None and trainer.progress.epoch == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "checkpoint_000002" in lines[0] and f"falling back to {checkpoints[1].path}" in lines[0]


def test_restore_starts_over_when_no_checkpoint_is_readable(tmp_path, tiny, capsys):
    checkpoints = trial_folder(tmp_path, tiny, [1, 2])
    for checkpoint in checkpoints:
        truncate(Path(checkpoint.path) / CHECKPOINT_FILE)
    assert restore_trainer(checkpoints[1], tiny.train, tiny.valid, "cpu") is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[-1].endswith("starting the trial over")


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append("fsync folder" if os.path.isdir(f"/proc/self/fd/{descriptor}") else "fsync file")
        real_fsync(descriptor)

    def replace(source, destination) -> None:
        events.append("rename")
        real_replace(source, destination)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    atomic_write(tmp_path / "table.csv", lambda temp: temp.write_text("a,b\n1,2\n"))
    assert events == ["fsync file", "rename", "fsync folder"]
    assert (tmp_path / "table.csv").read_text() == "a,b\n1,2\n"
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o644


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "best.json"
    path.write_text("old")

    def write(temp: Path) -> None:
        temp.write_text("half")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        atomic_write(path, write)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs mounted for this test (root only), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its file system has no space left."""
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_a_table_write_into_a_full_filesystem_keeps_the_old_table(full_disk):
    table = full_disk / "tables" / "best_test_nll.csv"
    atomic_write_csv(table, pd.DataFrame({"dataset": ["dna"], "test_nll": [80.0]}))
    old = table.read_bytes()
    fill(full_disk)
    with pytest.raises(OSError) as raised:
        atomic_write_csv(table, pd.DataFrame({"dataset": [f"set{i}" for i in range(20_000)], "test_nll": 1.0}))
    assert raised.value.errno == errno.ENOSPC
    assert table.read_bytes() == old
    assert sorted(p.name for p in table.parent.iterdir()) == ["best_test_nll.csv"]  # no temporary left


def test_aggregate_into_a_full_filesystem_exits_with_one_line(full_disk, tmp_path, capsys):
    from test_results import config, write_experiment

    from results.aggregate import main as aggregate_main

    storage = tmp_path / "runs"
    write_experiment(storage, "exp_dna", "dna", [("a_00000", 85.0, config(1, "natural"))], ("a_00000", 85.0, 84.0))
    tables = full_disk / "tables"
    assert aggregate_main(["--storage", str(storage), "--tables-dir", str(tables), "--no-figures"]) == 0
    before = {p.name: p.read_bytes() for p in tables.iterdir() if p.is_file()}
    trials = [(f"b_{i:05d}", 84.0 + i / 1000, config(1, "natural")) for i in range(2000)]
    write_experiment(storage, "exp_dna_2", "dna", trials, ("b_00000", 84.0, 83.0))
    fill(full_disk)
    capsys.readouterr()
    code = aggregate_main(["--storage", str(storage), "--tables-dir", str(tables), "--no-figures"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0] and str(tables) in err[0]
    assert {p.name: p.read_bytes() for p in tables.iterdir() if p.is_file()} == before
    assert not [p for p in tables.iterdir() if p.name.endswith(".tmp")]
