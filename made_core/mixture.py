"""A mixture of trained MADEs: p(x) = sum_i w_i p_i(x), each p_i one model's test-time mask ensemble.

Probabilities are averaged, never logits, as within a model's own ensemble. The weights come from
greedy forward selection with replacement on validation data (Caruana et al., 2004, "Ensemble
selection from libraries of models"): start from the single best model, add (again, possibly) the
model that lowers the mixture's validation NLL most, stop when none does. A sweep's finalists are
such a library (``search.experiment.evaluate_best``). Shapes: per-model log-probabilities are
(N, B) for N models and B rows; weights are (N,), summing to 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from made_core.evaluate import example_log_probs
from made_core.files import atomic_write
from made_core.model import MADE, load_model, save_model

MIXTURE_FILE = "mixture.json"
MAX_SELECTION_ROUNDS = 50  # each round adds one model (or one more share of one): weights in steps of 1/50 at finest


def mixture_log_prob(per_model: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B,) log sum_i w_i p_i(x) from (N, B) log p_i(x) and (N,) weights; models of weight 0 are left out."""
    used = weights > 0
    log_weights = weights[used].to(per_model.dtype).log()
    return torch.logsumexp(per_model[used] + log_weights[:, None], dim=0)


def select_weights(
    valid_log_probs: torch.Tensor,
    max_rounds: int = MAX_SELECTION_ROUNDS,
    costs: Sequence[float] | None = None,
    budget: float | None = None,
) -> torch.Tensor:
    """(N,) mixture weights chosen on validation from (N, B) per-model log-probabilities.

    Greedy forward selection with replacement: the first pick is the model with the lowest
    validation NLL (ties: the first), each further pick the one whose added share lowers the
    mixture's validation NLL most; it stops when no pick lowers it. A non-finite model is never
    picked. The mixture's validation NLL is never above the best single model's.

    ``costs`` (N,) and ``budget``: what using each model costs (e.g. the seconds its test
    evaluation will take) and what all the models used may cost together; a model whose cost
    would exceed what is left is not picked (the first pick always is)."""
    per_model = torch.nan_to_num(valid_log_probs.to(torch.float64), nan=-torch.inf, posinf=-torch.inf)
    count = per_model.shape[0]
    if count == 0:
        raise ValueError("select_weights needs at least one model")
    if costs is not None and len(costs) != count:
        raise ValueError(f"select_weights needs one cost per model: {len(costs)} for {count}")
    single = -per_model.mean(dim=1)
    counts = torch.zeros(count, dtype=torch.float64)
    first = int(torch.argmin(single))
    counts[first] = 1.0
    left = math.inf if budget is None or costs is None else budget - costs[first]
    best = -mixture_log_prob(per_model, counts).mean().item()
    for _ in range(max_rounds - 1):
        scores = []
        for i in range(count):
            if counts[i] == 0 and costs is not None and costs[i] > left:
                scores.append(math.inf)
                continue
            trial = counts.clone()
            trial[i] += 1.0
            scores.append(-mixture_log_prob(per_model, trial / trial.sum()).mean().item())
        pick = int(np.argmin(scores))
        if not scores[pick] < best:
            break
        if counts[pick] == 0 and costs is not None:
            left -= costs[pick]
        counts[pick] += 1.0
        best = scores[pick]
    return counts / counts.sum()


@dataclass(frozen=True)
class MADEMixture:
    """Trained MADEs, each with its test-time ensemble size, and their mixture weights."""

    models: tuple[MADE, ...]
    test_masks: tuple[int, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.models or not len(self.models) == len(self.test_masks) == len(self.weights):
            raise ValueError("a mixture needs one test ensemble size and one weight per model, and at least one model")
        if any(w < 0 for w in self.weights) or not abs(sum(self.weights) - 1.0) < 1e-6:
            raise ValueError(f"mixture weights must be >= 0 and sum to 1, got {list(self.weights)}")
        if len({m.input_dim for m in self.models}) > 1:
            raise ValueError("the models of a mixture must share one input dimension")

    def per_model_log_probs(self, data: np.ndarray | torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(N, B): every model's log p_i(x) with its test ensemble."""
        return torch.stack([example_log_probs(m, data, k, batch_size) for m, k in zip(self.models, self.test_masks)])

    def log_prob(self, data: np.ndarray | torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """(B,) log p(x) in nats under the mixture."""
        return mixture_log_prob(self.per_model_log_probs(data, batch_size), torch.tensor(self.weights, dtype=torch.float64))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, D) binary samples: each row's model drawn by weight, then one of its test masks
        uniformly (a mask ensemble is an equal-weight mixture), then the row from that mask."""
        weights = torch.tensor(self.weights, dtype=torch.float64)
        models = torch.multinomial(weights, n, replacement=True, generator=generator)
        rows = torch.empty(n, self.models[0].input_dim)
        for i in models.unique().tolist():
            where = (models == i).nonzero().flatten()
            masks = torch.randint(self.test_masks[i], (len(where),), generator=generator)
            for mask in masks.unique().tolist():
                chosen = where[masks == mask]
                rows[chosen] = self.models[i].sample(len(chosen), mask, generator).cpu().to(rows.dtype)
        return rows


def save_mixture(mixture: MADEMixture, directory: str | Path) -> Path:
    """Write ``mixture.json`` and one ``model_<i>/`` folder per model (``save_model``) into ``directory``."""
    directory = Path(directory)
    entries = []
    for i, (model, masks, weight) in enumerate(zip(mixture.models, mixture.test_masks, mixture.weights)):
        save_model(model, directory / f"model_{i}")
        entries.append({"folder": f"model_{i}", "test_masks": masks, "weight": weight})
    text = json.dumps({"models": entries}, indent=2) + "\n"
    return atomic_write(directory / MIXTURE_FILE, lambda temporary: temporary.write_text(text))


def load_mixture(path: str | Path, map_location: str | torch.device = "cpu") -> MADEMixture:
    """The mixture ``save_mixture`` wrote (its folder, or its ``mixture.json``)."""
    path = Path(path)
    file = path / MIXTURE_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no MADE mixture at {path} (no {MIXTURE_FILE})")
    try:
        entries = json.loads(file.read_text())["models"]
        folders = [file.parent / str(e["folder"]) for e in entries]
        test_masks = tuple(int(e["test_masks"]) for e in entries)
        weights = tuple(float(e["weight"]) for e in entries)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{file}: not a MADE mixture file ({error})") from error
    return MADEMixture(tuple(load_model(f, map_location) for f in folders), test_masks, weights)
