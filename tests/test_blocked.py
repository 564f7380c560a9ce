"""The blocked evaluation (made_core.blocked) equals the dense masked network."""

from __future__ import annotations

import itertools

import pytest
import torch

from made_core import blocked
from made_core.blocked import blocked_evaluation_pays, blocked_network
from made_core.evaluate import mask_log_probs
from made_core.model import MADE

DEPTHS = [(16,), (24, 12), (20, 12, 30)]


@pytest.mark.parametrize(
    "hidden_sizes,ordering,direct_connection", list(itertools.product(DEPTHS, ["natural", "random", "agnostic"], [False, True]))
)
@pytest.mark.parametrize("num_masks", [1, 4, 0])
@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_blocked_network_equals_the_dense_one(hidden_sizes, ordering, direct_connection, num_masks, path, monkeypatch):
    # By the compiled kernel (a slice of the columns per thread) and by torch's operations (the
    # fallback where the kernels cannot be built), ReLU or tanh units by the mask count.
    if path == "kernel" and blocked.cpu_kernels(torch.zeros(1)) is None:
        pytest.skip("the compiled kernels could not be built here")
    if path == "torch":
        monkeypatch.setattr(blocked, "cpu_kernels", lambda tensor: None)
    activation = "relu" if num_masks == 4 else "tanh"
    model = MADE(11, hidden_sizes, num_masks, ordering, direct_connection, activation=activation, seed=5).double()
    with torch.no_grad():
        for parameter in model.parameters():  # far from uniform outputs
            parameter.normal_(0, 1.0)
    x = (torch.rand(37, 11, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    with torch.no_grad():
        for mask_index in [0] if num_masks == 1 else [0, 2]:
            weights = model.masked_weights(mask_index)
            dense = model.log_prob_with(x, weights)
            # 1 block: no skipping; 40 blocks: more blocks than some layers have units.
            for blocks in (1, 2, 4, 40):
                network = blocked_network(model, mask_index, weights, blocks)
                assert torch.allclose(network.log_prob(x), dense, rtol=0, atol=1e-11), blocks


def test_blocks_skip_the_staircase():
    model = MADE(100, (200,), 1, "natural", direct_connection=True)
    network = blocked_network(model, 0, model.masked_weights(0), blocks=4)
    layers = [*network.hidden, network.output, network.direct]
    for layer in layers:
        assert layer is not None
        assert list(layer.widths) == sorted(layer.widths) and layer.widths[0] < layer.widths[-1]
    # The direct connection is strictly triangular: its last block sees all but its last input.
    assert network.direct is not None and network.direct.widths[-1] == 99
    assert network.direct.widths[0] <= 25


def test_evaluation_takes_the_blocked_path_where_it_pays(monkeypatch):
    model = MADE(30, (40,), 4, "agnostic", direct_connection=True, seed=2)
    rows = (torch.rand(50, 30, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    assert not blocked_evaluation_pays(model, len(rows)) and blocked_evaluation_pays(model, 10_000)
    assert not blocked_evaluation_pays(model.double().to(torch.bfloat16), 10_000)
    model.float()
    dense = mask_log_probs(model, rows, 4, batch_size=16)
    calls = []
    monkeypatch.setattr(blocked, "MIN_ROWS_TIMES_DIMS", 0)
    original = blocked.BlockedNetwork.log_prob_of_columns
    monkeypatch.setattr(
        blocked.BlockedNetwork, "log_prob_of_columns", lambda self, columns: calls.append(1) or original(self, columns)
    )
    assert torch.allclose(mask_log_probs(model, rows, 4, batch_size=16), dense, atol=1e-5)
    assert len(calls) == 4 * 4  # every mask, every batch of 16 of the 50 rows


@pytest.mark.parametrize("rows", [1, 37, 1300])
def test_the_kernel_slices_any_column_count_in_float32(rows):
    # Slices of at most 512 columns, at least one per thread; the columns a strided view.
    if blocked.cpu_kernels(torch.zeros(1)) is None:
        pytest.skip("the compiled kernels could not be built here")
    model = MADE(13, (30, 20), 4, "agnostic", direct_connection=True, seed=3)
    x = (torch.rand(rows, 13, generator=torch.Generator().manual_seed(2)) < 0.4).float()
    with torch.no_grad():
        weights = model.masked_weights(1)
        network = blocked_network(model, 1, weights)
        assert torch.allclose(network.log_prob(x), model.log_prob_with(x, weights), rtol=1e-6, atol=1e-4)
