"""The training loop: learning a known distribution, exact resume, early stopping, divergence, CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from made_core.config import TrainConfig
from made_core.data import load_dataset, true_distribution
from made_core.ensembles import SAMPLING_TEST_MASK_CHOICES, choose_test_masks
from made_core.evaluate import ensemble_nlls, evaluate_nll
from made_core.train import Trainer
from made_core.train_cli import main


@pytest.fixture(scope="module")
def tiny():
    return load_dataset("synthetic-tiny")


def small_config(**overrides) -> TrainConfig:
    values: dict[str, Any] = dict(hidden_sizes=(32,), num_masks=1, ordering="natural", direct_connection=False,
                  learning_rate=1e-2, batch_size=50, max_epochs=5, patience=30)  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def test_learns_synthetic_distribution_close_to_true_nll():
    """A mixture of product Bernoullis over 32 dims: the model must get within 0.6 nats of the truth."""
    data = load_dataset("synthetic-mob")
    config = TrainConfig(hidden_sizes=(128,), num_masks=1, ordering="natural", direct_connection=True,
                         learning_rate=3e-3, batch_size=100, max_epochs=40, patience=8)  # fmt: skip
    trainer = Trainer(config, data.train, data.valid)
    for _ in trainer.epochs():
        pass
    test = trainer.evaluate(data.test, 1)
    true_nll = data.true_test_nll
    assert true_nll is not None
    # The true model's NLL is a lower bound up to sampling noise; a trained MADE gets close.
    assert test.mean > true_nll - 3 * data.true_test_nll_stderr
    assert test.mean - true_nll < 0.6, (test, true_nll)
    # And the test rows' true log-probability agrees with the dataset's stated figure.
    truth = true_distribution("synthetic-mob").log_prob(data.test)
    assert -np.mean(truth) == pytest.approx(true_nll, abs=1e-9)


@pytest.mark.parametrize(
    "num_masks,ordering,optimizer",
    [(1, "natural", "adam"), (3, "agnostic", "adam"), (0, "agnostic", "adam"), (3, "agnostic", "adagrad")],
)
@pytest.mark.parametrize("validate_every", [1, 2])
def test_checkpoint_resume_is_exact(tmp_path, tiny, num_masks, ordering, optimizer, validate_every):
    # Adam and Adagrad run their fused kernels on the CPU, whose state must round-trip too.
    config = small_config(num_masks=num_masks, ordering=ordering, valid_masks=2 if num_masks != 1 else None,
                          optimizer=optimizer, max_epochs=6 * validate_every, validate_every=validate_every)  # fmt: skip
    uninterrupted = Trainer(config, tiny.train, tiny.valid)
    reference = [uninterrupted.run_to_validation() for _ in range(5)]

    first = Trainer(config, tiny.train, tiny.valid)
    for _ in range(3):
        first.run_to_validation()
    first.save_checkpoint(tmp_path)
    del first
    resumed = Trainer.from_checkpoint(tmp_path, tiny.train, tiny.valid)
    continued = [resumed.run_to_validation() for _ in range(2)]
    for expected, got in zip(reference[3:], continued):
        assert got.epoch == expected.epoch
        assert got.train_nll == expected.train_nll
        assert got.valid_nll == expected.valid_nll
        assert got.best_valid_nll == expected.best_valid_nll


def test_early_stopping_restores_best_weights(tiny):
    # A large learning rate on a tiny set overfits fast: validation worsens and stops improving.
    config = small_config(hidden_sizes=(256,), learning_rate=3e-2, max_epochs=200, patience=3, batch_size=10)
    trainer = Trainer(config, tiny.train[:100], tiny.valid)
    results = list(trainer.epochs())
    last = results[-1]
    assert last.status == "early_stopped"
    assert last.epoch == last.best_epoch + 3
    assert trainer.evaluate(tiny.valid, 1).mean == pytest.approx(last.best_valid_nll, abs=1e-9)
    assert all(not r.done for r in results[:-1])


def test_validation_interval_keeps_validation_cheap():
    """ceil(valid rows x validation masks / train rows) epochs, capped at patience / 4."""
    eight = TrainConfig(num_masks=8)
    assert eight.validation_interval(train_rows=1400, valid_rows=600) == 4  # dna's shape
    assert eight.validation_interval(train_rows=10_000, valid_rows=2_000) == 2
    assert eight.validation_interval(train_rows=50_000, valid_rows=5_000) == 1
    assert eight.validation_interval(train_rows=500, valid_rows=2_000) == 7  # 32 epochs, capped at 30 // 4
    assert TrainConfig(num_masks=8, patience=3).validation_interval(500, 2_000) == 1
    assert TrainConfig(num_masks=1).validation_interval(train_rows=1400, valid_rows=600) == 1
    assert TrainConfig(num_masks=1).validation_interval(train_rows=500, valid_rows=2_000) == 4
    assert TrainConfig(num_masks=8, validate_every=1).validation_interval(500, 2_000) == 1
    with pytest.raises(ValueError, match="validate_every must be >= 1, got 0"):
        TrainConfig(validate_every=0)
    with pytest.raises(ValueError, match="validate_at epochs must be >= 1"):
        TrainConfig(validate_at=(0, 5))


def test_validation_runs_every_interval_at_the_forced_epochs_and_at_the_end(tiny):
    config = small_config(validate_every=3, validate_at=(4, 8), max_epochs=10)
    trainer = Trainer(config, tiny.train, tiny.valid)
    results = list(trainer.epochs())
    assert [r.epoch for r in results] == [3, 4, 7, 8, 10]
    assert results[-1].status == "finished" and trainer.progress.step == 10 * (len(tiny.train) // 50)
    # train_nll is the mean over the epochs since the previous result; the rate counts them all.
    single = Trainer(small_config(validate_every=1, max_epochs=3), tiny.train, tiny.valid)
    per_epoch = list(single.epochs())
    assert results[0].train_nll == pytest.approx(sum(r.train_nll for r in per_epoch) / 3, rel=1e-12)
    assert results[0].valid_nll == per_epoch[-1].valid_nll  # the same weights after the same 3 epochs
    assert all(r.examples_per_second > 0 for r in results)


def test_early_stopping_counts_epochs_not_validations(tiny):
    config = small_config(hidden_sizes=(256,), learning_rate=3e-2, max_epochs=200, patience=6, batch_size=10,
                          validate_every=2)  # fmt: skip
    results = list(Trainer(config, tiny.train[:100], tiny.valid).epochs())
    last = results[-1]
    assert last.status == "early_stopped" and last.epoch == last.best_epoch + 6
    assert all(r.epoch % 2 == 0 for r in results)


def test_max_epochs_finishes(tiny):
    results = list(Trainer(small_config(max_epochs=3), tiny.train, tiny.valid).epochs())
    assert [r.epoch for r in results] == [1, 2, 3]
    assert results[-1].status == "finished"
    assert all(math.isfinite(r.valid_nll) and r.examples_per_second > 0 for r in results)


def test_divergence_ends_run_cleanly(tiny):
    config = small_config(optimizer="sgd", learning_rate=1e30, momentum=0.0, max_epochs=50)
    trainer = Trainer(config, tiny.train, tiny.valid)
    results = list(trainer.epochs())
    assert results[-1].status == "diverged"
    assert results[-1].valid_nll == math.inf
    assert len(results) < 50
    # Whatever the model holds afterwards is finite: the best weights, or the untouched start.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()) or trainer.progress.best_epoch == 0


def test_every_optimizer_trains(tiny):
    for optimizer, rate in [("adam", 1e-2), ("adagrad", 5e-2), ("adadelta", 1.0), ("sgd", 5e-2)]:
        config = small_config(optimizer=optimizer, learning_rate=rate, max_epochs=3, grad_clip=10.0)
        results = list(Trainer(config, tiny.train, tiny.valid).epochs())
        assert results[-1].valid_nll < results[0].valid_nll + 1e-6 or results[-1].best_valid_nll < 7.0, optimizer


def _validate(trainer: Trainer, valid_nll: float) -> float:
    """Pass one epoch and validate it at ``valid_nll`` (what the epoch trained is irrelevant to
    the lr decay's rule); returns the lr after it."""
    trainer.progress.epoch += 1
    trainer._finish(0.0, 1, 1.0, valid_nll, None)
    return trainer.optimizer.param_groups[0]["lr"]


def test_lr_decays_on_a_plateau_and_survives_a_checkpoint(tmp_path, tiny):
    """lr x lr_decay once validation has not improved for patience // 3 epochs since the best
    epoch or the last decay; a new best does not undo a decay; the lr and the decay's epoch
    round-trip through a checkpoint; early stopping ends a plateau without a last decay."""
    config = small_config(patience=6, lr_decay=0.5, learning_rate=1e-3, max_epochs=50)
    assert config.lr_plateau_epochs == 2
    trainer = Trainer(config, tiny.train, tiny.valid)
    lrs = [_validate(trainer, v) for v in (5.0, 6.0, 6.0, 6.0, 6.0, 4.0, 6.0)]
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 2.5e-4])
    assert (trainer.progress.last_lr_decay_epoch, trainer.progress.best_epoch) == (5, 6)
    trainer.save_checkpoint(tmp_path)
    resumed = Trainer.from_checkpoint(tmp_path, tiny.train, tiny.valid)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    assert resumed.progress.last_lr_decay_epoch == 5
    lrs = [_validate(resumed, 6.0) for _ in range(5)]  # epochs 8-12: decays at 8 and 10, stops at 12
    assert lrs == pytest.approx([1.25e-4, 1.25e-4, 6.25e-5, 6.25e-5, 6.25e-5])
    assert resumed.progress.status == "early_stopped" and resumed.progress.last_lr_decay_epoch == 10


