"""Orderings, degrees and connectivity masks of MADE (Germain et al. 2015, Eq. 12-13).

Conventions (all tensors are torch, masks are float 0/1 in ``nn.Linear`` layout,
i.e. shape (out_features, in_features)):

- An *ordering* is a permutation ``order`` of range(D): ``order[p]`` is the input
  dimension predicted at position p. Its inverse gives each dimension's *degree*
  ``position + 1`` in 1..D (the paper's m^0(d)).
- Hidden unit k of layer l gets a degree m^l(k) drawn uniformly from
  {min_k' m^{l-1}(k'), ..., D-1}.
- Hidden mask: unit k sees unit k' of the layer below when m^l(k) >= m^{l-1}(k').
- Output mask: output d sees hidden unit k when degree(d) > m^L(k) (strict).
- Direct mask (optional input->output layer): output d sees input j when
  degree(d) > degree(j): strictly lower-triangular in ordering space.

Everything is a pure function of (seed, mask index), so mask i is the same
mask on every machine and after every restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

from made_core.hyperparameters import ORDERINGS

Ordering = Literal["natural", "random", "agnostic"]  # the values of ORDERINGS, for type checkers

LayerItem = TypeVar("LayerItem")


def in_layer_order(hidden: Iterable[LayerItem], output: LayerItem, direct: LayerItem | None) -> tuple[LayerItem, ...]:
    """One item (mask, weight or layer) per masked layer in the order of ``MADE.masked_layers()``: hidden layers, output, then direct."""
    return (*hidden, output) + (() if direct is None else (direct,))


@dataclass(frozen=True)
class MaskSet:
    """The masks of one connectivity.

    ``hidden``: one mask per hidden layer, shapes (H_1, D), (H_2, H_1), ...
    ``output``: (D, H_L).  ``direct``: (D, D) or None.  ``order``: (D,) long.
    """

    order: torch.Tensor
    hidden: tuple[torch.Tensor, ...]
    output: torch.Tensor
    direct: torch.Tensor | None

    def in_layer_order(self) -> tuple[torch.Tensor, ...]:
        """The masks in the order of ``MADE.masked_layers()``."""
        return in_layer_order(self.hidden, self.output, self.direct)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> MaskSet:
        """The same masks on ``device``, in the weights' ``dtype`` (the ordering stays long)."""

        def move(mask: torch.Tensor) -> torch.Tensor:
            return mask.to(device=device, dtype=dtype)

        direct = None if self.direct is None else move(self.direct)
        return MaskSet(self.order.to(device), tuple(move(m) for m in self.hidden), move(self.output), direct)


def mask_generator(seed: int, mask_index: int) -> torch.Generator:
    """A CPU generator seeded by (seed, mask_index); distinct pairs give distinct streams."""
    generator = torch.Generator()
    # Cantor-style mixing keeps (seed, index) pairs apart without Python's salted hash.
    generator.manual_seed((int(seed) * 1_000_003 + int(mask_index) * 7_919 + 12_345) % (2**63 - 1))
    return generator


def make_ordering(strategy: str, input_dim: int, seed: int, mask_index: int) -> torch.Tensor:
    """The ordering of mask ``mask_index``: (D,) long, ``order[p]`` = dimension at position p.

    ``natural`` is 0..D-1; ``random`` is one permutation fixed by ``seed`` and shared by
    every mask; ``agnostic`` draws a new permutation for every mask index.
    """
    if strategy == "natural":
        return torch.arange(input_dim)
    if strategy == "random":
        return torch.randperm(input_dim, generator=mask_generator(seed, -1))
    if strategy == "agnostic":
        return torch.randperm(input_dim, generator=mask_generator(seed, mask_index))
    raise ValueError(f"unknown ordering {strategy!r}; expected one of {', '.join(ORDERINGS)}")


