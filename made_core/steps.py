"""One training step of a MADE: one strategy per case, chosen once by ``make_training_step``.

A step on a (B, D) minibatch computes the logits under the step's mask, the NLL in nats per
example (BCE-with-logits summed over dimensions, averaged over examples), backpropagates,
optionally clips the gradient norm, and steps the optimiser. The strategies differ only in
how they compute the logits, and each owns what that needs:

- ``FixedMaskStep`` (num_masks = 1): the weights its mask cuts are held at zero and their
  gradients masked, so a step makes no weight x mask products. It zeroes the cut weights
  itself whenever anything else has written the weights (``tensor._version``: a resume,
  ``load_state_dict``, restoring the best weights).
- ``SortedFixedMaskStep`` (num_masks = 1, on the CPU where it pays: ``made_core.sorted_step``):
  the same in degree-sorted coordinates, multiplying only the blocks left of the weights' staircase.
- ``FusedAdamStep`` (several masks, ``MaskedAdam``): the optimiser's one C++ pass per layer
  masks the gradient, applies Adam and prepares the next step's masked weights, which the
  forward pass uses as they are.
- ``SortedMaskedAdamStep`` (cycled masks, ``MaskedAdam``, on the CPU from 300 dimensions:
  ``made_core.sorted_step``): the same with each step in its mask's degree-sorted coordinates.
- ``MaskProductStep`` (several masks, any other optimiser): weights times the step's mask,
  a cached mask for cycled masks, a fresh uncached one for mask sampling.
- ``DenseStep``: an unmasked network with ``logits(x)``, e.g. the benchmark's MLP baseline,
  so that it is timed through the very same loop.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from made_core.fused_adam import MaskedAdam
from made_core.hyperparameters import MASK_SAMPLING
from made_core.model import MADE
from made_core.precision import DEFAULT_PRECISION, forward_autocast, step_precision


class _TrainingLinear(torch.autograd.Function):
    """``x @ used_weight.T + bias`` whose gradient goes to ``weight``: ``x.T @ grad``, times
    ``gradient_mask`` when one is given. See ``training_linear``."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, used_weight: torch.Tensor,
        gradient_mask: torch.Tensor | None,
    ) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(x, used_weight, gradient_mask)
        ctx.has_bias = bias is not None
        output = F.linear(x, used_weight, bias)
        ctx.compute_dtype = output.dtype  # bf16 under autocast: the backward matmuls use it too
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, used_weight, gradient_mask = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad_output = grad_output.to(dtype)
        grad_x = grad_output @ used_weight.to(dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_output.t() @ x.to(dtype)).to(used_weight.dtype) if ctx.needs_input_grad[1] else None
        if grad_weight is not None and gradient_mask is not None:
            grad_weight.mul_(gradient_mask)
        grad_bias = grad_output.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None


def training_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, used_weight: torch.Tensor,
    gradient_mask: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    """A masked layer's output for training, computed with ``used_weight``, a masked copy of
    ``weight`` or ``weight`` itself, with no weight x mask product in the step.

    The gradient goes to ``weight``, times ``gradient_mask`` when given. A fixed-mask model
    passes its weight with the cut entries already zero and its mask: a zero gradient moves no
    zero weight in Adam, Adagrad, Adadelta or SGD (with or without L2 weight decay), so they stay
    zero. ``MaskedAdam`` passes the masked weight it prepared and no mask: it masks the gradient
    itself. Shapes: x (B, in), weight, used_weight and gradient_mask (out, in), bias (out,) or None.
    """
    return _TrainingLinear.apply(x, weight, bias, used_weight, gradient_mask)