@pytest.mark.parametrize("optimizer,num_masks", [("adam", 1), ("adam", 3), ("adagrad", 1), ("adadelta", 3), ("sgd", 1)])
def test_every_optimizer_decays_and_the_default_lr_is_constant(tiny, optimizer, num_masks):
    # ("adam", 3) is MaskedAdam, which reads its lr from its param groups at every step.
    for lr_decay, expected in ((1.0, 0.1), (0.5, 0.05)):
        config = small_config(optimizer=optimizer, num_masks=num_masks, ordering="agnostic", patience=3,
                              lr_decay=lr_decay, learning_rate=0.1)  # fmt: skip
        trainer = Trainer(config, tiny.train, tiny.valid)
        for valid_nll in (5.0, 6.0):  # one epoch without a better one
            _validate(trainer, valid_nll)
        lrs = [group["lr"] for group in trainer.optimizer.param_groups]
        assert lrs == pytest.approx([expected] * len(lrs))
        assert len(list(trainer.epochs())) > 0  # and it trains on with that lr


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        TrainConfig(learning_rate=0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="lr_decay must be > 0 and <= 1"):
            TrainConfig(lr_decay=bad)
    with pytest.raises(ValueError, match="valid_masks=5 exceeds num_masks=2"):
        TrainConfig(num_masks=2, valid_masks=5)
    with pytest.raises(ValueError, match="unknown training settings: hiden_units"):
        TrainConfig.from_hyperparameters({"hiden_units": 5})
    config = TrainConfig.from_hyperparameters({"hidden_layers": 2, "hidden_units": 64, "num_masks": 0}, max_epochs=7)
    assert config.hidden_sizes == (64, 64) and config.num_masks == 0 and config.max_epochs == 7
    assert config.validation_masks == 8


