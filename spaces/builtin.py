"""The built-in search spaces, as declarative data (the same format as space files).

- ``default``: what a user gets. Aimed at short sweeps (about 16 trials) on a
  small CPU machine as well as GPU sweeps: it searches what matters most for
  MADE (depth, width, masks, ordering, direct connection, learning rate,
  regularisation, batch size, activation) with one well-behaved optimizer (Adam), so no
  trials go to optimizer/learning-rate mismatches, and caps the UCI widths at
  1000 units so no trial is a huge, slow net. MNIST gets wider layers.
- ``paper``: the grid of Germain et al. (2015): 1-2 hidden layers of 500 units
  (MNIST up to 8000), 1-32 masks or mask sampling, the three ordering
  strategies, direct connection or not, Adagrad / Adadelta / SGD, minibatches of
  100, ReLU.
- ``quick``: a tiny, fast space for smoke runs and tests.

Overrides are keyed by the canonical dataset name (``mnist``): the CLI and the API resolve
aliases such as ``binarized_mnist`` before a space sees the name.
"""

from __future__ import annotations

from typing import Any

from made_core.hyperparameters import DEFAULTS, ORDERINGS

MASK_COUNTS = [1, 2, 4, 8, 16, 32, 0]
"""The paper's mask counts: 1 (plain MADE) to 32, and 0 for mask sampling."""

ALL_ORDERINGS = list(ORDERINGS)


PLAIN_MADE_START: dict[str, Any] = {
    "hidden_layers": 1,
    "hidden_units": 500,
    "num_masks": 1,
    "ordering": "natural",
    "direct_connection": True,
    "learning_rate": 1.0e-3,
    "weight_decay": 0.0,
    "batch_size": 100,
    "activation": "relu",
}
"""The plain single-mask MADE in natural order (Adam 1e-3): MNIST's start point, widened."""

_START_KEYS = tuple(PLAIN_MADE_START)

LIBRARY_DEFAULTS_START: dict[str, Any] = {key: DEFAULTS[key] for key in _START_KEYS}
"""The library's default configuration (``made_core.hyperparameters.DEFAULTS``) as a start point."""

DEFAULT: dict[str, Any] = {
    "name": "default",
    "description": (
        "Effective general-purpose MADE space: 1-2 layers of 250-1000 units (MNIST 500-2000), "
        "1-32 masks or mask sampling, all orderings, direct connection or not, Adam with a "
        "log-uniform learning rate, optional weight decay, common batch sizes, ReLU or tanh units."
    ),
    "params": {
        "hidden_layers": {"int": [1, 2]},
        "hidden_units": {"choice": [250, 500, 750, 1000]},
        "num_masks": {"choice": MASK_COUNTS},
        "ordering": {"choice": ALL_ORDERINGS},
        "direct_connection": {"choice": [True, False]},
        # Mask ensembles share the updates among their masks and want larger steps than a
        # single MADE: on dna, 32 masks or mask sampling at 3e-3 beat 1e-3 by 1-2 nats.
        "learning_rate": {"float": [3.0e-4, 1.0e-2], "log": True},
        # A categorical so that "no weight decay" is as likely as any strength. 1e-2 pays only on
        # the smallest sets (400-500 training rows: -0.6 to -2.3 nats) and costs 0.3-6.8 nats on
        # the others (results/ablation_weight_decay.md), so the search picks it per dataset.
        "weight_decay": {"choice": [0.0, 1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2]},
        "batch_size": {"choice": [32, 64, 100, 128, 256]},
        # tanh against ReLU on the library's defaults (results/ablation_tanh.md, 2 seeds): better
        # on the four suite sets with 400-2,000 training rows (by 0.09-1.25 nats), worse on the
        # three with 10,000-50,000 (by 0.00-0.25); so the search picks, per dataset.
        "activation": {"choice": ["relu", "tanh"]},
    },
    "fixed": {"optimizer": "adam", "momentum": 0.0},
    # Evaluated first, so short sweeps start from strong points instead of pure random
    # start-up trials: the library's defaults (one layer of ReLU units with the direct
    # connection), (1) trained as an order-agnostic ensemble of 32 masks with Adam at 3e-3 (the
    # paper's connectivity-agnostic recipe; best on the small UCI sets), and (2) as they are
    # (8 agnostic masks, Adam 1e-3), which beat the plain single-mask MADE on all 7 sets of the
    # search benchmark (results/search_benchmark.md, "Baselines"), but 1000 units wide: better
    # than 500 on 6 of the 7 sets, equal on the 7th (results/ablation_width.md); the 32-mask
    # point stays at 500, where 1000 lost 1 nat on dna. The 1000-unit point has weight decay
    # 1e-4: over 3 seeds lower on 5 of the 7 sets at every seed (by 0.002-0.16), level on the
    # other two on average (results/ablation_start_point_depth_wd.md).
    "start": [
        {**LIBRARY_DEFAULTS_START, "num_masks": 32, "learning_rate": 3.0e-3},
        {**LIBRARY_DEFAULTS_START, "hidden_units": 1000, "weight_decay": 1.0e-4},
    ],
    "datasets": {
        "mnist": {
            "params": {
                # The paper's best MNIST nets are wide (2 x 8000: the `paper` space); the default
                # stays trainable on a few CPU cores.
                # 2000 units: a 1 x 2000 MADE reached test 89.80 in 19 epochs (3.5 min, 2 cores)
                # where 1 x 500 plateaus at valid 92.2 and 1 x 1000 at 91.8.
                "hidden_units": {"choice": [500, 1000, 2000]},
                # 50,000 training images: small minibatches make epochs slow without helping.
                "batch_size": {"choice": [100, 128, 256]},
            },
            # The plain MADE (one mask, natural order, direct connection, Adam 1e-3) at the widest
            # width: on MNIST width pays more than masks on a CPU budget (the 32-mask agnostic
            # start was still at valid 98.8 when cut at epoch 20).
            "start": [{**PLAIN_MADE_START, "hidden_units": 2000}],
        }
    },
}

