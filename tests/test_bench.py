"""The benchmark: its quick mode runs end to end and its timed step is the Trainer's step.

No timing assertions: the machines that run the suite are shared and noisy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import throughput as bench
from benchmarks.throughput import (
    BenchSettings,
    TrainingResult,
    UnmaskedMLP,
    combine_processes,
    load_bench_data,
    main,
    matmul_flop,
    train_block,
    training_result_from_json,
)
from made_core.config import TrainConfig
from made_core.model import MADE
from made_core.steps import DenseStep
from made_core.train import Trainer


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_quick_run_reports_both_sections(tmp_path, capsys):
    threads = torch.get_num_threads()
    json_path = tmp_path / "bench.json"
    # One thread keeps the quick run fast when other processes oversubscribe the CPUs.
    assert main(["--quick", "--data", "random", "--threads", "1", "--json", str(json_path)]) == 0
    assert torch.get_num_threads() == threads, "main() must restore the thread count"

    out = capsys.readouterr().out
    assert "1. Training throughput, MADE vs unmasked MLP" in out
    assert "2. 32-mask ensemble evaluation" in out
    assert "fraction of dense" in out

    report = json.loads(json_path.read_text())
    configurations = [(tuple(row["hidden_sizes"]), row["num_masks"]) for row in report["training"]]
    assert configurations == [((500,), 1), ((500,), 32), ((500,), 0), ((500, 500), 1), ((500, 500), 32), ((500, 500), 0)]
    for row in report["training"]:
        for key in ("ratio", "cpu_time_ratio", "made_examples_per_second", "mlp_examples_per_second"):
            assert _finite_positive(row[key]), (key, row)
    assert [tuple(row["hidden_sizes"]) for row in report["evaluation"]] == [(500,), (500, 500)]
    for row in report["evaluation"]:
        assert row["n_masks"] == 32
        for key in ("fraction_of_dense", "fraction_of_dense_by_cpu_time", "examples_per_second",
                    "ensemble_gflops_per_second", "dense_gflops_per_second"):  # fmt: skip
            assert _finite_positive(row[key]), (key, row)
        assert math.isfinite(row["nll"])
    # The table shows a verdict for each row with a target (1 and 32 masks; mask sampling has
    # none) and the figures it was computed from.
    training_table = out.split("2. 32-mask ensemble evaluation")[0]
    assert sum(training_table.count(word) for word in ("PASS", "MISS")) == 4
    assert out.count(" fresh ") == 2
    # Section 3: sampling, with a verdict for the one-hidden-layer row only.
    evaluation_table = out.split("2. 32-mask ensemble evaluation")[1].split("3. Sampling")[0]
    assert sum(evaluation_table.count(word) for word in ("PASS", "MISS")) == 2 and " 0.95 " in evaluation_table
    assert "3. Sampling" in out and [tuple(row["hidden_sizes"]) for row in report["sampling"]] == [(500,), (500, 500)]
    assert all(_finite_positive(row["speedup"]) for row in report["sampling"])
    assert f"{report['training'][0]['ratio']:.3f}" in out


def test_timed_step_is_the_trainers_step():
    """train_block replicates Trainer.train_epoch: one epoch of each gives identical weights."""
    rows = (np.random.default_rng(1).random((200, 12)) < 0.5).astype(np.float32)
    config = TrainConfig(hidden_sizes=(16,), num_masks=3, ordering="agnostic", direct_connection=True,
                         batch_size=50, max_epochs=1, valid_masks=1)  # fmt: skip
    trainer = Trainer(config, rows, rows[:10])
    replica = Trainer(config, rows, rows[:10])  # the same seed: the same initial weights and optimiser
    trainer.train_epoch()
    first_epoch_order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(config.seed))
    train_block(replica.train_step, replica.train_rows, first_epoch_order, 0, len(rows) // 50, 50)
    expected, actual = trainer.model.state_dict(), replica.model.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_unmasked_mlp_has_the_made_layers_without_masks():
    torch.manual_seed(0)
    made = MADE(10, (7, 5), num_masks=2, ordering="agnostic", direct_connection=True)
    mlp = UnmaskedMLP(made)
    made_state, mlp_state = made.state_dict(), mlp.state_dict()
    assert made_state.keys() == mlp_state.keys()
    assert all(torch.equal(made_state[name], mlp_state[name]) for name in made_state)

    x = (torch.rand(4, 10) < 0.5).float()
    hidden = F.relu(F.linear(x, made.hidden_layers[0].weight, made.hidden_layers[0].bias))
    hidden = F.relu(F.linear(hidden, made.hidden_layers[1].weight, made.hidden_layers[1].bias))
    expected = F.linear(hidden, made.output_layer.weight, made.output_layer.bias) + x @ made.direct_layer.weight.T
    assert torch.allclose(DenseStep(mlp, torch.optim.SGD(mlp.parameters(), lr=0.0)).logits(x, 5), expected, atol=1e-6)
    assert not torch.allclose(made.logits(x, 0), expected, atol=1e-3)  # the masks do matter for the MADE

    with torch.no_grad():
        mlp.output_layer.weight.add_(1.0)
    assert torch.equal(made.output_layer.weight, made_state["output_layer.weight"]), "the copy must not share weights"


def test_matmul_flop_counts_the_ensemble_matmuls():
    made = MADE(784, (500,), num_masks=32, direct_connection=False)
    assert matmul_flop(made, rows=10_000, n_masks=32) == 32 * 2 * 10_000 * (784 * 500 + 500 * 784)
    with_direct = MADE(784, (500, 500), num_masks=32, direct_connection=True)
    per_row = 784 * 500 + 500 * 500 + 500 * 784 + 784 * 784
    assert matmul_flop(with_direct, rows=100, n_masks=1) == 2 * 100 * per_row


def test_data_falls_back_to_random_rows_without_the_mnist_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MADE_DATA_DIR", str(tmp_path))
    data = load_bench_data(BenchSettings.quick_run(data="auto"))
    assert data.description.startswith("random") and str(tmp_path) in data.description
    assert data.training_rows.shape == (500, 784) and data.evaluation_rows.shape == (200, 784)
    assert data.training_rows.dtype == np.float32 and set(np.unique(data.evaluation_rows)) <= {0.0, 1.0}


def _result(num_masks: int, ratio: float, round_ratios: tuple[float, ...], made_rate: float) -> TrainingResult:
    return TrainingResult(
        hidden_sizes=(500,), num_masks=num_masks, made_examples_per_second=made_rate, mlp_examples_per_second=1000.0,
        ratio=ratio, ratio_quartiles=(min(round_ratios), max(round_ratios)), cpu_time_ratio=ratio,
        cpu_time_ratio_quartiles=(ratio, ratio), rounds=len(round_ratios), steps_per_block=4,
        round_ratios=round_ratios, round_cpu_time_ratios=round_ratios,
    )  # fmt: skip


def test_processes_combine_into_medians_and_pooled_quartiles():
    per_process = [
        [_result(1, 0.80, (0.7, 0.8, 0.9), 800.0), _result(32, 1.00, (1.0, 1.0, 1.0), 1000.0)],
        [_result(1, 0.95, (0.9, 0.95, 1.0), 950.0), _result(32, 0.90, (0.9, 0.9, 0.9), 900.0)],
        [_result(1, 0.92, (0.92, 0.92, 0.92), 920.0), _result(32, 0.70, (0.6, 0.7, 0.8), 700.0)],
    ]
    one_mask, many_masks = combine_processes(per_process)
    assert (one_mask.num_masks, many_masks.num_masks) == (1, 32)
    assert one_mask.process_ratios == (0.80, 0.95, 0.92)
    assert one_mask.ratio == 0.92 and one_mask.verdict == "MISS"  # the median process, not the mean (0.89); target 1.2
    assert many_masks.verdict == "MISS" and dataclasses.replace(many_masks, ratio=1.0).verdict == "PASS"  # target 1.0
    assert many_masks.ratio == 0.90 and many_masks.made_examples_per_second == 900.0
    assert one_mask.rounds == 9 and len(one_mask.round_ratios) == 9
    assert one_mask.ratio_quartiles == pytest.approx((0.9, 0.92))  # inclusive quartiles of the 9 pooled rounds
    assert training_result_from_json(json.loads(json.dumps(dataclasses.asdict(one_mask)))) == one_mask


def test_training_section_runs_in_fresh_processes(tmp_path, capsys):
    json_path = tmp_path / "bench.json"
    argv = ["--quick", "--data", "random", "--threads", "1", "--processes", "2", "--training-only", "--json", str(json_path)]
    assert main(argv) == 0
    report = json.loads(json_path.read_text())
    assert report["evaluation"] == [] and report["settings"]["processes"] == 2
    for row in report["training"]:
        assert len(row["process_ratios"]) == 2 and all(_finite_positive(ratio) for ratio in row["process_ratios"])
        assert row["ratio"] == pytest.approx(sum(row["process_ratios"]) / 2)  # the median of two
        assert row["rounds"] == 2 * 3 and len(row["round_ratios"]) == 6
    out = capsys.readouterr().out
    assert "measured in 2 fresh processes" in out and "per process" in out
    assert "2. 32-mask ensemble evaluation" not in out


def test_a_failing_measurement_process_is_reported(monkeypatch):
    monkeypatch.setattr(
        bench, "child_command", lambda settings, path: [sys.executable, "-c", "raise SystemExit('no torch here')"]
    )
    with pytest.raises(RuntimeError, match=r"benchmark process 1 failed \(exit 1\):\s+no torch here"):
        bench.training_in_processes(BenchSettings.quick_run(processes=2), log=lambda line: None)


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--threads", "0"], ["--processes", "0"], ["--device", "tpu"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        main(argv)