def test_cli_trains_and_reports_test_nll(capsys, tmp_path):
    code = main(["--dataset", "synthetic-tiny", "--hidden", "16", "--num-masks", "2", "--max-epochs", "2",
                 "--checkpoint-dir", str(tmp_path / "ckpt"), "--save-model", str(tmp_path / "model")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch    2" in out and "test NLL (2 masks):" in out and "true NLL of the test set" in out
    assert (tmp_path / "ckpt" / "trainer.pt").exists() and (tmp_path / "model" / "model.pt").exists()
    code = main(["--dataset", "synthetic-tiny", "--hidden", "16", "--num-masks", "2", "--max-epochs", "3",
                 "--checkpoint-dir", str(tmp_path / "ckpt"), "--resume"])  # fmt: skip
    assert code == 0 and "epoch    3" in capsys.readouterr().out
    code = main(["--dataset", "synthetic-tiny", "--hidden", "16", "--max-epochs", "4", "--validate-every", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "validating every 2 epoch(s)" in out and "epoch    2" in out and "epoch    3" not in out


def test_ensemble_nlls_match_separate_evaluations(tiny):
    model = Trainer(small_config(num_masks=0, ordering="agnostic", max_epochs=1), tiny.train, tiny.valid).model
    by_size = ensemble_nlls(model, tiny.valid, (4, 1, 9), batch_size=37)
    assert list(by_size) == [1, 4, 9]
    for size, nll in by_size.items():
        separate = evaluate_nll(model, tiny.valid, size)
        assert nll.mean == pytest.approx(separate.mean, rel=1e-6) and nll.stderr == pytest.approx(separate.stderr, rel=1e-5)
    with pytest.raises(ValueError, match="at least one ensemble size"):
        ensemble_nlls(model, tiny.valid, ())


def test_test_ensemble_is_chosen_on_validation(tiny):
    trainer = Trainer(small_config(num_masks=0, ordering="agnostic", max_epochs=2), tiny.train, tiny.valid)
    for _ in trainer.epochs():
        pass
    sampling = choose_test_masks(trainer.model, tiny.valid)
    assert tuple(sampling.valid_by_size) == SAMPLING_TEST_MASK_CHOICES
    assert sampling.masks == min(sampling.valid_by_size, key=sampling.valid_by_size.get)
    assert sampling.valid.mean == sampling.valid_by_size[sampling.masks]
    assert sampling.valid.mean == pytest.approx(evaluate_nll(trainer.model, tiny.valid, sampling.masks).mean, rel=1e-6)
    # Averaging probabilities over more masks of a trained model helps on average: the choice is not always 32.
    assert sampling.valid_by_size[256] < sampling.valid_by_size[32]

    requested = choose_test_masks(trainer.model, tiny.valid, requested=5)
    assert requested.masks == 5 and list(requested.valid_by_size) == [5]

    cycled = Trainer(small_config(num_masks=3, ordering="agnostic", max_epochs=1), tiny.train, tiny.valid).model
    assert choose_test_masks(cycled, tiny.valid).masks == 3  # all K masks, nothing to choose
    with pytest.raises(ValueError, match="between 1 and num_masks \\(3\\), got 4"):
        choose_test_masks(cycled, tiny.valid, requested=4)


def test_cli_chooses_the_mask_sampling_ensemble_on_validation(capsys):
    assert main(["--dataset", "synthetic-tiny", "--hidden", "16", "--num-masks", "0", "--ordering", "agnostic",
                 "--max-epochs", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "test ensemble chosen on validation: 32 masks" in out and "256 masks" in out
    masks = int(out.strip().splitlines()[-1].split("test NLL (")[1].split(" mask")[0])
    assert masks in SAMPLING_TEST_MASK_CHOICES


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--dataset", "synthetic-tiny", "--learning-rate", "-1"], "learning_rate must be > 0"),
        (
            ["--dataset", "synthetic-tiny", "--num-masks", "2", "--test-masks", "4"],
            "--test-masks must be between 1 and num_masks",
        ),
        (["--dataset", "synthetic-tiny", "--resume"], "--resume needs --checkpoint-dir"),
        (["--dataset", "synthetic-tiny", "--validate-every", "0"], "validate_every must be >= 1, got 0"),
    ],
)
def test_cli_bad_input_exits_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_reaches_good_dna_nll(capsys):
    """The documented default run; cheap here because dna is small (about 30 s on 2 cores)."""
    try:
        load_dataset("dna", download=False)
    except Exception as error:  # noqa: BLE001 - any absence reason becomes the skip reason
        pytest.skip(f"dna.npz unavailable ({error}); set MADE_DATA_DIR to ../shared/datasets")
    assert main(["--dataset", "dna"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    test_nll = float(last.split(":")[1].split("±")[0])
    assert test_nll < 90.0, last


def test_cuda_request_without_cuda_falls_back_to_cpu(tiny, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        trainer = Trainer(small_config(device="cuda", max_epochs=1), tiny.train, tiny.valid)
    assert trainer.device.type == "cpu" and trainer.model.masks(0).output.device.type == "cpu"
    assert Trainer(small_config(device="auto", max_epochs=1), tiny.train, tiny.valid).device.type == "cpu"


def test_cli_module_runs_without_runpy_warning():
    # made_core/__init__ must not import made_core.train eagerly, or `python -m made_core.train`
    # starts with runpy's "found in sys.modules" RuntimeWarning.
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(root), "PYTHONWARNINGS": "error::RuntimeWarning"}
    completed = subprocess.run([sys.executable, "-m", "made_core.train", "--help"], env=environment,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "Warning" not in completed.stderr, completed.stderr
