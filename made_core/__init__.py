"""made_core: a correct, fast MADE (Germain et al. 2015) in PyTorch, with data, training and evaluation.

No Ray and no Optuna here: everything needed to train and evaluate one model.
"""

from made_core.data import DATASETS, DatasetError, Splits, canonical_name, load_dataset
from made_core.evaluate import NLL, evaluate_nll
from made_core.masks import MASK_SAMPLING, ORDERINGS, make_masks
from made_core.model import MADE, load_model, save_model
from made_core.train import EpochResult, Trainer, TrainConfig

__all__ = [
    "DATASETS", "DatasetError", "Splits", "canonical_name", "load_dataset", "NLL", "evaluate_nll",
    "MASK_SAMPLING", "ORDERINGS", "make_masks", "MADE", "load_model", "save_model", "EpochResult",
    "Trainer", "TrainConfig",
]  # fmt: skip
