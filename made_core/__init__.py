"""made_core: a correct, fast MADE (Germain et al. 2015) in PyTorch, with data, training and evaluation.

No Ray and no Optuna here: everything needed to train and evaluate one model.

The names below are imported on first use, so that light modules (``made_core.files``)
import without torch, and ``python -m made_core.train`` does not run a module already in
``sys.modules`` (runpy warns about exactly that).
"""

from importlib import import_module
from typing import Any

_HOME = {
    "DATASETS": "data", "DatasetError": "data", "Splits": "data", "canonical_name": "data", "load_dataset": "data",
    "NLL": "evaluate", "evaluate_nll": "evaluate",
    "MASK_SAMPLING": "hyperparameters", "ORDERINGS": "hyperparameters", "make_masks": "masks",
    "MADE": "model", "load_model": "model", "save_model": "model",
    "MADEMixture": "mixture", "load_mixture": "mixture", "save_mixture": "mixture",
    "EpochResult": "train", "Trainer": "train", "TrainConfig": "config", "CheckpointError": "files",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(f"made_core.{_HOME[name]}"), name)
    raise AttributeError(f"module 'made_core' has no attribute {name!r}")


__all__ = list(_HOME)
