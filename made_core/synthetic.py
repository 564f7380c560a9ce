"""Synthetic binary datasets whose true distribution is known exactly.

Two families, both with an exact log p(x), so the true test NLL of a synthetic dataset is
known and a test or benchmark can check how close a trained MADE gets:

- a mixture of product Bernoullis (``MixtureRecipe``), a logsumexp over K components:

      p(x) = sum_k w_k prod_d q_kd^x_d (1 - q_kd)^(1 - x_d),   x in {0, 1}^D;

- a random sparse logistic Bayesian network (``BayesNetRecipe``): in a hidden random
  ordering of the variables, each one depends on a few earlier ones through a logistic
  conditional, p(x) = prod_i sigmoid(+-(b_i + sum_j W_ij x_j)). Real autoregressive
  structure, and an ordering that is not the natural one. Everything here is deterministic: the parameters and every split come from a
fixed integer seed through numpy's PCG64 and only uniform draws (``Generator.random``),
whose stream numpy keeps stable, with the shaping done by closed-form transforms here
rather than by numpy's Beta/Dirichlet samplers, whose algorithms may change between
numpy versions.

Conventions: rows are examples; data arrays are float32 0/1 of shape (N, D);
log-probabilities are float64 natural logs (nats) of shape (N,).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class MixtureRecipe:
    """How to build the true distribution of a synthetic dataset.

    Attributes:
        num_components: K, the number of product-Bernoulli components.
        seed: the one integer every parameter and every split is derived from.
        min_prob: every Bernoulli mean lies in [min_prob, 1 - min_prob], so no
            binary vector has probability zero and every log-probability is finite.
    """

    num_components: int
    seed: int
    min_prob: float = 0.05

    def __post_init__(self) -> None:
        if self.num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {self.num_components}")
        if not 0.0 < self.min_prob < 0.5:
            raise ValueError(f"min_prob must lie in (0, 0.5), got {self.min_prob}")


@dataclass(frozen=True, eq=False)
class BernoulliMixture:
    """A mixture of K product-Bernoulli distributions over {0, 1}^D.

    Attributes:
        log_weights: float64 array of shape (K,), log mixing weights (logsumexp = 0).
        probs: float64 array of shape (K, D), probs[k, d] = p(x_d = 1 | component k),
            strictly inside (0, 1).
    """

    log_weights: np.ndarray
    probs: np.ndarray

    @property
    def num_components(self) -> int:
        """K, the number of components."""
        return int(self.probs.shape[0])

    @property
    def input_dim(self) -> int:
        """D, the number of binary variables."""
        return int(self.probs.shape[1])

    def log_prob(self, rows: np.ndarray) -> np.ndarray:
        """Exact log p(x) in nats for each row; see :func:`mixture_log_prob`."""
        return mixture_log_prob(self, rows)

    def sample(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``num_samples`` rows; see :func:`sample_mixture`."""
        return sample_mixture(self, num_samples, rng)


def _arcsine_quantile(uniforms: np.ndarray) -> np.ndarray:
    """Map U(0, 1) draws to Beta(1/2, 1/2) draws by its inverse CDF, sin^2(pi u / 2).

    Beta(1/2, 1/2) puts most mass near 0 and 1, which makes each component a sharp,
    distinct mode: the mixture then has strong correlations between variables, the
    structure an autoregressive model has to learn.
    """
    return np.sin(0.5 * np.pi * uniforms) ** 2


def build_mixture(input_dim: int, recipe: MixtureRecipe) -> BernoulliMixture:
    """Build the mixture a recipe describes over ``input_dim`` binary variables.

    Mixing weights are Dirichlet(1, ..., 1) (normalised exponentials of uniforms);
    Bernoulli means are Beta(1/2, 1/2) squeezed into [min_prob, 1 - min_prob].
    The same (input_dim, recipe) gives bit-identical parameters on every call.
    """
    if input_dim < 1:
        raise ValueError(f"input_dim must be >= 1, got {input_dim}")
    rng = np.random.Generator(np.random.PCG64(_parameter_seed(recipe.seed)))
    # 1 - u lies in (0, 1], so the logarithm is finite.
    exponentials = -np.log1p(-rng.random(recipe.num_components))
    weights = exponentials / exponentials.sum()
    spread = _arcsine_quantile(rng.random((recipe.num_components, input_dim)))
    probs = recipe.min_prob + (1.0 - 2.0 * recipe.min_prob) * spread
    return BernoulliMixture(log_weights=np.log(weights), probs=probs)


