"""Evaluation that skips the all-zero blocks of a MADE's masked weights.

In degree-sorted coordinates (inputs and outputs in the mask's ordering, hidden units by degree)
unit j of a masked layer sees a prefix of the layer's sorted inputs, and the prefix grows with
j: every masked weight matrix is a staircase. Cut into row blocks, block b needs only the
columns up to its last row's prefix, so the blocks' matmuls skip what lies right of the
staircase: with b blocks they do (b + 1) / (2b) of the dense work (4 blocks: 62%).

Activations are feature-major, (features, B), so that a block's inputs (a prefix of the rows)
and outputs (a run of rows) are contiguous. The log-likelihood of a row is a sum over
dimensions, so it is taken over the sorted inputs and logits as they are.

Shapes: ``x`` is (B, D) 0/1 in the model's own coordinates; log-probabilities are (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from made_core.masks import LayerDegrees, make_degrees, make_ordering
from made_core.model import ACTIVATION_FUNCTIONS, MADE, MaskedWeights, bernoulli_log_likelihood, cpu_kernels

BLOCKS = 4
"""Row blocks per masked layer: more skip more work, in narrower matmuls that run slower per FLOP."""

MIN_ROWS_TIMES_DIMS = 250_000
"""Below this many rows x input dimensions per evaluation, sorting each mask's weights costs more
than the skipped blocks save (1 thread, 1-2 hidden layers of 250-1000 units: break-even at
100-180 dimensions x 2,000 rows; 1.05-1.08x at 784 x 300, 1.36-1.44x at 500-784 x 2,000)."""


def blocked_evaluation_pays(model: MADE, rows: int) -> bool:
    """Whether evaluating ``rows`` rows with ``model`` goes through ``blocked_network``: float32
    or float64 on the CPU (GPU matmuls keep the dense path), and enough rows x dimensions."""
    weight = model.output_layer.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype in (torch.float32, torch.float64)
        and rows * model.input_dim >= MIN_ROWS_TIMES_DIMS
    )


@dataclass(frozen=True)
class BlockedLayer:
    """One masked layer in sorted coordinates: block b writes output rows ``starts[b]:starts[b + 1]``
    from the first ``widths[b]`` input rows with ``weights[b]`` (a view of the sorted masked weight)."""

    starts: tuple[int, ...]
    widths: tuple[int, ...]
    weights: tuple[torch.Tensor, ...]
    bias: torch.Tensor | None  # (out_features, 1), sorted

    def apply(self, inputs: torch.Tensor, out: torch.Tensor, accumulate: bool = False) -> torch.Tensor:
        """``out`` (out_features, B) = weight @ inputs (in_features, B) + bias, block by block;
        ``accumulate``: add weight @ inputs to ``out`` (no bias)."""
        for start, end, width, weight in zip(self.starts[:-1], self.starts[1:], self.widths, self.weights, strict=True):
            target = out[start:end]
            if accumulate:
                if width:
                    target.addmm_(weight, inputs[:width])
            elif width == 0:  # units that see no input: their bias alone
                target.copy_(self.bias[start:end].expand_as(target)) if self.bias is not None else target.zero_()
            elif self.bias is not None:
                torch.addmm(self.bias[start:end], weight, inputs[:width], out=target)
            else:
                torch.mm(weight, inputs[:width], out=target)
        return out

    @property
    def out_features(self) -> int:
        return self.starts[-1]


@dataclass(frozen=True)
class Staircase:
    """One masked layer's shape in sorted coordinates: sorted row ``r`` sees the first
    ``prefixes[r]`` sorted columns; row block b is rows ``starts[b]:starts[b + 1]``, whose
    last row sees the first ``widths[b]`` columns."""

    row_order: torch.Tensor  # (out,) the layer's rows (natural indices) in sorted order
    column_order: torch.Tensor  # (in,)
    prefixes: torch.Tensor  # (out,) int64
    starts: tuple[int, ...]
    widths: tuple[int, ...]


def staircase(degrees: LayerDegrees, row_order: torch.Tensor, column_order: torch.Tensor, blocks: int) -> Staircase:
    """The staircase of a layer whose rows and columns are sorted by ``row_order`` and
    ``column_order`` (each ascending in degree), cut into ``blocks`` row blocks."""
    rows, columns = degrees.rows[row_order], degrees.columns[column_order]
    # Unit j sees the sorted columns whose degree is below rows[j] + shift: a prefix, growing with j.
    prefixes = torch.searchsorted(columns, rows + degrees.shift)
    count = rows.numel()
    starts = tuple(sorted({round(count * b / blocks) for b in range(blocks + 1)}))
    widths = tuple(int(prefixes[end - 1]) for end in starts[1:])
    return Staircase(row_order, column_order, prefixes, starts, widths)


def staircases(model: MADE, mask_index: int, blocks: int = BLOCKS) -> tuple[torch.Tensor, tuple[Staircase, ...]]:
    """The inputs in the mask's ordering (D,) and every masked layer's staircase, in the order
    of ``model.masked_layers()``; each layer's columns are the previous layer's sorted rows."""
    degrees = make_degrees(model.input_dim, model.hidden_sizes, model.ordering, model.seed, mask_index, model.direct_connection)
    # Inputs sorted by degree: degree k + 1 is dimension order[k] (no masks built: a sampled mask is used once).
    order = make_ordering(model.ordering, model.input_dim, model.seed, mask_index)
    depth = len(model.hidden_sizes)
    hidden_orders = [torch.argsort(layer.rows, stable=True) for layer in degrees[:depth]]
    row_orders = [*hidden_orders, order] + ([order] if model.direct_connection else [])
    column_orders = [order, *hidden_orders] + ([order] if model.direct_connection else [])
    layers = tuple(
        staircase(layer_degrees, rows, columns, blocks)
        for layer_degrees, rows, columns in zip(degrees, row_orders, column_orders, strict=True)
    )
    return order, layers


def blocks_of(sorted_weight: torch.Tensor, sorted_bias: torch.Tensor | None, stairs: Staircase) -> BlockedLayer:
    """A layer whose weight (out, in) and bias (out,) are already in the sorted coordinates of
    ``stairs``, cut into its row blocks (views: later in-place writes to them show)."""
    starts, widths = stairs.starts, stairs.widths
    weights = tuple(sorted_weight[start:end, :width] for start, end, width in zip(starts[:-1], starts[1:], widths, strict=True))
    return BlockedLayer(starts, widths, weights, None if sorted_bias is None else sorted_bias.unsqueeze(1))


def _blocked_layer(masked: torch.Tensor, bias: torch.Tensor | None, stairs: Staircase) -> BlockedLayer:
    """``masked`` (out, in) in the sorted coordinates of ``stairs``, cut into its row blocks."""
    device = masked.device
    rows, columns = stairs.row_order.to(device), stairs.column_order.to(device)
    return blocks_of(
        masked.index_select(0, rows).index_select(1, columns), None if bias is None else bias.index_select(0, rows), stairs
    )


@dataclass(frozen=True)
class BlockedNetwork:
    """A MADE under one connectivity in sorted coordinates (``blocked_network``)."""

    order: torch.Tensor  # (D,) the input dimensions in the mask's ordering
    hidden: tuple[BlockedLayer, ...]
    output: BlockedLayer
    direct: BlockedLayer | None
    activation: str

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) log p(x) in nats under this connectivity, for (B, D) 0/1 ``x``."""
        return self.log_prob_of_columns(x.t())

    def log_prob_of_columns(self, columns: torch.Tensor) -> torch.Tensor:
        """(B,) log p(x) for the (D, B) transpose of the rows (``x.t()``, any strides)."""
        kernels = cpu_kernels(columns) if self.activation in ("relu", "tanh") else None
        if kernels is not None:
            # The same network in C++: each thread takes a slice of the columns through every
            # layer, where torch would split each narrow block's matmul between the threads.
            layers = [*self.hidden, self.output, *([self.direct] if self.direct is not None else [])]
            return kernels.blocked_log_prob(
                columns, self.order, [list(layer.weights) for layer in layers],
                [columns.new_empty(0) if layer.bias is None else layer.bias[:, 0] for layer in layers],
                [list(layer.starts) for layer in layers], [list(layer.widths) for layer in layers],
                len(self.hidden), self.direct is not None, self.activation == "relu",
            )  # fmt: skip
        inputs = columns.index_select(0, self.order)
        act = ACTIVATION_FUNCTIONS[self.activation]
        hidden = inputs
        for layer in self.hidden:
            hidden = act(layer.apply(hidden, inputs.new_empty(layer.out_features, inputs.shape[1])))
        logits = self.output.apply(hidden, torch.empty_like(inputs))
        if self.direct is not None:
            self.direct.apply(inputs, logits, accumulate=True)
        return bernoulli_log_likelihood(logits, inputs, dim=0)


@torch.no_grad()
def blocked_network(model: MADE, mask_index: int, weights: MaskedWeights, blocks: int = BLOCKS) -> BlockedNetwork:
    """The connectivity ``mask_index`` of ``model``, whose masked ``weights`` are given, in sorted coordinates."""
    order, stairs = staircases(model, mask_index, blocks)
    depth = len(model.hidden_sizes)
    layers = model.masked_layers()
    blocked = [
        _blocked_layer(weight, layer.bias, layer_stairs)
        for weight, layer, layer_stairs in zip(weights.in_layer_order(), layers, stairs, strict=True)
    ]
    direct = blocked[depth + 1] if weights.direct is not None else None
    return BlockedNetwork(order.to(model.device), tuple(blocked[:depth]), blocked[depth], direct, model.activation)