PAPER: dict[str, Any] = {
    "name": "paper",
    "description": (
        "The grid of Germain et al. (2015): 1-2 hidden layers of 500 units (MNIST 500-8000), "
        "1-32 masks or mask sampling, natural/random/agnostic orderings, direct connection or not, "
        "Adagrad, Adadelta or SGD (with or without momentum) at a constant lr, minibatches of 100, ReLU."
    ),
    "params": {
        "hidden_layers": {"int": [1, 2]},
        "num_masks": {"choice": MASK_COUNTS},
        "ordering": {"choice": ALL_ORDERINGS},
        "direct_connection": {"choice": [True, False]},
        "optimizer": {"choice": ["adagrad", "adadelta", "sgd"]},
        # Adagrad and SGD share one log range (the released MNIST model used Adagrad at 0.01).
        # Adadelta runs at torch's reference lr 1.0: the paper tuned Adadelta's epsilon and
        # decay instead (e.g. 1e-5 and 0.95 for dna), which are not canonical hyperparameters.
        "learning_rate": {
            "float": [0.005, 0.1],
            "log": True,
            "when": {"optimizer": ["adagrad", "sgd"]},
            "otherwise": 1.0,
        },
        # Plain SGD, or SGD with the usual momentum.
        "momentum": {"choice": [0.0, 0.9], "when": {"optimizer": "sgd"}},
    },
    # The paper trained at a constant lr.
    "fixed": {"hidden_units": 500, "activation": "relu", "weight_decay": 0.0, "lr_decay": 1.0, "batch_size": 100},
    "datasets": {"mnist": {"params": {"hidden_units": {"choice": [500, 1000, 2000, 4000, 8000]}}}},
}

QUICK: dict[str, Any] = {
    "name": "quick",
    "description": "Tiny and fast, for smoke runs and tests: one layer of 16-64 units, Adam, 1/4/sampled masks.",
    "params": {
        "hidden_units": {"choice": [16, 32, 64]},
        "num_masks": {"choice": [1, 4, 0]},
        "ordering": {"choice": ALL_ORDERINGS},
        "direct_connection": {"choice": [True, False]},
        "learning_rate": {"float": [1.0e-3, 3.0e-2], "log": True},
    },
    "fixed": {"hidden_layers": 1, "activation": "relu", "optimizer": "adam", "weight_decay": 0.0, "batch_size": 100},
}

BUILTIN_SPACES: dict[str, dict[str, Any]] = {space["name"]: space for space in (DEFAULT, PAPER, QUICK)}
"""Built-in space name to its declarative data."""