@dataclass(frozen=True)
class BayesNetRecipe:
    """How to build a random sparse logistic Bayesian network over D binary variables.

    Attributes:
        max_parents: each variable depends on up to this many variables earlier in the
            network's (hidden, random) ordering, chosen uniformly among them.
        seed: the one integer every parameter and every split is derived from.
        weight_scale: parent weights are uniform in +-[weight_scale / 2, weight_scale],
            strong enough that the dependencies matter.
        bias_scale: biases are uniform in [-bias_scale, bias_scale].
    """

    max_parents: int
    seed: int
    weight_scale: float = 3.0
    bias_scale: float = 1.5

    def __post_init__(self) -> None:
        if self.max_parents < 1:
            raise ValueError(f"max_parents must be >= 1, got {self.max_parents}")
        if not self.weight_scale > 0 or self.bias_scale < 0:
            raise ValueError(f"weight_scale must be > 0 and bias_scale >= 0, got {self.weight_scale}, {self.bias_scale}")


@dataclass(frozen=True, eq=False)
class LogisticBayesNet:
    """p(x) = prod_i Bernoulli(x_i; sigmoid(bias_i + weights[i] @ x)), variables sampled in ``order``.

    Attributes:
        order: int64 (D,), a topological order: weights[i, j] != 0 only if j comes before i.
        weights: float64 (D, D), row i holds variable i's parent weights.
        bias: float64 (D,).
    """

    order: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    @property
    def input_dim(self) -> int:
        return int(self.bias.shape[0])

    def log_prob(self, rows: np.ndarray) -> np.ndarray:
        """Exact log p(x) in nats for each row, shape (N,)."""
        values = _as_binary_rows(rows, self.input_dim)
        logits = values @ self.weights.T + self.bias
        # log sigmoid(+-z) = -log(1 + exp(-+z)), stable through logaddexp.
        return -(values * np.logaddexp(0.0, -logits) + (1.0 - values) * np.logaddexp(0.0, logits)).sum(axis=1)

    def sample(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Ancestral sampling in ``order``; float32 C-contiguous (num_samples, D) 0/1 rows."""
        uniforms = rng.random((num_samples, self.input_dim))
        rows = np.zeros((num_samples, self.input_dim))
        for position, variable in enumerate(self.order):
            logits = rows @ self.weights[variable] + self.bias[variable]
            rows[:, variable] = uniforms[:, position] < 1.0 / (1.0 + np.exp(-logits))
        return np.ascontiguousarray(rows, dtype=np.float32)


def build_bayes_net(input_dim: int, recipe: BayesNetRecipe) -> LogisticBayesNet:
    """Build the network a recipe describes over ``input_dim`` variables (bit-identical every call)."""
    if input_dim < 1:
        raise ValueError(f"input_dim must be >= 1, got {input_dim}")
    rng = np.random.Generator(np.random.PCG64(_parameter_seed(recipe.seed)))
    order = np.argsort(rng.random(input_dim), kind="stable")
    weights = np.zeros((input_dim, input_dim))
    for position in range(1, input_dim):
        count = min(position, recipe.max_parents)
        parents = order[np.argsort(rng.random(position), kind="stable")[:count]]
        magnitudes = recipe.weight_scale * (0.5 + 0.5 * rng.random(count))
        signs = np.where(rng.random(count) < 0.5, -1.0, 1.0)
        weights[order[position], parents] = signs * magnitudes
    bias = recipe.bias_scale * (2.0 * rng.random(input_dim) - 1.0)
    return LogisticBayesNet(order=order, weights=weights, bias=bias)


SyntheticRecipe = MixtureRecipe | BayesNetRecipe
TrueDistribution = BernoulliMixture | LogisticBayesNet


def build_distribution(input_dim: int, recipe: SyntheticRecipe) -> TrueDistribution:
    """The exact distribution of a synthetic dataset, of either family."""
    if isinstance(recipe, BayesNetRecipe):
        return build_bayes_net(input_dim, recipe)
    return build_mixture(input_dim, recipe)


def _parameter_seed(seed: int) -> np.random.SeedSequence:
    """The seed sequence for the parameters: child 0 of the recipe's seed."""
    return np.random.SeedSequence(seed).spawn(1 + len(SPLIT_NAMES))[0]


def _split_generator(seed: int, split: str) -> np.random.Generator:
    """An independent generator per split, so one split's size never changes another's rows."""
    child = np.random.SeedSequence(seed).spawn(1 + len(SPLIT_NAMES))[1 + SPLIT_NAMES.index(split)]
    return np.random.Generator(np.random.PCG64(child))


def _as_binary_rows(rows: np.ndarray, input_dim: int) -> np.ndarray:
    """Check rows are (N, input_dim) and 0/1; return them as float64."""
    values = np.asarray(rows, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != input_dim:
        raise ValueError(f"expected rows of shape (N, {input_dim}), got {values.shape}")
    if not np.all((values == 0.0) | (values == 1.0)):
        raise ValueError("rows must contain only 0 and 1")
    return values


def _logsumexp_rows(values: np.ndarray) -> np.ndarray:
    """log sum_k exp(values[n, k]) for each n, computed stably in float64; shape (N,)."""
    peak = values.max(axis=1, keepdims=True)
    return (peak + np.log(np.exp(values - peak).sum(axis=1, keepdims=True)))[:, 0]


def mixture_log_prob(mixture: BernoulliMixture, rows: np.ndarray) -> np.ndarray:
    """Exact log p(x) (nats) of each row under the mixture.

    Args:
        mixture: the true distribution.
        rows: array-like of shape (N, D) with 0/1 entries (any numeric dtype).

    Returns:
        float64 array of shape (N,).
    """
    values = _as_binary_rows(rows, mixture.input_dim)
    log_component = values @ np.log(mixture.probs).T + (1.0 - values) @ np.log1p(-mixture.probs).T
    return _logsumexp_rows(log_component + mixture.log_weights)


def sample_mixture(mixture: BernoulliMixture, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Draw rows from the mixture: a component per row, then independent bits.

    Returns:
        float32 C-contiguous array of shape (num_samples, D) with 0/1 entries.
    """
    cumulative = np.cumsum(np.exp(mixture.log_weights))
    # searchsorted on the cumulative weights is the inverse CDF of the component
    # choice; clip guards against cumulative[-1] landing a hair below 1.
    components = np.minimum(np.searchsorted(cumulative, rng.random(num_samples), side="right"), mixture.num_components - 1)
    bits = rng.random((num_samples, mixture.input_dim)) < mixture.probs[components]
    return np.ascontiguousarray(bits, dtype=np.float32)


def sample_splits(mixture: TrueDistribution, sizes: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Draw the train/valid/test splits of a synthetic dataset.

    Args:
        mixture: the true distribution.
        sizes: number of rows for each of "train", "valid", "test".
        seed: the recipe's seed; each split uses its own child seed sequence.

    Returns:
        dict split name -> float32 array of shape (sizes[split], D).
    """
    return {split: mixture.sample(sizes[split], _split_generator(seed, split)) for split in SPLIT_NAMES}


def mean_nll_with_stderr(log_probs: np.ndarray) -> tuple[float, float]:
    """Mean negative log-likelihood (nats per example) and its standard error.

    The standard error is std(-log p, ddof=1) / sqrt(N), 0.0 for a single example.
    """
    nll = -np.asarray(log_probs, dtype=np.float64)
    if nll.ndim != 1 or nll.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of log-probabilities, got shape {nll.shape}")
    stderr = float(nll.std(ddof=1) / np.sqrt(nll.size)) if nll.size > 1 else 0.0
    return float(nll.mean()), stderr
