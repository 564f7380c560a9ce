"""made_core: a correct, fast MADE (Germain et al. 2015) in PyTorch, with data, training and evaluation.

No Ray and no Optuna here: everything needed to train and evaluate one model.
"""

from typing import Any

from made_core.data import DATASETS, DatasetError, Splits, canonical_name, load_dataset
from made_core.evaluate import NLL, evaluate_nll
from made_core.masks import MASK_SAMPLING, ORDERINGS, make_masks
from made_core.model import MADE, load_model, save_model

# Imported on first use: importing made_core.train here would make `python -m made_core.train`
# run a module that is already in sys.modules (runpy warns about exactly that).
_TRAINING_NAMES = ("EpochResult", "Trainer", "TrainConfig")


def __getattr__(name: str) -> Any:
    if name in _TRAINING_NAMES:
        from made_core import train

        return getattr(train, name)
    raise AttributeError(f"module 'made_core' has no attribute {name!r}")


__all__ = [
    "DATASETS", "DatasetError", "Splits", "canonical_name", "load_dataset", "NLL", "evaluate_nll",
    "MASK_SAMPLING", "ORDERINGS", "make_masks", "MADE", "load_model", "save_model", *_TRAINING_NAMES,
]  # fmt: skip