class TrainingStep:
    """``step(batch, index)``: one update on ``batch`` (B, D) under the mask of training step
    ``index``; returns the detached loss on the device (no host sync). ``precision``: one of
    ``made_core.precision.PRECISIONS``, already made effective for the model's device."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None = None,
        precision: str = DEFAULT_PRECISION,
    ) -> None:  # fmt: skip
        self.model, self.optimizer, self.grad_clip, self.precision = model, optimizer, grad_clip, precision
        self.device_type = next(model.parameters()).device.type

    def logits(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """(B, D) logits of training step ``step``, with the gradients the optimiser needs."""
        raise NotImplementedError

    def after_update(self) -> None:
        """Called after every optimiser step."""

    def settle(self) -> None:
        """Leave the model's parameters as the model defines them; call before reading them
        (a step may keep them in other coordinates between its calls)."""

    def __call__(self, batch: torch.Tensor, step: int) -> torch.Tensor:
        with step_precision(self.precision):
            with forward_autocast(self.precision, self.device_type):
                logits = self.logits(batch, step)
                loss = F.binary_cross_entropy_with_logits(logits, batch, reduction="sum") / len(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        self.after_update()
        return loss.detach()


class DenseStep(TrainingStep):
    """An unmasked network's step: ``model.logits(x)``."""

    def logits(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return self.model.logits(x)  # type: ignore[operator]


class MaskProductStep(TrainingStep):
    """A MADE with several masks under a torch optimiser: the weights times the step's mask."""

    model: MADE

    def logits(self, x: torch.Tensor, step: int) -> torch.Tensor:
        # A mask-sampling model uses each training mask once: caching it would push the
        # evaluation ensemble's masks out and keep claiming fresh memory.
        cache = self.model.num_masks != MASK_SAMPLING
        return self.model.logits_with(x, self.model.masked_weights(self.model.training_mask_index(step), cache=cache))


class FixedMaskStep(TrainingStep):
    """A one-mask MADE trained with its cut weights held at zero (see ``training_linear``)."""

    model: MADE

    def __init__(
        self, model: MADE, optimizer: torch.optim.Optimizer, grad_clip: float | None = None, precision: str = DEFAULT_PRECISION
    ) -> None:  # fmt: skip
        if model.num_masks != 1:
            raise ValueError(f"FixedMaskStep is for a model with one mask, not {model.num_masks}")
        super().__init__(model, optimizer, grad_clip, precision)
        self._versions: tuple[int, ...] | None = None  # the weights' versions when last known cut

    def _weight_versions(self) -> tuple[int, ...]:
        return tuple(layer.weight._version for layer in self.model.masked_layers())

    @torch.no_grad()
    def zero_cut_weights(self) -> None:
        """Set the weights the mask cuts to zero; the model computes the same function."""
        for layer, mask in zip(self.model.masked_layers(), self.model.masks(0).in_layer_order()):
            layer.weight.mul_(mask)
        self._versions = self._weight_versions()

    def logits(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if self._versions != self._weight_versions():  # first step, or weights written elsewhere
            self.zero_cut_weights()
        layers, masks = self.model.masked_layers(), self.model.masks(0).in_layer_order()
        return self.model.network(
            x, lambda inputs, i: training_linear(inputs, layers[i].weight, layers[i].bias, layers[i].weight, masks[i])
        )

    def after_update(self) -> None:
        # Masked gradients keep the cut weights at zero through the optimiser's own update.
        self._versions = self._weight_versions()


class FusedAdamStep(TrainingStep):
    """A MADE with several masks under ``MaskedAdam``, which masks its gradients and prepares
    the next step's masked weights itself."""

    model: MADE
    optimizer: MaskedAdam

    def __init__(
        self, model: MADE, optimizer: MaskedAdam, grad_clip: float | None = None, precision: str = DEFAULT_PRECISION
    ) -> None:  # fmt: skip
        if grad_clip is not None:
            raise ValueError("MaskedAdam cannot clip: clipping needs the masked gradients' norm before the update")
        super().__init__(model, optimizer, None, precision)

    def logits(self, x: torch.Tensor, step: int) -> torch.Tensor:
        masked = self.optimizer.masked_weights_for(step)
        layers = self.model.masked_layers()
        return self.model.network(x, lambda inputs, i: training_linear(inputs, layers[i].weight, layers[i].bias, masked[i], None))


def make_training_step(
    model: MADE, optimizer: torch.optim.Optimizer, grad_clip: float | None = None, precision: str = DEFAULT_PRECISION,
    steps_per_settle: int = 0,
) -> TrainingStep:  # fmt: skip
    """The strategy for this model and optimiser (see the module docstring); ``steps_per_settle``:
    how many steps the caller makes between two ``settle()`` calls."""
    from made_core.sorted_step import SortedFixedMaskStep, SortedMaskedAdamStep, sorted_masks_apply, sorted_training_applies

    if sorted_masks_apply(model, optimizer, precision):
        return SortedMaskedAdamStep(model, optimizer, grad_clip)  # type: ignore[arg-type]
    if isinstance(optimizer, MaskedAdam):
        return FusedAdamStep(model, optimizer, grad_clip, precision)
    if sorted_training_applies(model, precision, steps_per_settle):
        return SortedFixedMaskStep(model, optimizer, grad_clip)
    if model.num_masks == 1:
        return FixedMaskStep(model, optimizer, grad_clip, precision)
    return MaskProductStep(model, optimizer, grad_clip, precision)
