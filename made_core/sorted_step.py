"""Training a MADE in degree-sorted coordinates, skipping its weights' zero blocks.

In the coordinates of ``made_core.blocked`` (inputs and outputs in the mask's ordering, hidden
units by degree) every masked weight is a staircase, and a layer cut into row blocks needs only
each block's columns up to its last row's prefix. ``forward_backward`` makes a step's forward
and backward pass block by block, feature-major and by hand (the network is a chain of masked
linear layers, so its gradient is a few matmuls per block).

- ``SortedFixedMaskStep`` (one mask) moves the model's parameters and the optimiser's state into
  those coordinates at its first step and hands the gradients to the optimiser there; Adam runs
  on each weight row's prefix only (``prefix_adam_``). ``settle()`` moves everything back; the
  Trainer calls it before it validates, checkpoints or lets anyone else read the model.
- ``SortedMaskedAdamStep`` (cycled masks under ``MaskedAdam``) keeps the parameters where they
  are: each step has its own mask's coordinates, and the kernel ``sorted_masked_adam_`` reads the
  gradient in this step's and writes the next step's masked weight in the next mask's.

Shapes: a minibatch is (B, D); inside the step activations are (features, B).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from made_core.allocator import opted_out
from made_core.blocked import BLOCKS, Staircase, blocks_of, staircases
from made_core.fused_adam import MaskedAdam, adam_updates, kernel_adam_reproduces, load_kernels
from made_core.hyperparameters import MASK_SAMPLING
from made_core.model import MADE, bernoulli_log_likelihood, likelihood_kernels
from made_core.precision import DEFAULT_PRECISION
from made_core.steps import FixedMaskStep, TrainingStep

OPT_OUT_VARIABLE = "MADE_SORTED_STEP"  # 0: every model trains in its own coordinates

MIN_INPUT_DIM = 300
"""Below this many dimensions the blocks' narrower matmuls cost more than the skipped work saves."""

MIN_STEPS_BETWEEN_SETTLES = 50
"""Moving the weights and the optimiser state into sorted coordinates and back costs about a dozen
steps' savings: below this many steps per validation interval the step stays in natural coordinates."""


def _sorted_coordinates_pay(model: MADE, precision: str) -> bool:
    """What both sorted steps need: full precision, ReLU or tanh units (``forward_backward``'s),
    enough dimensions, not opted out."""
    return (
        not opted_out(OPT_OUT_VARIABLE)
        and precision == DEFAULT_PRECISION
        and model.activation in ("relu", "tanh")
        and model.input_dim >= MIN_INPUT_DIM
    )


def sorted_training_applies(model: MADE, precision: str, steps_per_settle: int) -> bool:
    """Whether a one-mask ``model`` trains through ``SortedFixedMaskStep``: float32 or float64
    on the CPU in full precision, ReLU or tanh units, enough dimensions and steps between settles,
    not opted out."""
    weight = model.output_layer.weight
    return (
        _sorted_coordinates_pay(model, precision)
        and model.num_masks == 1
        and weight.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.float64)
        and steps_per_settle >= MIN_STEPS_BETWEEN_SETTLES
    )


@dataclass(frozen=True)
class _Block:
    """Row block ``start:end`` of a sorted layer, which sees its first ``width`` (> 0) inputs:
    views of its weight's transpose, its gradient and (where the rows' prefixes differ) the
    gradient's cut corner."""

    start: int
    end: int
    width: int
    weight_t: torch.Tensor  # (width, end - start)
    gradient: torch.Tensor  # (end - start, width)
    corner: torch.Tensor | None  # the gradient's columns where some rows of the block are cut
    keep: torch.Tensor | None  # 0/1, corner's shape


