"""Training precision on CUDA: full float32, TF32 matmuls, or bf16 autocast.

- ``fp32``: every matmul in IEEE float32 (the default, and the only mode on the CPU).
- ``tf32``: float32 tensors, matmuls on TF32 tensor cores (Ampere and later): about 10
  mantissa bits per product, float32 accumulation.
- ``bf16``: the forward pass under ``torch.autocast`` to bfloat16; weights, gradients,
  the optimiser and the loss (BCE-with-logits autocasts to float32) stay float32, and bf16's
  float32 exponent range needs no loss scaling.

Only training steps change: validation and test NLLs, which the search ranks and the tables
report, are always computed in float32.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, so that command lines can offer PRECISIONS without it.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
DEFAULT_PRECISION = "fp32"


def precision_problem(precision: str) -> str | None:
    """Why ``precision`` is not a training precision, or None."""
    if precision not in PRECISIONS:
        return f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
    return None


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision a run on ``device`` uses: as asked on CUDA, float32 elsewhere (with a
    warning when something else was asked: the CPU has no TF32 and its bf16 matmuls are slower
    than float32 on most CPUs)."""
    if problem := precision_problem(precision):
        raise ValueError(problem)
    if device.type != "cuda" and precision != DEFAULT_PRECISION:
        warnings.warn(f"precision {precision!r} applies to CUDA only; training on {device.type} in fp32", stacklevel=2)
        return DEFAULT_PRECISION
    return precision


@contextlib.contextmanager
def step_precision(precision: str) -> Iterator[None]:
    """The scope of one whole training step (forward, backward, update): TF32 matmuls when
    ``precision`` is "tf32", restored after the step so that evaluation stays float32."""
    if precision != "tf32":
        yield
        return
    import torch

    previous = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = previous


def forward_autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager[object]:
    """The scope of a training step's forward pass and loss: bf16 autocast on ``device_type``
    when ``precision`` is "bf16" (the backward pass runs outside it, as torch advises)."""
    if precision == "bf16":
        import torch

        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
