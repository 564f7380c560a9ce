"""Training precision (made_core.precision): the CUDA-only policy, and the TF32 and bf16 code
paths exercised on the CPU, where torch offers the same autocast machinery."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from made_core.config import TrainConfig
from made_core.data import load_dataset
from made_core.fused_adam import MaskedAdam, masked_adam_applies
from made_core.hyperparameters import MASK_SAMPLING
from made_core.model import MADE
from made_core.precision import effective_precision, forward_autocast, step_precision
from made_core.steps import FusedAdamStep, make_training_step
from made_core.train import Trainer
from made_core.train_cli import main


def test_precision_applies_to_cuda_only():
    assert effective_precision("bf16", torch.device("cuda")) == "bf16"
    assert effective_precision("tf32", torch.device("cuda:1")) == "tf32"
    assert effective_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.warns(UserWarning, match="'bf16' applies to CUDA only"):
        assert effective_precision("bf16", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16, got 'fp16'"):
        effective_precision("fp16", torch.device("cuda"))


def test_a_cpu_trainer_asked_for_bf16_trains_in_fp32():
    tiny = load_dataset("synthetic-tiny")
    with pytest.warns(UserWarning, match="applies to CUDA only"):
        trainer = Trainer(TrainConfig(hidden_sizes=(16,), max_epochs=1, precision="bf16"), tiny.train, tiny.valid)
    assert trainer.precision == "fp32" and trainer.train_step.precision == "fp32"


def test_bad_precision_is_named():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")


def test_cli_rejects_an_unknown_precision(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "synthetic-tiny", "--precision", "fp16"])
    assert exit_info.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err


def test_tf32_is_switched_on_for_the_step_only():
    before = torch.backends.cuda.matmul.fp32_precision
    with step_precision("tf32"):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == before
    with pytest.raises(RuntimeError), step_precision("tf32"):
        raise RuntimeError("a failing step")
    assert torch.backends.cuda.matmul.fp32_precision == before
    with step_precision("bf16"):
        assert torch.backends.cuda.matmul.fp32_precision == before


def test_bf16_autocast_covers_the_forward_pass_only():
    weight = torch.randn(4, 3)
    with forward_autocast("bf16", "cpu"):
        assert (torch.randn(2, 3) @ weight.t()).dtype == torch.bfloat16
    with forward_autocast("tf32", "cpu"):
        assert (torch.randn(2, 3) @ weight.t()).dtype == torch.float32


def _model(num_masks: int, depth: int) -> MADE:
    torch.manual_seed(0)
    return MADE(12, [24] * depth, num_masks=num_masks, ordering="agnostic", direct_connection=True, seed=3)


def _one_step(model: MADE, precision: str, fused: bool) -> tuple[float, MADE]:
    model = copy.deepcopy(model)
    if fused:
        optimizer: torch.optim.Optimizer = MaskedAdam(model, lr=1e-2)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = make_training_step(model, optimizer, precision=precision)
    assert isinstance(step, FusedAdamStep) == fused
    batch = torch.bernoulli(torch.full((32, 12), 0.3), generator=torch.Generator().manual_seed(1))
    return float(step(batch, 0)), model


@pytest.mark.parametrize(
    "num_masks,fused",
    [(1, False), (4, False), (MASK_SAMPLING, False), (4, True), (MASK_SAMPLING, True)],
    ids=["fixed-mask", "mask-products-4", "mask-products-sampling", "masked-adam-4", "masked-adam-sampling"],
)
@pytest.mark.parametrize("depth", [1, 2])
def test_a_bf16_step_matches_fp32_to_bf16_rounding(num_masks, depth, fused):
    """Every step strategy runs under autocast (the custom autograd linear included): the loss
    is bf16-close to fp32 but not equal (autocast took effect), parameters stay float32, and
    a fixed-mask model's cut weights stay zero."""
    model = _model(num_masks, depth)
    if fused and not masked_adam_applies(model, torch.device("cpu"), None):
        pytest.skip("MaskedAdam's kernels are not built here (no compiler, or MADE_FUSED_ADAM=0)")
    loss32, after32 = _one_step(model, "fp32", fused)
    loss16, after16 = _one_step(model, "bf16", fused)
    assert loss16 == pytest.approx(loss32, rel=2e-2) and loss16 != loss32
    for p32, p16 in zip(after32.parameters(), after16.parameters(), strict=True):
        assert p16.dtype == torch.float32
        assert torch.allclose(p16, p32, atol=2e-2)  # one Adam step moves each weight by about lr
    if num_masks == 1:
        for layer, mask in zip(after16.masked_layers(), after16.masks(0).in_layer_order(), strict=True):
            assert torch.all(layer.weight[mask == 0] == 0)


def test_the_dense_baseline_step_runs_under_bf16():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 12))

    class Dense(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    from made_core.steps import DenseStep

    model = Dense()
    batch = torch.bernoulli(torch.full((8, 12), 0.5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = float(F.binary_cross_entropy_with_logits(model.logits(batch), batch, reduction="sum") / len(batch))
    loss = float(DenseStep(model, torch.optim.SGD(model.parameters(), lr=0.1), precision="bf16")(batch, 0))
    assert loss == pytest.approx(expected, rel=2e-2) and loss != expected


def test_a_sweep_hands_its_precision_to_every_trial(tmp_path):
    from search.run import make_plan, parse_args

    common = ["--dataset", "synthetic-tiny", "--storage", str(tmp_path), "--space", "quick"]
    plan, _ = make_plan(parse_args([*common, "--precision", "bf16", "--name", "bf16"]))
    assert plan.trial_settings.precision == "bf16"
    plan, _ = make_plan(parse_args([*common, "--name", "default"]))
    assert plan.trial_settings.precision == "fp32"
