"""MADE: a masked MLP whose outputs are the autoregressive conditionals of binary data.

Shapes: inputs ``x`` are (B, D) float 0/1; ``logits`` are (B, D) with
p(x_d = 1 | x_<d) = sigmoid(logits[:, d]) under the mask's ordering; log-probabilities
are (B,) in nats.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from made_core.files import atomic_write, load_torch_file
from made_core.hyperparameters import DEFAULTS, MASK_SAMPLING, PARAMETERS, ensemble_size_allowed, hidden_sizes_problem
from made_core.masks import MaskSet, build_masks, in_layer_order, make_masks, mask_generator

ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
}  # one per ACTIVATIONS name
# A mask-sampling model can be asked for any mask index (ensembles of any size); keep only the
# newest on device, up to this many bytes of masks (at least one mask set). Its training masks,
# each used once, are never cached.
_SAMPLED_MASK_CACHE_BYTES = 1 << 30
# Mask indices for conditionals live far from training indices so they never collide.
_CONDITIONAL_MASK_OFFSET = 1 << 40
MODEL_FILE = "model.pt"


def ensemble_log_prob(per_mask: torch.Tensor) -> torch.Tensor:
    """(B,) log of the mean probability over masks, from (K, B) per-mask log p_k(x):
    logsumexp_k log p_k(x) - log K. Probabilities are averaged, never logits."""
    return torch.logsumexp(per_mask, dim=0) - math.log(per_mask.shape[0])


_SOFTPLUS_CHUNK = 16


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """sum over ``dim`` of log p(x_d | logit_d) = x_d l_d - softplus(l_d), for logits and 0/1 ``x``
    of one shape: (B, D) -> (B,) with the default ``dim`` 1; (D, B) -> (B,) with ``dim`` 0.

    Outside autograd, for float32 and float64, softplus(l) = max(l, 0) + log(1 + exp(-|l|)) takes
    one log per 16 dimensions: the log of the product of their factors 1 + exp(-|l|), each in
    (1, 2], so a product stays below 2^16 and within float rounding of the exact one (a fifth
    faster than BCE-with-logits' log per dimension on 784 dimensions).
    """
    fast = logits.dtype in (torch.float32, torch.float64) and not (
        torch.is_grad_enabled() and (logits.requires_grad or x.requires_grad)
    )
    if not fast:
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=dim)
    if dim in (0, 1) and (kernels := likelihood_kernels(logits, x)) is not None:
        # The same sum in one pass (made_core.fused_adam): 4x faster than the passes below.
        return kernels.bernoulli_columns_(logits, x, 0.0) if dim == 0 else kernels.bernoulli_rows(logits, x)
    dims = logits.shape[dim]
    chunks = -(-dims // _SOFTPLUS_CHUNK)
    padded = list(logits.shape)
    padded[dim] = chunks * _SOFTPLUS_CHUNK
    factors = logits.new_ones(padded)  # padding factors stay 1
    magnitude = torch.abs(logits, out=factors.narrow(dim, 0, dims))
    # x l - max(l, 0) = l (x - 1/2) - |l| / 2
    total = (logits * (x - 0.5)).sum(dim=dim) - 0.5 * magnitude.sum(dim=dim)
    magnitude.neg_().exp_().add_(1.0)
    by_chunk = factors.view(*padded[:dim], chunks, _SOFTPLUS_CHUNK, *padded[dim + 1 :])
    return total - by_chunk.prod(dim=dim + 1).log_().sum(dim=dim)


@dataclass(frozen=True)
class MaskedWeights:
    """Every layer's weight times its mask under one connectivity; shapes as in ``MaskSet``."""

    hidden: tuple[torch.Tensor, ...]
    output: torch.Tensor
    direct: torch.Tensor | None

    def in_layer_order(self) -> tuple[torch.Tensor, ...]:
        """The weights in the order of ``MADE.masked_layers()``."""
        return in_layer_order(self.hidden, self.output, self.direct)


def mask_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype masks are cached in for ``weight``'s device.

    On CUDA masks are bool, a quarter of float32's memory (32 masks of a 2 x 8000 MNIST net:
    2.4 GB instead of 9.8 GB), multiplied in by type promotion. On the CPU torch's mixed
    float x bool multiply is several times slower than float x float, so masks there take
    the weights' dtype.
    """
    return torch.bool if weight.device.type == "cuda" else weight.dtype


def _nbytes(masks: MaskSet) -> int:
    tensors = [*masks.hidden, masks.output] + ([masks.direct] if masks.direct is not None else [])
    return sum(t.numel() * t.element_size() for t in tensors)


def cpu_kernels(tensor: torch.Tensor) -> Any:
    """made_core's compiled CPU kernels for ``tensor`` (float32 or float64 on the CPU), built on
    first use; None elsewhere, where they cannot be built, or with ``MADE_FUSED_ADAM=0``."""
    from made_core.fused_adam import enabled_kernels  # imports this module

    if tensor.device.type != "cpu" or tensor.dtype not in (torch.float32, torch.float64):
        return None
    return enabled_kernels()


def likelihood_kernels(logits: torch.Tensor, x: torch.Tensor) -> Any:
    """The compiled kernels where ``bernoulli_log_likelihood`` can use them: 2-D contiguous CPU
    logits and inputs of one dtype (float32 or float64); else None."""
    if logits.dim() != 2 or x.shape != logits.shape or x.dtype != logits.dtype:
        return None
    if not (logits.is_contiguous() and x.is_contiguous()):
        return None
    return cpu_kernels(logits)


class MADE(nn.Module):
    """Masked Autoencoder for Distribution Estimation over D binary variables.

    ``num_masks``: K >= 1 masks cycled one per minibatch (1 is the plain MADE), or
    ``MASK_SAMPLING`` (0) for a fresh mask every minibatch. ``ordering``: "natural",
    "random" (one fixed permutation) or "agnostic" (every mask its own ordering).
    Masks are pure functions of (seed, mask index) and cached on the model's device.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_sizes: Sequence[int],
        num_masks: int = DEFAULTS["num_masks"],
        ordering: str = DEFAULTS["ordering"],
        direct_connection: bool = DEFAULTS["direct_connection"],
        activation: str = DEFAULTS["activation"],
        seed: int = 0,
    ) -> None:
        super().__init__()
        if input_dim < 2:
            raise ValueError(f"input_dim must be >= 2, got {input_dim}")
        if problem := hidden_sizes_problem(hidden_sizes):
            raise ValueError(problem)
        problems = [PARAMETERS[name].problem_for_setting(value)
                    for name, value in (("num_masks", num_masks), ("ordering", ordering), ("activation", activation))]  # fmt: skip
        if any(problems):
            raise ValueError("; ".join(p for p in problems if p))
        self.input_dim = int(input_dim)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.num_masks = int(num_masks)
        self.ordering = ordering
        self.direct_connection = bool(direct_connection)
        self.activation = activation
        self.seed = int(seed)
        sizes = (self.input_dim, *self.hidden_sizes)
        self.hidden_layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:]))
        self.output_layer = nn.Linear(sizes[-1], self.input_dim)
        self.direct_layer = nn.Linear(self.input_dim, self.input_dim, bias=False) if direct_connection else None
        self._mask_cache: OrderedDict[int, MaskSet] = OrderedDict()

    # -- construction and persistence ------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``MADE(**model.config())`` rebuilds the same architecture and masks."""
        return {
            "input_dim": self.input_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "num_masks": self.num_masks,
            "ordering": self.ordering,
            "direct_connection": self.direct_connection,
            "activation": self.activation,
            "seed": self.seed,
        }

    @property
    def device(self) -> torch.device:
        return self.output_layer.weight.device

    # -- masks ------------------------------------------------------------------------
    def _build_masks(self, mask_index: int) -> MaskSet:
        """The masks of ``mask_index``, built afresh on the model's device (see ``masks``)."""
        if self.num_masks != MASK_SAMPLING and not 0 <= mask_index < self.num_masks:
            raise ValueError(f"mask_index {mask_index} out of range for a model with {self.num_masks} masks")
        weight = self.output_layer.weight
        return make_masks(
            self.input_dim, self.hidden_sizes, self.ordering, self.seed, mask_index, self.direct_connection,
            weight.device, mask_dtype(weight),
        )  # fmt: skip

    def masks(self, mask_index: int) -> MaskSet:
        """The masks of ``mask_index`` on the model's device, built once and cached."""
        cached = self._mask_cache.get(mask_index)
        weight = self.output_layer.weight
        if cached is None or cached.output.device != weight.device or cached.output.dtype != mask_dtype(weight):
            cached = self._build_masks(mask_index)
            self._mask_cache[mask_index] = cached
            if self.num_masks == MASK_SAMPLING:
                budget = max(_SAMPLED_MASK_CACHE_BYTES // _nbytes(cached), 1)
                while len(self._mask_cache) > budget:
                    self._mask_cache.popitem(last=False)
        return cached

    def training_mask_index(self, step: int) -> int:
        """The mask used for minibatch number ``step``: cycled over K masks, or a fresh one."""
        return step if self.num_masks == MASK_SAMPLING else step % self.num_masks

    def ensemble_indices(self, n_masks: int) -> range:
        if not ensemble_size_allowed(n_masks, self.num_masks):
            limit = f"exceeds the model's {self.num_masks} masks" if n_masks >= 1 else "must be >= 1"
            raise ValueError(f"n_masks={n_masks} {limit}")
        return range(n_masks)

    # -- the network ------------------------------------------------------------------
    def masked_layers(self) -> tuple[nn.Linear, ...]:
        """Every masked layer: the hidden layers in order, the output layer, then the direct layer."""
        hidden: list[nn.Linear] = list(self.hidden_layers)  # type: ignore[arg-type]  # a ModuleList of Linear
        return in_layer_order(hidden, self.output_layer, self.direct_layer)

    def network(
        self, x: torch.Tensor, linear: Callable[[torch.Tensor, int], torch.Tensor],
        add_direct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """(B, D) logits, where ``linear(input, i)`` applies masked layer i of ``masked_layers()``
        (the training steps of ``made_core.steps`` pass their own); ``add_direct(logits, x)``,
        if given, adds the direct connection's term (default: ``logits + linear(x, last)``)."""
        act = ACTIVATION_FUNCTIONS[self.activation]
        hidden = x
        for i in range(len(self.hidden_layers)):
            hidden = act(linear(hidden, i))
        logits = linear(hidden, len(self.hidden_layers))
        if self.direct_layer is not None:
            if add_direct is not None:
                return add_direct(logits, x)
            logits = logits + linear(x, len(self.hidden_layers) + 1)
        return logits

    def _mask_weights(self, masks: MaskSet) -> MaskedWeights:
        hidden_layers = self.masked_layers()[: len(masks.hidden)]
        hidden = tuple(layer.weight * mask for layer, mask in zip(hidden_layers, masks.hidden, strict=True))
        direct = None if self.direct_layer is None or masks.direct is None else self.direct_layer.weight * masks.direct
        return MaskedWeights(hidden, self.output_layer.weight * masks.output, direct)

    def masked_weights(self, mask_index: int, cache: bool = True) -> MaskedWeights:
        """The weights times the masks of ``mask_index``; reuse them across batches of one mask.
        ``cache=False`` builds masks used only once without putting them in the mask cache."""
        return self._mask_weights(self.masks(mask_index) if cache else self._build_masks(mask_index))

    def logits_with(self, x: torch.Tensor, weights: MaskedWeights) -> torch.Tensor:
        """(B, D) logits computed with already-masked ``weights`` (see ``masked_weights``)."""
        layers, masked = self.masked_layers(), weights.in_layer_order()
        linear = lambda inputs, i: F.linear(inputs, masked[i], layers[i].bias)  # noqa: E731
        direct = weights.direct
        if direct is None or torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
            return self.network(x, linear)
        # Outside autograd and autocast the direct connection's product accumulates into the
        # output layer's (one addmm instead of a matmul and an add over (B, D): about 5% of an
        # ensemble evaluation with D = 784).
        return self.network(x, linear, lambda logits, inputs: logits.addmm_(inputs, direct.t()))

    def logits(self, x: torch.Tensor, mask_index: int | None = None) -> torch.Tensor:
        """(B, D) logits of p(x_d = 1 | x_<d) under mask ``mask_index`` (default 0)."""
        return self.logits_with(x, self.masked_weights(0 if mask_index is None else mask_index))

    def forward(self, x: torch.Tensor, mask_index: int | None = None) -> torch.Tensor:
        return self.logits(x, mask_index)

    @staticmethod
    def _log_likelihoods(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-dimension log p(x_d | x_<d): (B, D). -BCE-with-logits, stable for any logit."""
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")

    def log_prob_with(self, x: torch.Tensor, weights: MaskedWeights) -> torch.Tensor:
        """(B,) log p_k(x) in nats under the single connectivity whose masked ``weights`` are given."""
        return bernoulli_log_likelihood(self.logits_with(x, weights), x)

    def mask_log_prob(self, x: torch.Tensor, mask_index: int) -> torch.Tensor:
        """(B,) log p_k(x) in nats under the single mask ``mask_index``."""
        return self.log_prob_with(x, self.masked_weights(mask_index))

    def log_prob(self, x: torch.Tensor, n_masks: int = 1) -> torch.Tensor:
        """(B,) log p(x) in nats; with n_masks = K > 1 the ensemble over masks 0..K-1.

        The ensemble averages probabilities, not logits:
        log p(x) = logsumexp_k log p_k(x) - log K.
        """
        per_mask = torch.stack([self.mask_log_prob(x, k) for k in self.ensemble_indices(n_masks)])
        return ensemble_log_prob(per_mask)

    @torch.no_grad()
    def sample(self, n: int, mask_index: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, D) binary samples drawn dimension by dimension in the mask's ordering.

        Uniforms u (n, D) are drawn once (column k for the k-th dimension of the ordering) and
        x_d = 1 when u < p(x_d = 1 | x_<d), compared as log(u / (1 - u)) < logit so that no
        sigmoid is taken per dimension. A one-hidden-layer model updates its hidden
        pre-activations one input at a time, so all D dimensions cost about one forward pass (on
        the CPU in made_core's compiled kernels where they build); a deeper one makes a full pass
        per dimension (``sample_by_passes``).
        """
        uniforms = torch.rand(n, self.input_dim, generator=generator, device=self.device, dtype=self.output_layer.weight.dtype)
        if len(self.hidden_layers) == 1:
            return self._sample_one_hidden_layer(mask_index, uniforms)
        return self.sample_by_passes(mask_index, uniforms)

    @torch.no_grad()
    def sample_by_passes(self, mask_index: int, uniforms: torch.Tensor) -> torch.Tensor:
        """``sample`` for any depth, given its uniforms (n, D): one full forward pass per dimension."""
        order, weights = self.masks(mask_index).order, self.masked_weights(mask_index)
        thresholds = torch.logit(uniforms)
        x = torch.zeros_like(uniforms)
        for position, dim in enumerate(order.tolist()):
            x[:, dim] = thresholds[:, position] < self.logits_with(x, weights)[:, dim]
        return x

    def _sample_one_hidden_layer(self, mask_index: int, uniforms: torch.Tensor) -> torch.Tensor:
        # Hidden pre-activations start at the bias; setting input d adds x_d times column d of
        # the masked weight (O(n H) per dimension instead of a pass over every layer).
        order, weights = self.masks(mask_index).order, self.masked_weights(mask_index)
        hidden_weight, output_weight = weights.hidden[0], weights.output
        hidden_bias, output_bias = self.masked_layers()[0].bias, self.output_layer.bias
        kernels = cpu_kernels(uniforms)
        if kernels is not None and hidden_bias is not None and output_bias is not None:
            # The same loop in C++, one sample row per task: here its 4 small torch operations per
            # dimension cost more in dispatch than in arithmetic.
            direct = uniforms.new_empty(0) if weights.direct is None else weights.direct.contiguous()
            return kernels.sample_one_hidden_layer(
                torch.logit(uniforms).contiguous(), order.contiguous(), hidden_weight.t().contiguous(), hidden_bias.contiguous(),
                output_weight.contiguous(), output_bias.contiguous(), direct, self.activation == "relu",
            )  # fmt: skip
        activation = ACTIVATION_FUNCTIONS[self.activation]
        # Per-dimension vectors as contiguous rows: a strided column costs more than its math.
        thresholds = torch.logit(uniforms).t().contiguous()  # (D, n), row k for ordering position k
        input_columns = hidden_weight.t().contiguous()  # (D, H), row d: what setting x_d adds
        x_by_dim = torch.zeros_like(thresholds)  # (D, n), row d is x_d
        pre_activation = hidden_bias.expand(len(uniforms), -1).clone()
        logit = torch.empty(len(uniforms), dtype=uniforms.dtype, device=uniforms.device)
        for position, dim in enumerate(order.tolist()):
            if weights.direct is None:
                logit.fill_(output_bias[dim])
            else:
                torch.mv(x_by_dim.t(), weights.direct[dim], out=logit).add_(output_bias[dim])
            logit.addmv_(activation(pre_activation), output_weight[dim])
            torch.lt(thresholds[position], logit, out=x_by_dim[dim])
            pre_activation.addr_(x_by_dim[dim], input_columns[dim])
        return x_by_dim.t().contiguous()

    def conditional_log_prob(self, x: torch.Tensor, observed: torch.Tensor, n_masks: int = 1) -> torch.Tensor:
        """(B,) log p(x_missing | x_observed) for an order-agnostic model.

        ``observed``: (D,) bool, True where x is observed. Each of the ``n_masks``
        connectivities puts the observed dimensions first (in a random order), then the
        missing ones, so the missing dimensions are predicted from everything observed.
        Such orderings are what order-agnostic training with mask sampling
        (``num_masks=0``) learns; a fixed-ordering model cannot condition on an
        arbitrary subset.
        """
        if self.ordering != "agnostic":
            raise ValueError("conditional_log_prob needs an order-agnostic model (ordering='agnostic')")
        observed = observed.to(torch.bool).cpu()
        if observed.shape != (self.input_dim,):
            raise ValueError(f"observed must have shape ({self.input_dim},), got {tuple(observed.shape)}")
        missing = ~observed
        per_mask = []
        for k in range(n_masks):
            generator = mask_generator(self.seed, _CONDITIONAL_MASK_OFFSET + k)
            observed_dims = observed.nonzero().flatten()
            missing_dims = missing.nonzero().flatten()
            order = torch.cat(
                [
                    observed_dims[torch.randperm(observed_dims.numel(), generator=generator)],
                    missing_dims[torch.randperm(missing_dims.numel(), generator=generator)],
                ]
            )
            weight = self.output_layer.weight
            masks = build_masks(order, self.hidden_sizes, generator, self.direct_connection, weight.device, mask_dtype(weight))
            log_likelihoods = self._log_likelihoods(self.logits_with(x, self._mask_weights(masks)), x)
            per_mask.append(log_likelihoods[:, missing.to(self.device)].sum(dim=1))
        return ensemble_log_prob(torch.stack(per_mask))

    def _apply(self, fn, *args, **kwargs):
        # Cached masks live on the old device after .to()/.cuda(); rebuild lazily.
        self._mask_cache.clear()
        return super()._apply(fn, *args, **kwargs)


def save_model(model: MADE, directory: str | Path) -> Path:
    """Write ``model.pt`` (architecture + weights) into ``directory``; returns the file path."""
    state = {"config": model.config(), "state_dict": model.state_dict()}
    return atomic_write(Path(directory) / MODEL_FILE, lambda temporary: torch.save(state, temporary))


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> MADE:
    """Load a model saved by ``save_model`` (a folder holding model.pt, or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"no MADE model at {path}")
    saved = load_torch_file(path, map_location, required_keys=("config", "state_dict"))
    model = MADE(**saved["config"])
    model.load_state_dict(saved["state_dict"])
    return model.to(map_location)
