"""The MADE paper's reference numbers (Germain, Gregor, Murray & Larochelle, ICML 2015).

They live in one file, ``results/paper_nll.csv`` (columns: ``schema.PAPER_NLL_COLUMNS``):
test negative log-likelihoods in nats per example (positive; lower is better), one row per
(dataset, model variant). ``verified`` says whether a number was checked against a source
other than memory; ``note`` says which, or that it was not. ``approximate`` marks numbers
the paper prints with "≈" (estimates for intractable models).

Dataset names are our canonical ones (``mnist``, ``adult``, ``connect4``, ``dna``,
``mushrooms``, ``nips``, ``ocr_letters``, ``rcv1``, ``web``); ``binarized_mnist`` is
accepted as an alias of ``mnist``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import pandas as pd

from results import schema

PAPER_NLL_PATH = Path(__file__).with_name(schema.PAPER_NLL_FILE)

# Names some code or data files use for the same dataset.
DATASET_ALIASES = {"binarized_mnist": "mnist"}


def canonical_dataset(name: str) -> str:
    """Our canonical dataset name for ``name`` (aliases resolved, case folded)."""
    folded = str(name).strip().lower()
    return DATASET_ALIASES.get(folded, folded)


@lru_cache(maxsize=1)
def _paper_table() -> pd.DataFrame:
    table = pd.read_csv(PAPER_NLL_PATH)
    missing = [column for column in schema.PAPER_NLL_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{PAPER_NLL_PATH} lacks columns {missing}")
    return table[list(schema.PAPER_NLL_COLUMNS)]


def load_paper_nll(dataset: str | None = None) -> pd.DataFrame:
    """The paper's rows (a copy), all of them or those of one dataset."""
    table = _paper_table()
    if dataset is not None:
        table = table[table["dataset"] == canonical_dataset(dataset)]
    return table.reset_index(drop=True).copy()


def _best_of_model(dataset: str, model: str) -> float | None:
    """The lowest finite test NLL among ``dataset``'s rows whose model is exactly ``model``."""
    rows = load_paper_nll(dataset)
    values = pd.to_numeric(rows.loc[rows["model"] == model, "test_nll"], errors="coerce")
    values = values[values.map(math.isfinite)]
    return float(values.min()) if not values.empty else None


def paper_made_nll(dataset: str) -> float | None:
    """The paper's MADE test NLL for ``dataset`` (nats), or None if it reports none.

    The best (lowest) number among the rows whose model is exactly ``schema.PAPER_MADE_MODEL``
    ("MADE": a fixed number of masks, that number chosen on validation in Table 2). Mask
    sampling is *not* included (see ``paper_mask_sampling_nll``). For dna this is 83.63; for
    mnist 86.64 (2 hidden layers, 32 masks). Synthetic datasets have no paper number.
    """
    return _best_of_model(dataset, schema.PAPER_MADE_MODEL)


def paper_mask_sampling_nll(dataset: str) -> float | None:
    """The paper's "MADE mask sampling" test NLL for ``dataset`` (nats), or None.

    The row whose model is exactly ``schema.PAPER_MASK_SAMPLING_MODEL`` (a fresh mask every
    update); dna 79.66. None where the paper reports no such number (mnist, synthetic data).
    """
    return _best_of_model(dataset, schema.PAPER_MASK_SAMPLING_MODEL)
