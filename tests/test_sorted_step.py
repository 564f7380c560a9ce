"""A one-mask MADE trained in degree-sorted coordinates makes the same updates as in its own."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import made_core.sorted_step as sorted_step
from made_core.config import TrainConfig
from made_core.fused_adam import MaskedAdam, load_kernels
from made_core.hyperparameters import MASK_SAMPLING
from made_core.model import MADE
from made_core.sorted_step import SortedFixedMaskStep, SortedMaskedAdamStep, sorted_training_applies
from made_core.steps import FixedMaskStep, FusedAdamStep
from made_core.train import Trainer


def _pair(model: MADE, make_optimizer, grad_clip=None, blocks=4):
    twin = copy.deepcopy(model)
    dense = FixedMaskStep(model, make_optimizer(model), grad_clip)
    blocked = SortedFixedMaskStep(twin, make_optimizer(twin), grad_clip, blocks=blocks)
    return dense, blocked


def _adam(model):
    return torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


@pytest.mark.parametrize("ordering", ["natural", "random", "agnostic"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_sorted_steps_make_the_same_updates(ordering, depth, direct, activation):
    torch.manual_seed(depth)
    model = MADE(11, [17] * depth, num_masks=1, ordering=ordering, direct_connection=direct, activation=activation, seed=3)
    model = model.double()
    dense, blocked = _pair(model, _adam)
    generator = torch.Generator().manual_seed(0)
    for step in range(4):
        batch = (torch.rand(9, 11, generator=generator, dtype=torch.float64) < 0.4).double()
        assert float(blocked(batch, step)) == pytest.approx(float(dense(batch, step)), abs=1e-11)
    blocked.settle()
    for (name, a), b in zip(dense.model.state_dict().items(), blocked.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-11), name
    for a, b in zip(dense.optimizer.state.values(), blocked.optimizer.state.values(), strict=True):
        assert torch.allclose(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("blocks", [1, 3, 7, 40])
def test_any_block_count_with_clipping_and_momentum(blocks):
    torch.manual_seed(1)
    model = MADE(13, [20, 9], num_masks=1, ordering="agnostic", direct_connection=True, seed=5).double()
    dense, blocked = _pair(model, _sgd, grad_clip=0.5, blocks=blocks)
    generator = torch.Generator().manual_seed(1)
    for step in range(5):
        batch = (torch.rand(6, 13, generator=generator, dtype=torch.float64) < 0.5).double()
        assert float(blocked(batch, step)) == pytest.approx(float(dense(batch, step)), abs=1e-11)
    x = (torch.rand(4, 13, generator=generator, dtype=torch.float64) < 0.5).double()
    # logits() settles first: the model is read in its own coordinates.
    assert torch.allclose(blocked.logits(x, 0), dense.logits(x, 0), rtol=0, atol=1e-11)
    assert all(p.grad is None for p in blocked.model.parameters())


def test_entering_and_settling_moves_nothing():
    model = MADE(9, [12], num_masks=1, ordering="random", seed=2)
    step = SortedFixedMaskStep(model, _adam(model))
    step(torch.ones(3, 9), 0)
    step.settle()
    before = copy.deepcopy(model.state_dict()), copy.deepcopy(step.optimizer.state_dict())
    step.enter()
    assert not torch.equal(model.output_layer.weight, before[0]["output_layer.weight"])  # moved
    step.settle()
    for key, value in before[0].items():
        assert torch.equal(model.state_dict()[key], value), key
    for index, state in before[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(step.optimizer.state_dict()["state"][index][key], value), key


def test_the_rule_takes_large_inputs_and_long_intervals_in_full_precision(monkeypatch):
    model = MADE(sorted_step.MIN_INPUT_DIM, [8], num_masks=1)
    enough = sorted_step.MIN_STEPS_BETWEEN_SETTLES
    assert sorted_training_applies(model, "fp32", enough)
    monkeypatch.setenv("MADE_SORTED_STEP", "0")
    assert not sorted_training_applies(model, "fp32", enough)
    monkeypatch.delenv("MADE_SORTED_STEP")
    assert not sorted_training_applies(model, "fp32", enough - 1)
    assert not sorted_training_applies(model, "bf16", enough)
    assert not sorted_training_applies(MADE(sorted_step.MIN_INPUT_DIM - 1, [8], num_masks=1), "fp32", enough)
    assert not sorted_training_applies(MADE(sorted_step.MIN_INPUT_DIM, [8], num_masks=2), "fp32", enough)


def test_a_trainer_with_sorted_steps_trains_the_same_model(monkeypatch):
    rows = (np.random.default_rng(0).random((120, 10)) < 0.3).astype(np.float32)
    config = TrainConfig(hidden_sizes=(16,), num_masks=1, ordering="agnostic", batch_size=20, max_epochs=3, seed=4)
    plain = Trainer(config, rows, rows[:30])
    monkeypatch.setattr(sorted_step, "MIN_INPUT_DIM", 2)
    monkeypatch.setattr(sorted_step, "MIN_STEPS_BETWEEN_SETTLES", 1)
    blocked = Trainer(config, rows, rows[:30])
    assert isinstance(blocked.train_step, SortedFixedMaskStep) and not isinstance(plain.train_step, SortedFixedMaskStep)
    for a, b in zip(plain.epochs(), blocked.epochs(), strict=True):
        assert b.valid_nll == pytest.approx(a.valid_nll, abs=1e-4) and b.train_nll == pytest.approx(a.train_nll, abs=1e-4)
    for (name, a), b in zip(plain.model.state_dict().items(), blocked.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), name


needs_kernels = pytest.mark.skipif(load_kernels() is None, reason="the fused Adam kernels could not be built here")


@needs_kernels
@pytest.mark.parametrize("ordering", ["natural", "random", "agnostic"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("grad_clip", [None, 0.2])  # clipping's norm reads the cut corners too
def test_float32_adam_runs_on_the_staircase_only_and_makes_torch_adams_updates(ordering, depth, direct, grad_clip):
    torch.manual_seed(depth)
    model = MADE(14, [19] * depth, num_masks=1, ordering=ordering, direct_connection=direct, seed=6)
    dense, blocked = _pair(model, _adam, grad_clip)
    assert blocked.kernels is not None and dense.optimizer.defaults["lr"] == 1e-2
    generator = torch.Generator().manual_seed(2)
    for step in range(6):
        batch = (torch.rand(10, 14, generator=generator) < 0.4).float()
        assert float(blocked(batch, step)) == pytest.approx(float(dense(batch, step)), abs=1e-4)
    blocked.enter()
    for layer, stairs in zip(blocked.model.masked_layers(), blocked.stairs, strict=True):
        columns = torch.arange(layer.weight.shape[1])
        right = columns.unsqueeze(0) >= stairs.prefixes.unsqueeze(1)  # right of the staircase
        state = blocked.optimizer.state[layer.weight]
        for tensor in (layer.weight, state["exp_avg"], state["exp_avg_sq"]):
            assert torch.count_nonzero(tensor[right]) == 0
    blocked.settle()
    # 6 steps of lr 1e-2: float32 rounding apart, torch's weights and Adam state, in its layout.
    for (name, a), b in zip(dense.model.state_dict().items(), blocked.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=2e-5), name
    dense_state, blocked_state = dense.optimizer.state_dict()["state"], blocked.optimizer.state_dict()["state"]
    assert dense_state.keys() == blocked_state.keys()
    for index, expected in dense_state.items():
        assert float(blocked_state[index]["step"]) == float(expected["step"]) == 6
        assert blocked_state[index]["step"].dtype == expected["step"].dtype
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(blocked_state[index][key], expected[key], rtol=1e-3, atol=1e-6), (index, key)


@needs_kernels
def test_torch_adam_carries_on_from_the_kernels_state_and_odd_adams_keep_torchs_step():
    model = MADE(12, [16], num_masks=1, ordering="random", seed=1)
    dense, blocked = _pair(model, _adam)
    batch = (torch.rand(8, 12, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    for step in range(3):
        dense(batch, step), blocked(batch, step)
    blocked.settle()
    carried_on = FixedMaskStep(blocked.model, blocked.optimizer)  # torch's Adam, from the kernels' state
    for step in range(3, 6):
        assert float(carried_on(batch, step)) == pytest.approx(float(dense(batch, step)), abs=1e-4)
    for a, b in zip(dense.model.parameters(), blocked.model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=2e-5)
    for make_optimizer in (
        lambda m: torch.optim.Adam(m.parameters(), amsgrad=True),
        lambda m: torch.optim.AdamW(m.parameters()),
        lambda m: torch.optim.Adam(m.double().parameters()),
    ):
        twin = copy.deepcopy(model)
        assert SortedFixedMaskStep(twin, make_optimizer(twin)).kernels is None


@needs_kernels
@pytest.mark.parametrize("ordering", ["natural", "random", "agnostic"])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("num_masks", [3, MASK_SAMPLING])
def test_sorted_masked_adam_steps_make_fused_adams_updates(ordering, depth, direct, num_masks):
    torch.manual_seed(depth)
    model = MADE(14, [19] * depth, num_masks=num_masks, ordering=ordering, direct_connection=direct, seed=6)
    twin = copy.deepcopy(model)
    fused = FusedAdamStep(model, MaskedAdam(model, lr=1e-2, weight_decay=1e-3))
    blocked = SortedMaskedAdamStep(twin, MaskedAdam(twin, lr=1e-2, weight_decay=1e-3))
    generator = torch.Generator().manual_seed(2)
    for step in range(7):
        batch = (torch.rand(10, 14, generator=generator) < 0.4).float()
        assert float(blocked(batch, step)) == pytest.approx(float(fused(batch, step)), abs=1e-4)
        if step == 3:  # weights written elsewhere: the step sorts them afresh
            with torch.no_grad():
                for a, b in zip(model.parameters(), twin.parameters(), strict=True):
                    a.mul_(0.5), b.mul_(0.5)
    # 7 steps of lr 1e-2: float32 rounding apart, the same weights (cut entries included) and Adam state.
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=2e-5), name
    fused_state, blocked_state = fused.optimizer.state_dict()["state"], blocked.optimizer.state_dict()["state"]
    for index, expected in fused_state.items():
        assert float(blocked_state[index]["step"]) == float(expected["step"]) == 7
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(blocked_state[index][key], expected[key], rtol=1e-3, atol=1e-6), (index, key)
    assert all(p.grad is None for p in twin.parameters())


@needs_kernels
def test_many_mask_models_train_sorted_where_it_pays(monkeypatch):
    rows = (np.random.default_rng(0).random((120, 10)) < 0.3).astype(np.float32)
    config = TrainConfig(hidden_sizes=(16,), num_masks=4, ordering="agnostic", batch_size=20, max_epochs=3, seed=4)
    plain = Trainer(config, rows, rows[:30])
    monkeypatch.setattr(sorted_step, "MIN_INPUT_DIM", 2)
    blocked = Trainer(config, rows, rows[:30])
    assert isinstance(blocked.train_step, SortedMaskedAdamStep) and isinstance(plain.train_step, FusedAdamStep)
    for a, b in zip(plain.epochs(), blocked.epochs(), strict=True):
        assert b.valid_nll == pytest.approx(a.valid_nll, abs=1e-4) and b.train_nll == pytest.approx(a.train_nll, abs=1e-4)
    monkeypatch.setenv("MADE_SORTED_STEP", "0")
    assert isinstance(Trainer(config, rows, rows[:30]).train_step, FusedAdamStep)


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_loss_and_its_logit_gradient_are_bces(path, dtype, monkeypatch):
    # One pass by the compiled kernel, or torch's operations where it cannot be built: the mean
    # BCE-with-logits of the minibatch and its gradient, written over the logits.
    if path == "kernel" and load_kernels() is None:
        pytest.skip("the compiled kernels could not be built here")
    if path == "torch":
        monkeypatch.setattr(sorted_step, "likelihood_kernels", lambda logits, x: None)
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(37, 70, generator=generator, dtype=torch.float64) * 8).to(dtype)  # (D, B)
    x = (torch.rand(37, 70, generator=generator) < 0.3).to(dtype)
    tracked = logits.clone().double().requires_grad_(True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(tracked, x.double(), reduction="sum") / 70
    expected.backward()
    loss, gradient = sorted_step.loss_and_logit_gradient_(logits, x)
    assert gradient.data_ptr() == logits.data_ptr()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert float(loss) == pytest.approx(expected.item(), rel=tolerance)
    assert torch.allclose(gradient.double(), tracked.grad, rtol=0, atol=tolerance)
