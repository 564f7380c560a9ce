"""MADE's defining properties: autoregressive, normalised, probability-space ensembles."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import made_core.model as model_module
from made_core.evaluate import evaluate_nll, example_log_probs
from made_core.hyperparameters import MASK_SAMPLING
from made_core.masks import input_degrees, make_masks, make_ordering
from made_core.model import MADE, bernoulli_log_likelihood, load_model, save_model
from made_core.steps import FixedMaskStep, make_training_step

CONNECTIVITIES = [(1, "natural"), (1, "random"), (4, "natural"), (4, "random"), (4, "agnostic"), (MASK_SAMPLING, "agnostic")]
DEPTHS = [(30,), (30, 25), (25, 30, 28)]


def all_binary_vectors(dim: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=dim)), dtype=torch.float64)


@pytest.mark.parametrize("num_masks,ordering", CONNECTIVITIES)
@pytest.mark.parametrize("hidden_sizes", DEPTHS)
@pytest.mark.parametrize("direct_connection", [False, True])
def test_autoregressive_property(num_masks, ordering, hidden_sizes, direct_connection):
    dim = 7
    model = MADE(dim, hidden_sizes, num_masks, ordering, direct_connection, "tanh", seed=3).double()
    for mask_index in range(3 if num_masks != 1 else 1):
        order = model.masks(mask_index).order
        position = input_degrees(order) - 1
        x = torch.rand(5, dim, dtype=torch.float64, requires_grad=True)
        jacobian = torch.autograd.functional.jacobian(lambda v, index=mask_index: model.logits(v, index).sum(0), x)
        # jacobian[d, b, j] = d sum_b logit_{b,d} / d x_{b,j}; rows are independent in b.
        dependence = jacobian.abs().sum(dim=1)
        masks = model.masks(mask_index)
        paths = masks.output
        for hidden_mask in reversed(masks.hidden):
            paths = paths @ hidden_mask
        if direct_connection:
            paths = paths + masks.direct
        # With tanh and random inputs every structural path carries gradient.
        assert torch.equal(dependence > 0, paths > 0)
        for d in range(dim):
            for j in range(dim):
                if position[j] >= position[d]:
                    assert dependence[d, j] == 0, f"logit {d} depends on input {j} not before it"
            if position[d] > 0:
                earlier = [j for j in range(dim) if position[j] < position[d]]
                assert dependence[d, earlier].sum() > 0, f"logit {d} ignores every earlier input"


@pytest.mark.parametrize("num_masks,ordering", CONNECTIVITIES)
@pytest.mark.parametrize("direct_connection", [False, True])
def test_training_logits_equal_logits_with_the_same_gradients(num_masks, ordering, direct_connection):
    # A fixed-mask model trains with its cut weights at zero and no weight x mask products;
    # values, weight gradients and input Jacobian (hence the autoregressive property) must
    # be those of logits() under the step's mask.
    torch.manual_seed(0)
    model = MADE(7, (30, 25), num_masks, ordering, direct_connection, "tanh", seed=3).double()
    x = torch.rand(5, 7, dtype=torch.float64)
    before = model.log_prob(x)
    train_step = make_training_step(model, torch.optim.SGD(model.parameters(), lr=0.0))
    if isinstance(train_step, FixedMaskStep):
        train_step.zero_cut_weights()
    assert torch.allclose(model.log_prob(x), before, rtol=0, atol=1e-12), "zeroing cut weights changed the model"
    for step in range(3):
        mask_index = model.training_mask_index(step)
        results = []
        for compute in (lambda v, s=step: train_step.logits(v, s), lambda v, index=mask_index: model.logits(v, index)):
            model.zero_grad()
            logits = compute(x)
            (logits * torch.linspace(-1, 1, 7, dtype=torch.float64)).sum().backward()
            jacobian = torch.autograd.functional.jacobian(lambda row, f=compute: f(row[None])[0], x[0])
            results.append((logits.detach(), [p.grad.clone() for p in model.parameters()], jacobian))
        (fast_logits, fast_grads, fast_jacobian), (logits, grads, jacobian) = results
        assert torch.allclose(fast_logits, logits, rtol=0, atol=1e-12)
        assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(fast_grads, grads))
        assert torch.equal(fast_jacobian == 0, jacobian == 0)
        assert torch.allclose(fast_jacobian, jacobian, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3, fused=True),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.Adagrad(p, lr=1e-2, weight_decay=1e-3),
        lambda p: torch.optim.Adadelta(p, lr=1.0, weight_decay=1e-3),
        lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-3),
    ],
    ids=["adam", "adam-fused", "adamw", "adagrad", "adadelta", "sgd-momentum"],
)
def test_fixed_mask_training_keeps_cut_weights_zero(make_optimizer):
    torch.manual_seed(0)
    fast = MADE(8, (20, 16), 1, "random", direct_connection=True, seed=2).double()
    reference = MADE(8, (20, 16), 1, "random", direct_connection=True, seed=2).double()
    reference.load_state_dict(fast.state_dict())
    fast_optimizer, reference_optimizer = make_optimizer(fast.parameters()), make_optimizer(reference.parameters())
    fast_step = FixedMaskStep(fast, fast_optimizer, grad_clip=1.0)  # zeroes the cut weights before its first step
    rows = (torch.rand(64, 8, generator=torch.Generator().manual_seed(1)) < 0.4).double()
    for step in range(30):
        batch = rows[(step % 4) * 16 : (step % 4 + 1) * 16]
        fast_step(batch, step)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(reference.logits(batch, 0), batch, reduction="sum") / 16
        reference_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        reference_optimizer.step()
    for fast_layer, reference_layer, mask in zip(fast.masked_layers(), reference.masked_layers(), fast.masks(0).in_layer_order()):
        assert torch.all(fast_layer.weight[mask == 0] == 0), "an optimiser step moved a cut weight"
        assert torch.allclose(fast_layer.weight * mask, reference_layer.weight * mask, rtol=0, atol=1e-10)
    assert torch.allclose(fast.log_prob(rows), reference.log_prob(rows), rtol=0, atol=1e-9)


def test_mask_sampling_training_masks_are_not_cached():
    # Each training mask of a mask-sampling model is used once; caching it would evict the
    # evaluation ensemble's masks and claim fresh memory every step.
    model = MADE(6, (10,), num_masks=MASK_SAMPLING, ordering="agnostic")
    x = torch.rand(3, 6)
    ensemble = model.masks(0)
    train_step = make_training_step(model, torch.optim.SGD(model.parameters(), lr=0.0))
    for step in range(5):
        train_step.logits(x, step)
    assert list(model._mask_cache) == [0] and model.masks(0) is ensemble


def cut_weights_are_zero(model: MADE) -> bool:
    return all(
        torch.all(layer.weight[mask == 0] == 0) for layer, mask in zip(model.masked_layers(), model.masks(0).in_layer_order())
    )


def test_fixed_mask_step_zeroes_cut_weights_whenever_something_else_wrote_them():
    model = MADE(6, (10,), num_masks=1)
    x = torch.rand(3, 6)
    train_step = FixedMaskStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not cut_weights_are_zero(model)  # a fresh model's initial weights are dense
    assert torch.allclose(train_step.logits(x, 0), model.logits(x, 0), rtol=0, atol=1e-6)
    assert cut_weights_are_zero(model)
    train_step((x > 0.5).float(), 0)
    assert cut_weights_are_zero(model)
    model.load_state_dict(MADE(6, (10,), num_masks=1, seed=4).state_dict())  # loaded weights have cut entries
    assert not cut_weights_are_zero(model)
    assert torch.allclose(train_step.logits(x, 1), model.logits(x, 0), rtol=0, atol=1e-6)
    assert cut_weights_are_zero(model)
    several = MADE(6, (10,), num_masks=3)
    several_step = make_training_step(several, torch.optim.SGD(several.parameters(), lr=0.1))
    assert torch.equal(several_step.logits(x, 4), several.logits(x, 1))  # step 4 uses mask 4 mod 3
    with pytest.raises(ValueError, match="one mask"):
        FixedMaskStep(several, torch.optim.SGD(several.parameters(), lr=0.1))


def test_masks_follow_paper_degree_rules():
    dim, hidden = 9, (20, 15)
    masks = make_masks(dim, hidden, "agnostic", seed=1, mask_index=2, direct_connection=True)
    degrees_in = input_degrees(masks.order)
    # Recover hidden degrees: a unit of degree m sees exactly the inputs of degree <= m.
    first = masks.hidden[0]
    degrees_1 = first.sum(1).long()  # inputs of degree 1..m -> m of them
    assert torch.equal(first, (degrees_1[:, None] >= degrees_in[None, :]).float())
    assert degrees_1.min() >= 1 and degrees_1.max() <= dim - 1
    assert torch.equal(masks.direct, (degrees_in[:, None] > degrees_in[None, :]).float())
    assert masks.direct.sum() == dim * (dim - 1) / 2


def test_orderings():
    assert torch.equal(make_ordering("natural", 5, 0, 3), torch.arange(5))
    random_orders = {tuple(make_ordering("random", 8, 0, k).tolist()) for k in range(4)}
    assert len(random_orders) == 1
    agnostic_orders = {tuple(make_ordering("agnostic", 8, 0, k).tolist()) for k in range(4)}
    assert len(agnostic_orders) == 4
    assert sorted(next(iter(random_orders))) == list(range(8))
    with pytest.raises(ValueError, match="unknown ordering 'foo'"):
        make_ordering("foo", 5, 0, 0)


def test_masks_deterministic_given_seed():
    a = make_masks(10, (16, 16), "agnostic", seed=5, mask_index=7)
    b = make_masks(10, (16, 16), "agnostic", seed=5, mask_index=7)
    c = make_masks(10, (16, 16), "agnostic", seed=6, mask_index=7)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden, b.hidden))
    assert not all(torch.equal(x, y) for x, y in zip(a.hidden, c.hidden))


@pytest.mark.parametrize("num_masks,ordering", CONNECTIVITIES)
@pytest.mark.parametrize("direct_connection", [False, True])
def test_normalised_single_masks_and_ensembles(num_masks, ordering, direct_connection):
    dim = 9
    model = MADE(dim, (24, 24), num_masks, ordering, direct_connection, seed=11).double()
    with torch.no_grad():
        for parameter in model.parameters():  # large weights: far from uniform outputs
            parameter.normal_(0, 1.5)
    x = all_binary_vectors(dim)
    with torch.no_grad():
        for n_masks in [1] if num_masks == 1 else [1, 3]:
            total = model.log_prob(x, n_masks=n_masks).exp().sum().item()
            assert total == pytest.approx(1.0, abs=1e-5), (n_masks, total)
        if num_masks != 1:
            # a single non-zero mask index is normalised too
            assert model.mask_log_prob(x, 2).exp().sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("dim", [1, 2, 15, 16, 17, 100, 257])
def test_bernoulli_log_likelihood_without_autograd_equals_bce(dim, layout, path, monkeypatch):
    # Logits from 0.1 to 100 in magnitude: the chunked products of 1 + exp(-|l|) must not overflow.
    # Both layouts, (B, D) reduced over dim 1 and (D, B) over dim 0, by the compiled kernel and by
    # torch's operations (the fallback where the kernels cannot be built).
    if path == "kernel" and model_module.cpu_kernels(torch.zeros(1)) is None:
        pytest.skip("the compiled kernels could not be built here")
    if path == "torch":
        monkeypatch.setattr(model_module, "cpu_kernels", lambda tensor: None)
    generator = torch.Generator().manual_seed(dim)
    scales = torch.tensor([0.1, 1.0, 5.0, 30.0, 100.0], dtype=torch.float64)
    logits = (
        torch.randn(70, dim, generator=generator, dtype=torch.float64) * scales[torch.randint(0, 5, (70, 1), generator=generator)]
    )
    x = (torch.rand(70, dim, generator=generator) < 0.4).double()
    exact = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    reduced = 1 if layout == "rows" else 0

    def arranged(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if layout == "rows" else tensor.t().contiguous()

    with torch.no_grad():
        double = bernoulli_log_likelihood(arranged(logits), arranged(x), dim=reduced)
        assert torch.allclose(double, exact, rtol=0, atol=1e-10)
        single = bernoulli_log_likelihood(arranged(logits).float(), arranged(x).float(), dim=reduced).double()
        assert torch.allclose(single, exact, rtol=1e-6, atol=1e-4)
    # With autograd it is BCE-with-logits itself, with its gradients.
    tracked = logits.clone().requires_grad_(True)
    value = bernoulli_log_likelihood(tracked, x)
    value.sum().backward()
    assert torch.allclose(value.detach(), exact, atol=1e-12)
    assert torch.allclose(tracked.grad, x - torch.sigmoid(logits), atol=1e-12)


@pytest.mark.parametrize("hidden_sizes", [(24,), (24, 24)])
def test_evaluation_logits_equal_the_autograd_ones(hidden_sizes):
    # Without autograd the direct connection accumulates into the output layer's product.
    model = MADE(9, hidden_sizes, 4, "agnostic", direct_connection=True, seed=3)
    x = (torch.rand(32, 9, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    weights = model.masked_weights(2)
    tracked = model.logits_with(x, weights)
    assert tracked.requires_grad
    with torch.no_grad():
        evaluated = model.logits_with(x, weights)
    assert torch.allclose(evaluated, tracked.detach(), atol=1e-6)


def test_ensemble_averages_probabilities_not_logits():
    dim, n_masks = 8, 4
    model = MADE(dim, (32,), n_masks, "agnostic", seed=2).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 1.0)
    x = all_binary_vectors(dim)
    with torch.no_grad():
        single = torch.stack([model.mask_log_prob(x, k) for k in range(n_masks)])
        expected = torch.logsumexp(single, 0) - math.log(n_masks)
        ensemble = model.log_prob(x, n_masks=n_masks)
        assert torch.allclose(ensemble, expected, atol=1e-10)
        mean_logits = torch.stack([model.logits(x, k) for k in range(n_masks)]).mean(0)
        logit_average = model._log_likelihoods(mean_logits, x).sum(1)
        assert (ensemble - logit_average).abs().max() > 1e-3
        # The logit average is not even a distribution; the ensemble is.
        assert ensemble.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
        assert abs(logit_average.exp().sum().item() - 1.0) > 1e-3


def test_ensemble_size_checked():
    model = MADE(5, (8,), num_masks=2)
    with pytest.raises(ValueError, match="exceeds the model's 2 masks"):
        model.log_prob(torch.zeros(1, 5), n_masks=3)
    with pytest.raises(ValueError, match="out of range"):
        model.logits(torch.zeros(1, 5), mask_index=2)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ordering"):
        MADE(5, (8,), ordering="backwards")
    with pytest.raises(ValueError, match="activation"):
        MADE(5, (8,), activation="gelu")
    with pytest.raises(ValueError, match="num_masks"):
        MADE(5, (8,), num_masks=-1)
    with pytest.raises(ValueError, match="hidden_sizes"):
        MADE(5, ())


def test_masks_cached_per_index_and_device():
    model = MADE(6, (10,), num_masks=3, ordering="natural", direct_connection=False)
    assert model.masks(1) is model.masks(1)
    assert model.masks(1) is not model.masks(2)
    model.double()  # any _apply clears the cache; masks rebuilt identical
    assert torch.equal(model.masks(1).output, make_masks(6, (10,), "natural", 0, 1).output)


def test_sampling_mode_uses_fresh_masks():
    model = MADE(12, (30,), num_masks=MASK_SAMPLING, ordering="agnostic")
    assert [model.training_mask_index(s) for s in range(4)] == [0, 1, 2, 3]
    cycled = MADE(12, (30,), num_masks=3)
    assert [cycled.training_mask_index(s) for s in range(5)] == [0, 1, 2, 0, 1]
    for step in range(100):
        model.masks(step)
    assert len(model._mask_cache) == 100  # a few KB each: far under the byte budget


def test_sampled_mask_cache_is_bounded_in_bytes(monkeypatch):
    import made_core.model as model_module

    model = MADE(12, (30,), num_masks=MASK_SAMPLING, ordering="agnostic", direct_connection=True)
    one_set = (30 * 12 + 12 * 30 + 12 * 12) * 4  # float32 hidden, output and direct masks
    monkeypatch.setattr(model_module, "_SAMPLED_MASK_CACHE_BYTES", 5 * one_set + 1)
    for step in range(20):
        model.masks(step)
    assert list(model._mask_cache) == list(range(15, 20))  # the newest five
    monkeypatch.setattr(model_module, "_SAMPLED_MASK_CACHE_BYTES", 1)  # never below one set
    model.masks(20)
    assert list(model._mask_cache) == [20]


def with_float_then_bool_masks(monkeypatch, run):
    """``run(mask_dtype)`` with the CPU's float masks, then with CUDA's bool masks forced on the
    CPU, each after ``torch.manual_seed(0)`` so that both build the same initial weights."""
    import made_core.model as model_module

    results = []
    for dtype in (torch.float64, torch.bool):
        if dtype is torch.bool:
            monkeypatch.setattr(model_module, "mask_dtype", lambda weight: torch.bool)
        torch.manual_seed(0)
        results.append(run(dtype))
    return results


def test_bool_masks_give_the_same_model(monkeypatch):
    # CUDA caches masks as bool; force that path on the CPU: identical logits and gradients,
    # and still autoregressive.
    x = (torch.rand(5, 9, generator=torch.Generator().manual_seed(1)) < 0.5).double()

    def run(dtype):
        model = MADE(9, (20, 15), num_masks=3, ordering="agnostic", direct_connection=True, seed=3).double()
        assert model.masks(1).output.dtype == dtype
        logits = model.logits(x, 1)
        logits.sum().backward()
        return model, logits.detach(), [p.grad.clone() for p in model.parameters()]

    (_, float_logits, float_grads), (model, bool_logits, bool_grads) = with_float_then_bool_masks(monkeypatch, run)
    assert torch.equal(float_logits, bool_logits)
    assert all(torch.equal(a, b) for a, b in zip(float_grads, bool_grads))
    jacobian = torch.autograd.functional.jacobian(lambda row: model.logits(row[None], 1)[0], x[0])
    order = model.masks(1).order
    position = torch.empty_like(order)
    position[order] = torch.arange(9)
    allowed = position[None, :] < position[:, None]  # logit d may depend on x_j iff j comes before d
    assert torch.all(jacobian[~allowed] == 0)


def test_fixed_mask_training_path_with_bool_masks(monkeypatch):
    # On CUDA masks are bool: zeroing cut weights and masking gradients must work with them.
    x = (torch.rand(5, 9, generator=torch.Generator().manual_seed(1)) < 0.5).double()

    def run(dtype):
        model = MADE(9, (20, 15), num_masks=1, ordering="random", direct_connection=True, seed=3).double()
        assert model.masks(0).output.dtype == dtype
        logits = FixedMaskStep(model, torch.optim.SGD(model.parameters(), lr=0.0)).logits(x, 0)
        logits.sum().backward()
        return [logits.detach()] + [p.detach().clone() for p in model.parameters()] + [p.grad.clone() for p in model.parameters()]

    float_run, bool_run = with_float_then_bool_masks(monkeypatch, run)
    assert all(torch.equal(a, b) for a, b in zip(float_run, bool_run, strict=True))


def test_samples_follow_model_distribution():
    dim = 4
    model = MADE(dim, (16,), num_masks=1, ordering="random", seed=4).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 2.0)
    generator = torch.Generator().manual_seed(0)
    samples = model.sample(20000, generator=generator)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    x = all_binary_vectors(dim)
    with torch.no_grad():
        probabilities = model.log_prob(x).exp()
    codes = (samples * (2 ** torch.arange(dim - 1, -1, -1, dtype=torch.float64))).sum(1).long()
    empirical = torch.bincount(codes, minlength=2**dim).double() / len(samples)
    assert (empirical - probabilities).abs().max() < 0.015


def test_conditional_log_prob_is_normalised_over_missing():
    dim = 8
    model = MADE(dim, (32,), num_masks=MASK_SAMPLING, ordering="agnostic", seed=9).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 1.0)
    observed = torch.tensor([1, 0, 1, 0, 0, 1, 0, 0], dtype=torch.bool)
    known = torch.tensor([1.0, 0.0, 1.0])
    completions = all_binary_vectors(int((~observed).sum()))
    x = torch.zeros(len(completions), dim, dtype=torch.float64)
    x[:, observed] = known.double()
    x[:, ~observed] = completions
    with torch.no_grad():
        for n_masks in (1, 5):
            total = model.conditional_log_prob(x, observed, n_masks=n_masks).exp().sum().item()
            assert total == pytest.approx(1.0, abs=1e-6)
        # Changing an observed value changes the conditional.
        flipped = x.clone()
        flipped[:, 0] = 0.0
        assert not torch.allclose(model.conditional_log_prob(x, observed), model.conditional_log_prob(flipped, observed))
    with pytest.raises(ValueError, match="order-agnostic"):
        MADE(dim, (8,), ordering="natural").conditional_log_prob(x.float(), observed)


def test_save_and_load_round_trip(tmp_path):
    model = MADE(10, (12, 12), num_masks=3, ordering="agnostic", direct_connection=True, activation="tanh", seed=7)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    x = torch.bernoulli(torch.full((4, 10), 0.5))
    with torch.no_grad():
        assert torch.equal(model.log_prob(x, n_masks=3), loaded.log_prob(x, n_masks=3))
    with pytest.raises(FileNotFoundError, match="no MADE model"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("num_masks,n_masks", [(4, 4), (4, 1), (MASK_SAMPLING, 3)])
def test_batched_evaluation_equals_the_ensemble(num_masks, n_masks):
    # evaluate loops masks outside batches (masked weights reused); a batch size that does not
    # divide the rows checks the last, short batch lands in the right place.
    model = MADE(8, (16, 12), num_masks, "agnostic", direct_connection=True, seed=4).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 1.0)
    x = all_binary_vectors(8)
    model.train()
    batched = example_log_probs(model, x, n_masks=n_masks, batch_size=37)
    assert model.training  # restored
    with torch.no_grad():
        assert torch.allclose(batched, model.log_prob(x, n_masks=n_masks), atol=1e-12)
    nll = evaluate_nll(model, x.numpy(), n_masks=n_masks, batch_size=100)
    assert nll.examples == 256 and nll.mean == pytest.approx(-batched.mean().item(), abs=1e-12)


@pytest.mark.parametrize("num_masks,ordering", CONNECTIVITIES)
@pytest.mark.parametrize("hidden_sizes", [(16,), (16, 12), (16, 12, 10)])
@pytest.mark.parametrize("direct_connection", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_sampling_equals_a_full_pass_per_dimension_given_the_same_uniforms(
    num_masks, ordering, hidden_sizes, direct_connection, activation
):
    model = MADE(9, hidden_sizes, num_masks, ordering, direct_connection, activation, seed=5).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 1.5, generator=torch.Generator().manual_seed(2))
    mask_index = 1 if num_masks != 1 else 0
    uniforms = torch.rand(500, 9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    reference = model.sample_by_passes(mask_index, uniforms)
    generator = torch.Generator().manual_seed(3)
    assert torch.equal(model.sample(500, mask_index, generator=generator), reference)  # sample draws the same uniforms
    assert 0 < reference.mean() < 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("direct_connection", [False, True])
def test_the_compiled_sampler_draws_what_the_torch_loop_draws(monkeypatch, dtype, activation, direct_connection):
    model = MADE(40, [30], 1, "random", direct_connection, activation, seed=2).to(dtype)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 1.0, generator=torch.Generator().manual_seed(4))
    uniforms = torch.rand(300, 40, generator=torch.Generator().manual_seed(5), dtype=dtype)
    assert model_module.cpu_kernels(uniforms) is not None
    with torch.no_grad():  # as in MADE.sample
        compiled = model._sample_one_hidden_layer(0, uniforms)
        monkeypatch.setenv("MADE_FUSED_ADAM", "0")
        assert model_module.cpu_kernels(uniforms) is None
        looped = model._sample_one_hidden_layer(0, uniforms)
    assert compiled.dtype == dtype and torch.equal(compiled, looped) and 0 < float(compiled.mean()) < 1


def test_two_layer_samples_follow_model_distribution():
    dim = 4
    model = MADE(dim, (16, 12), num_masks=1, ordering="random", seed=4).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 2.0, generator=torch.Generator().manual_seed(1))
    samples = model.sample(20000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probabilities = model.log_prob(all_binary_vectors(dim)).exp()
    codes = (samples * (2 ** torch.arange(dim - 1, -1, -1, dtype=torch.float64))).sum(1).long()
    empirical = torch.bincount(codes, minlength=2**dim).double() / len(samples)
    assert (empirical - probabilities).abs().max() < 0.015