def input_degrees(order: torch.Tensor) -> torch.Tensor:
    """Degrees 1..D of the input dimensions for an ordering: (D,) long."""
    degrees = torch.empty_like(order)
    degrees[order] = torch.arange(1, order.numel() + 1)
    return degrees


@dataclass(frozen=True)
class LayerDegrees:
    """The connectivity of one masked layer as degrees: row r (a unit or output) sees column c
    (an input to the layer) when ``rows[r] >= columns[c]``, or ``>`` when ``strict``."""

    rows: torch.Tensor  # (out_features,) long
    columns: torch.Tensor  # (in_features,) long
    strict: bool

    @property
    def shift(self) -> int:
        """The rule as one comparison for integer degrees: row r sees column c when
        ``columns[c] < rows[r] + shift`` (1: ``>=``, 0: ``>``); ``fused_adam``'s kernel applies
        exactly this to the same degrees."""
        return 0 if self.strict else 1

    def mask(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(out_features, in_features) 0/1 mask in ``dtype`` on ``device``, written with no intermediate copy."""
        compare = torch.gt if self.strict else torch.ge
        mask = torch.empty(self.rows.numel(), self.columns.numel(), device=device, dtype=dtype)
        return compare(self.rows.to(device)[:, None], self.columns.to(device)[None, :], out=mask)


def draw_degrees(
    order: torch.Tensor, hidden_sizes: Sequence[int], generator: torch.Generator, direct_connection: bool = False
) -> tuple[LayerDegrees, ...]:
    """Draw the hidden degrees for one ordering; one ``LayerDegrees`` per masked layer, in the
    order hidden layers, output, then direct (paper Eq. 12-13)."""
    input_dim = order.numel()
    if input_dim < 2:
        raise ValueError("MADE needs at least 2 input dimensions")
    inputs = input_degrees(order)
    layers, previous = [], inputs
    for size in hidden_sizes:
        low = int(previous.min())
        # Degrees below D-1's ceiling: a unit of degree D would feed no output.
        degrees = torch.randint(low, input_dim, (size,), generator=generator)
        layers.append(LayerDegrees(degrees, previous, strict=False))
        previous = degrees
    layers.append(LayerDegrees(inputs, previous, strict=True))
    if direct_connection:
        layers.append(LayerDegrees(inputs, inputs, strict=True))
    return tuple(layers)


def build_masks(
    order: torch.Tensor,
    hidden_sizes: Sequence[int],
    generator: torch.Generator,
    direct_connection: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MaskSet:
    """Draw hidden degrees and build every mask for one ordering (paper Eq. 12-13).

    Degrees are drawn on the CPU from ``generator``, so the masks do not depend on the device;
    the masks are written straight into ``dtype`` on ``device``.
    """
    masks = [layer.mask(device, dtype) for layer in draw_degrees(order, hidden_sizes, generator, direct_connection)]
    depth = len(hidden_sizes)
    return MaskSet(order.to(device), tuple(masks[:depth]), masks[depth], masks[depth + 1] if direct_connection else None)


def make_degrees(
    input_dim: int, hidden_sizes: Sequence[int], ordering: str, seed: int, mask_index: int, direct_connection: bool = False
) -> tuple[LayerDegrees, ...]:
    """The degrees behind ``make_masks`` with the same arguments (CPU tensors)."""
    order = make_ordering(ordering, input_dim, seed, mask_index)
    return draw_degrees(order, hidden_sizes, mask_generator(seed, mask_index), direct_connection)


def make_masks(
    input_dim: int,
    hidden_sizes: Sequence[int],
    ordering: str,
    seed: int,
    mask_index: int,
    direct_connection: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MaskSet:
    """Mask number ``mask_index`` of a model: a pure function of its arguments, on ``device`` in ``dtype``."""
    order = make_ordering(ordering, input_dim, seed, mask_index)
    return build_masks(order, hidden_sizes, mask_generator(seed, mask_index), direct_connection, device, dtype)
