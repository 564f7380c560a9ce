"""made_core.mixture: weights chosen on validation, a normalised mixture, sampling, save and load."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from made_core.mixture import MADEMixture, load_mixture, mixture_log_prob, save_mixture, select_weights
from made_core.model import MADE


def all_binary_rows(dims: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=dims)))


def tiny_mixture(dims: int = 4) -> MADEMixture:
    torch.manual_seed(0)
    first = MADE(dims, [8], num_masks=2, ordering="agnostic", seed=1)
    second = MADE(dims, [6, 6], num_masks=0, ordering="agnostic", seed=2, activation="tanh")
    for model in (first, second):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(3.0)  # far from uniform, so the models differ
    return MADEMixture((first, second), (2, 3), (0.3, 0.7))


def test_mixture_log_prob_is_the_log_of_the_weighted_mean_probability():
    per_model = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -0.5, -4.0], [-9.0, -9.0, -9.0]], dtype=torch.float64)
    weights = torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64)
    expected = torch.log(0.25 * per_model[0].exp() + 0.75 * per_model[1].exp())
    assert torch.allclose(mixture_log_prob(per_model, weights), expected)


def test_the_first_pick_is_the_best_model_and_a_model_worse_on_every_row_is_never_added():
    better, worse = torch.full((50,), -1.0), torch.full((50,), -5.0)
    assert select_weights(torch.stack([worse, better])).tolist() == [0.0, 1.0]
    assert select_weights(better[None]).tolist() == [1.0]


def test_models_good_on_different_rows_are_mixed_and_beat_each_alone():
    first = torch.cat([torch.full((20,), -1.0), torch.full((20,), -6.0)])
    second = torch.cat([torch.full((20,), -6.0), torch.full((20,), -1.0)])
    per_model = torch.stack([first, second])
    weights = select_weights(per_model)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights.tolist() == pytest.approx([0.5, 0.5], abs=0.05)
    mixed = -mixture_log_prob(per_model, weights).mean().item()
    assert mixed < min(-first.mean().item(), -second.mean().item())


def test_a_non_finite_model_is_never_picked():
    good = torch.full((10,), -2.0)
    weights = select_weights(torch.stack([torch.full((10,), math.nan), good, torch.full((10,), -math.inf)]))
    assert weights.tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="at least one model"):
        select_weights(torch.empty(0, 5))


def test_a_mixture_of_made_ensembles_is_normalised():
    mixture = tiny_mixture()
    total = mixture.log_prob(all_binary_rows(4)).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-6)  # float32 models


def test_mixture_samples_follow_its_probabilities():
    mixture = tiny_mixture(dims=3)
    rows = all_binary_rows(3)
    probabilities = mixture.log_prob(rows).exp()
    samples = mixture.sample(20000, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (20000, 3) and set(samples.unique().tolist()) <= {0.0, 1.0}
    codes = (samples * torch.tensor([4.0, 2.0, 1.0])).sum(dim=1).long()
    frequencies = torch.bincount(codes, minlength=8).double() / len(samples)
    assert torch.allclose(frequencies, probabilities, atol=0.015)


def test_a_saved_mixture_loads_back_with_the_same_probabilities(tmp_path):
    mixture = tiny_mixture()
    save_mixture(mixture, tmp_path / "mixture")
    loaded = load_mixture(tmp_path / "mixture")
    assert loaded.weights == mixture.weights and loaded.test_masks == mixture.test_masks
    rows = all_binary_rows(4)
    assert torch.allclose(loaded.log_prob(rows), mixture.log_prob(rows))


def test_a_missing_or_malformed_mixture_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MADE mixture"):
        load_mixture(tmp_path)
    (tmp_path / "mixture.json").write_text(json.dumps({"models": [{"folder": "model_0"}]}))
    with pytest.raises(ValueError, match="not a MADE mixture file"):
        load_mixture(tmp_path)


def test_weights_must_form_a_distribution_over_models_of_one_dimension():
    first, second = MADE(4, [8]), MADE(5, [8])
    with pytest.raises(ValueError, match="sum to 1"):
        MADEMixture((first,), (1,), (0.5,))
    with pytest.raises(ValueError, match="one input dimension"):
        MADEMixture((first, second), (1, 1), (0.5, 0.5))
    with pytest.raises(ValueError, match="one weight per model"):
        MADEMixture((first,), (1, 1), (1.0,))


def test_a_model_whose_cost_does_not_fit_the_budget_is_left_out():
    # Two models good on different halves: mixed without a budget, as in the test above.
    first = torch.cat([torch.full((20,), -1.0), torch.full((20,), -6.0)])
    second = torch.cat([torch.full((20,), -6.0), torch.full((20,), -1.5)])
    third = torch.cat([torch.full((20,), -6.0), torch.full((20,), -1.0)])
    per_model = torch.stack([first, second, third])
    assert select_weights(per_model).tolist()[2] > 0
    # The third costs more than the budget leaves: the second, which fits, takes its place.
    limited = select_weights(per_model, costs=[5.0, 1.0, 3.0], budget=7.0)
    assert limited[0] > 0 and limited[1] > 0 and limited[2] == 0
    # The first pick is made whatever it costs, and its cost counts; more shares of a model cost nothing.
    assert select_weights(per_model, costs=[50.0, 1.0, 1.0], budget=1.0).tolist() == [1.0, 0.0, 0.0]
    one_more = select_weights(per_model, costs=[0.5, 1.0, 1.0], budget=1.5)
    assert one_more[0] > 0 and (one_more[1] > 0) != (one_more[2] > 0)
    assert select_weights(per_model, costs=[0.0, 0.0, 0.0], budget=0.0).tolist() == pytest.approx(
        select_weights(per_model).tolist()
    )
    with pytest.raises(ValueError, match="one cost per model"):
        select_weights(per_model, costs=[1.0], budget=1.0)