class _SortedLayer:
    """A masked layer's sorted weight (its parameter, in sorted coordinates), its gradient buffer,
    and their block views, made once (a step makes about a hundred matmuls and slices otherwise
    cost a tenth of it). The forward pass is ``made_core.blocked``'s. The buffer is zero right of
    each block for good (steps write only the blocks); with ``cut_corners`` steps also zero each
    block's cut corner, which an optimiser that reads only the staircase can leave as it is."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, stairs: Staircase, cut_corners: bool = True,
        gradient: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        self.blocked = blocks_of(weight, bias, stairs)
        self.gradient = torch.zeros_like(weight) if gradient is None else gradient
        self.in_features = weight.shape[1]
        self.blocks: list[_Block] = []  # those that see some input: the others have no weight gradient
        prefixes = stairs.prefixes
        for start, end, width, block_weight in zip(
            stairs.starts[:-1], stairs.starts[1:], stairs.widths, self.blocked.weights, strict=True
        ):
            if width == 0:
                continue
            corner_start = int(prefixes[start])
            corner = keep = None
            if cut_corners and corner_start < width:
                corner = self.gradient[start:end, corner_start:width]
                columns = torch.arange(corner_start, width)
                keep = (columns.unsqueeze(0) < prefixes[start:end].unsqueeze(1)).to(weight.dtype)
            self.blocks.append(_Block(start, end, width, block_weight.t(), self.gradient[start:end, :width], corner, keep))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(out, B) = weight @ inputs (in, B) + bias."""
        return self.blocked.apply(inputs, inputs.new_empty(self.blocked.out_features, inputs.shape[1]))

    def accumulate(self, out: torch.Tensor, inputs: torch.Tensor) -> None:
        """out += weight @ inputs (no bias)."""
        self.blocked.apply(inputs, out, accumulate=True)

    def weight_gradient(self, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
        """Writes d loss / d weight into ``gradient`` from grad_out (out, B) and the inputs (in, B)."""
        inputs_t = inputs.t()
        for block in self.blocks:
            # beta=0: overwrite the block (a strided view unless it spans every column).
            block.gradient.addmm_(grad_out[block.start : block.end], inputs_t[:, : block.width], beta=0)
            if block.corner is not None and block.keep is not None:
                block.corner.mul_(block.keep)

    def input_gradient(self, grad_out: torch.Tensor) -> torch.Tensor:
        """d loss / d inputs (in, B) from grad_out (out, B)."""
        grad_in = grad_out.new_zeros(self.in_features, grad_out.shape[1])
        for block in self.blocks:
            grad_in[: block.width].addmm_(block.weight_t, grad_out[block.start : block.end])
        return grad_in


class SortedFixedMaskStep(FixedMaskStep):
    """A one-mask MADE's step in degree-sorted coordinates (see the module docstring). The same
    updates as ``FixedMaskStep`` to float rounding, for any optimiser and gradient clipping."""

    def __init__(
        self, model: MADE, optimizer: torch.optim.Optimizer, grad_clip: float | None = None, blocks: int = BLOCKS
    ) -> None:  # fmt: skip
        super().__init__(model, optimizer, grad_clip, DEFAULT_PRECISION)
        if model.activation not in ("relu", "tanh"):
            raise ValueError(f"SortedFixedMaskStep knows ReLU and tanh units, not {model.activation!r}")
        self.order, self.stairs = staircases(model, 0, blocks)
        self.layers: list[_SortedLayer] | None = None  # set while the parameters are in sorted coordinates
        # Adam by the kernels, on each sorted weight row's prefix only: right of the staircase
        # weights, gradients and Adam's state stay zero, and a fused Adam over them is a sixth of a step.
        self.kernels = load_kernels() if kernel_adam_reproduces(optimizer) else None
        self.prefixes = {
            id(layer.weight): stairs.prefixes.contiguous()
            for layer, stairs in zip(model.masked_layers(), self.stairs, strict=True)
        }

    # -- coordinates -------------------------------------------------------------------------
    def _permutations(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(parameter, row order, column order or None) for every parameter of the model."""
        result: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        for layer, stairs in zip(self.model.masked_layers(), self.stairs, strict=True):
            result.append((layer.weight, stairs.row_order, stairs.column_order))
            if layer.bias is not None:
                result.append((layer.bias, stairs.row_order, None))
        return result

    @torch.no_grad()
    def _move(self, to_sorted: bool) -> None:
        for parameter, rows, columns in self._permutations():
            if not to_sorted:  # the inverse permutations
                rows = torch.argsort(rows)
                columns = None if columns is None else torch.argsort(columns)
            state = self.optimizer.state.get(parameter, {}).values()
            tensors = [parameter.data, *(v for v in state if torch.is_tensor(v) and v.shape == parameter.shape)]
            for tensor in tensors:
                moved = tensor.index_select(0, rows)
                tensor.copy_(moved if columns is None else moved.index_select(1, columns))

    def enter(self) -> None:
        """Zero the cut weights, then move parameters and optimiser state into sorted coordinates."""
        if self.layers is not None:
            return
        self.zero_cut_weights()
        self._move(to_sorted=True)
        # The kernel's Adam reads only the staircase; clipping's norm and any other optimiser read
        # the cut corners of the gradient too.
        cut_corners = self.kernels is None or self.grad_clip is not None
        self.layers = [
            _SortedLayer(layer.weight.data, None if layer.bias is None else layer.bias.data, stairs, cut_corners)
            for layer, stairs in zip(self.model.masked_layers(), self.stairs, strict=True)
        ]

    def settle(self) -> None:
        if self.layers is None:
            return
        self.layers = None
        self._move(to_sorted=False)
        for parameter in self.model.parameters():
            parameter.grad = None  # the buffers are in sorted coordinates
        self._versions = self._weight_versions()

    def logits(self, x: torch.Tensor, step: int) -> torch.Tensor:
        self.settle()
        return super().logits(x, step)

    # -- the step ----------------------------------------------------------------------------
    def __call__(self, batch: torch.Tensor, step: int) -> torch.Tensor:
        self.enter()
        assert self.layers is not None
        loss, bias_gradients = forward_backward(self.layers, batch.t().index_select(0, self.order), self.model)
        modules = self.model.masked_layers()
        for module, layer in zip(modules, self.layers, strict=True):
            module.weight.grad = layer.gradient
        for module, bias_gradient in zip(modules, bias_gradients, strict=False):
            module.bias.grad = bias_gradient
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.kernels is None:
            self.optimizer.step()
        else:
            for param, grad, exp_avg, exp_avg_sq, hyper in adam_updates(self.optimizer):
                prefixes = self.prefixes.get(id(param))
                if prefixes is None:
                    self.kernels.adam_(param, grad, exp_avg, exp_avg_sq, *hyper)
                else:
                    self.kernels.prefix_adam_(param, grad, exp_avg, exp_avg_sq, prefixes, *hyper)
        return loss


@torch.no_grad()
def forward_backward(layers: Sequence[_SortedLayer], x: torch.Tensor, model: MADE) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss (nats per example, detached) of ``model``'s network whose masked layers, in
    ``model.masked_layers()`` order, are ``layers`` in sorted coordinates, on ``x`` (D, B), the
    minibatch's transpose with its rows in the mask's ordering; writes each layer's weight gradient
    into its buffer and returns the biased layers' bias gradients (hidden layers, then output),
    sorted. Feature-major and by hand: the network is a chain of masked linear layers."""
    depth = len(model.hidden_sizes)
    relu = model.activation == "relu"
    hidden_layers, output, direct = layers[:depth], layers[depth], layers[depth + 1 :]
    activations = [x]
    for layer in hidden_layers:
        pre = layer.forward(activations[-1])
        activations.append(pre.relu_() if relu else pre.tanh_())
    logits = output.forward(activations[-1])
    for layer in direct:
        layer.accumulate(logits, x)
    loss, grad = loss_and_logit_gradient_(logits, x)
    for layer in direct:
        layer.weight_gradient(grad, x)
    bias_gradients = [grad.sum(1)]  # the output layer's, then the hidden layers' from the last
    output.weight_gradient(grad, activations[-1])
    for index in reversed(range(depth)):
        grad = (hidden_layers[index + 1] if index + 1 < depth else output).input_gradient(grad)
        # Autograd's own kernels for the activations' derivatives: one pass each.
        hidden = activations[index + 1]
        grad = torch.ops.aten.threshold_backward(grad, hidden, 0.0) if relu else torch.ops.aten.tanh_backward(grad, hidden)
        bias_gradients.append(grad.sum(1))
        hidden_layers[index].weight_gradient(grad, activations[index])
    return loss, [*reversed(bias_gradients[1:]), bias_gradients[0]]


def loss_and_logit_gradient_(logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss (nats per example) of (D, B) ``logits`` on the inputs ``x`` and its gradient
    d loss / d logits, written over ``logits``: in one pass by the compiled kernel where it applies."""
    batch_size = x.shape[1]
    kernels = likelihood_kernels(logits, x)
    if kernels is not None:
        return -kernels.bernoulli_columns_(logits, x, 1.0 / batch_size).sum() / batch_size, logits
    loss = -bernoulli_log_likelihood(logits, x, dim=0).sum() / batch_size
    return loss, logits.sigmoid_().sub_(x).div_(batch_size)


def sorted_masks_apply(model: MADE, optimizer: torch.optim.Optimizer, precision: str) -> bool:
    """Whether a model with several masks trains through ``SortedMaskedAdamStep``: cycled masks
    under ``MaskedAdam`` (float32 on the CPU), in full precision, ReLU or tanh units, enough
    dimensions, not opted out. Not mask sampling: a sampled mask's sorted layout serves one step,
    and building it (about 0.8 ms at 784 x 500) costs more than its blocks save."""
    return _sorted_coordinates_pay(model, precision) and isinstance(optimizer, MaskedAdam) and model.num_masks != MASK_SAMPLING


def _kernel_layout(stairs: Staircase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer's sorted coordinates as the kernels take them (see ``_MaskLayout``), checked in
    range here: the kernels index with them unchecked."""
    rows, columns, prefixes = stairs.row_order.numel(), stairs.column_order.numel(), stairs.prefixes
    for order in (stairs.row_order, stairs.column_order):
        if not torch.equal(torch.sort(order).values, torch.arange(order.numel())):
            raise ValueError("a staircase's row and column orders must be permutations")
    if prefixes.numel() != rows or (rows and not 0 <= int(prefixes.min()) <= int(prefixes.max()) <= columns):
        raise ValueError("a staircase's prefixes must lie in 0..in_features, one per row")
    column_order = stairs.column_order.to(torch.int32)
    return (
        torch.argsort(stairs.row_order),
        torch.argsort(column_order).to(torch.int32),
        column_order.contiguous(),
        prefixes.contiguous(),
    )


@dataclass(frozen=True)
class _MaskLayout:
    """One mask's sorted coordinates: the inputs in its ordering (D,), and per masked layer the
    blocked views over the step's shared buffers and the positions the kernels map with."""

    order: torch.Tensor
    layers: tuple[_SortedLayer, ...]
    row_orders: tuple[torch.Tensor, ...]  # (out,) the rows in sorted order: sorts a bias
    # Per layer, the arguments the kernels take for it: row positions (out,) int64, column
    # positions and column order (in,) int32, prefixes (out,) int64.
    kernel_layouts: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], ...]

    @property
    def row_positions(self) -> tuple[torch.Tensor, ...]:
        return tuple(layout[0] for layout in self.kernel_layouts)


class SortedMaskedAdamStep(TrainingStep):
    """A MADE with several masks (cycled or sampled) under ``MaskedAdam``, each step in its own
    mask's degree-sorted coordinates, skipping the weights' zero blocks as ``SortedFixedMaskStep``
    does. The parameters and Adam's state stay in the model's coordinates: the kernel
    ``sorted_masked_adam_`` reads each weight's gradient in this step's sorted coordinates and
    writes the next step's masked weight in the next mask's. Nothing to settle. The same updates as
    ``FusedAdamStep`` to float rounding."""

    model: MADE
    optimizer: MaskedAdam

    _SAMPLED_LAYOUTS = 2  # a sampled mask is used by two steps: written by one, read by the next

    def __init__(self, model: MADE, optimizer: MaskedAdam, grad_clip: float | None = None, blocks: int = BLOCKS) -> None:
        if grad_clip is not None:
            raise ValueError("MaskedAdam cannot clip: clipping needs the masked gradients' norm before the update")
        super().__init__(model, optimizer, None, DEFAULT_PRECISION)
        self.blocks = blocks
        self.kernels = load_kernels()
        layers = model.masked_layers()
        # Shared by every mask's layout: each step writes the parts its staircase reads.
        self.sorted_weights = [torch.zeros_like(layer.weight) for layer in layers]
        self.sorted_biases = [None if layer.bias is None else torch.zeros_like(layer.bias) for layer in layers]
        self.gradients = [torch.zeros_like(layer.weight) for layer in layers]
        self._layer_of = {id(layer.weight): index for index, layer in enumerate(layers)}
        self._layouts: dict[int, _MaskLayout] = {}
        self._prepared: tuple[int, tuple[int, ...]] | None = None  # (step, weight versions) of sorted_weights

    def _layout(self, step: int) -> _MaskLayout:
        mask_index = self.model.training_mask_index(step)
        layout = self._layouts.get(mask_index)
        if layout is None:
            order, stairs = staircases(self.model, mask_index, self.blocks)
            layout = _MaskLayout(
                order.to(self.model.device),
                tuple(
                    _SortedLayer(weight, bias, layer_stairs, cut_corners=False, gradient=gradient)
                    for weight, bias, layer_stairs, gradient in zip(
                        self.sorted_weights, self.sorted_biases, stairs, self.gradients, strict=True
                    )
                ),
                tuple(s.row_order for s in stairs),
                tuple(_kernel_layout(s) for s in stairs),
            )
            if self.model.num_masks == MASK_SAMPLING and len(self._layouts) >= self._SAMPLED_LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[mask_index] = layout
        return layout

    def _weight_versions(self) -> tuple[int, ...]:
        return tuple(layer.weight._version for layer in self.model.masked_layers())

    def logits(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return self.model.logits(x, self.model.training_mask_index(step))  # outside a step: the model's own network

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor, step: int) -> torch.Tensor:
        layout = self._layout(step)
        modules = self.model.masked_layers()
        if self._prepared != (step, self._weight_versions()):  # first step, or weights written elsewhere
            for module, kernel_layout, sorted_weight in zip(modules, layout.kernel_layouts, self.sorted_weights, strict=True):
                self.kernels.sorted_masked_weight(module.weight, *kernel_layout, sorted_weight)
        for module, sorted_bias, row_order in zip(modules, self.sorted_biases, layout.row_orders, strict=True):
            if module.bias is not None and sorted_bias is not None:
                torch.index_select(module.bias, 0, row_order, out=sorted_bias)
        loss, bias_gradients = forward_backward(layout.layers, batch.t().index_select(0, layout.order), self.model)
        for module, bias_gradient, row_positions in zip(modules, bias_gradients, layout.row_positions, strict=False):
            module.bias.grad = bias_gradient.index_select(0, row_positions)  # back to the model's rows
        for module, gradient in zip(modules, self.gradients, strict=True):
            module.weight.grad = gradient  # sorted: read by the kernel below only
        following = self._layout(step + 1)
        for param, grad, exp_avg, exp_avg_sq, hyper in adam_updates(self.optimizer):
            layer = self._layer_of.get(id(param))
            if layer is None:
                self.kernels.adam_(param, grad, exp_avg, exp_avg_sq, *hyper)
            else:
                self.kernels.sorted_masked_adam_(
                    param, grad, exp_avg, exp_avg_sq, *layout.kernel_layouts[layer], *following.kernel_layouts[layer],
                    self.sorted_weights[layer], *hyper,
                )  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        self._prepared = (step + 1, self._weight_versions())
        return loss
