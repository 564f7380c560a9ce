"""Search spaces for MADE: named, declarative data turned into Optuna define-by-run functions.

Usage with Ray Tune (one study per dataset)::

    from spaces import get_space
    space = get_space("default")          # or "paper", "quick", or a path to a space file
    searcher = OptunaSearch(space=space.define_by_run("dna"), metric="valid_nll", mode="min",
                            sampler=optuna.samplers.TPESampler(seed=0))

Every configuration a define-by-run function produces is a flat dict with exactly
the keys of ``HYPERPARAMETERS`` (see ``made_core.hyperparameters`` for their types,
domains, defaults and meaning; ``num_masks`` = 0 means a fresh mask every
minibatch, the convention shared with ``made_core``). Each searched parameter is
suggested under its canonical name with one distribution, so Optuna's study,
Ray's config and the result tables all use the same names.

The space format
----------------
The same structure in a Python dict (``SPACE = {...}`` in a ``.py`` file), YAML
(``.yaml``/``.yml``) or JSON (``.json``)::

    name: mine                   # optional in files; defaults to the file's stem
    description: one line        # optional
    params:                      # required (``params: {}`` if nothing is searched)
      hidden_layers: {int: [1, 2]}                      # integers low..high, both included
      hidden_units: {int: [250, 1000], step: 250}       # optional step: (int and float ranges)
      weight_decay: {float: [0.0, 1.0e-4]}              # floats in [low, high]
      num_masks: {choice: [1, 2, 4, 8, 16, 32, 0]}      # categorical (any parameter; bool/str only this)
      optimizer: {choice: [adam, adadelta, sgd]}
      learning_rate:                                    # log: true = log-uniform; conditional, with
        {float: [1.0e-4, 3.0e-3], log: true,            # Adadelta trials fixed at lr 1.0
         when: {optimizer: [adam, sgd]}, otherwise: 1.0}
      momentum: {float: [0.0, 0.95], when: {optimizer: sgd}}   # only for SGD trials, else 0.0
    fixed:                       # constants
      activation: relu
      direct_connection: false
    start:                       # optional: partial configurations evaluated first, in order
      - {num_masks: 32, learning_rate: 3.0e-3}
    datasets:                    # per-dataset overrides, by the dataset name given to define_by_run
      mnist:
        params: {hidden_units: {choice: [500, 1000, 2000]}}
        fixed: {batch_size: 100}
        start:                   # optional: this dataset's start points, in place of the base list
          - {hidden_units: 2000, num_masks: 1}

Rules:

- Keys under ``params``/``fixed`` are canonical parameter names; unknown names,
  unknown keys anywhere, values outside a parameter's domain (e.g. ordering
  ``foo``, momentum 1.0), ``low > high``, log ranges with a non-positive low
  bound, a step that does not divide the range, a parameter both searched and
  fixed, or a wrong type (e.g. ``float:`` for hidden_units) are errors.
- Every parameter gets a value in every trial: searched, fixed, or its default.
- ``when: {p: v}`` suggests the parameter only in trials where parameter ``p``
  (searched, fixed or default) equals ``v``; ``when: {p: [v1, v2]}`` accepts any
  listed value; several keys must all hold. In the other trials the parameter
  takes ``otherwise:`` if given, else its default (so ``momentum`` above is 0.0
  unless the optimizer is SGD). Conditions may chain but not form a cycle.
- A dataset override replaces, for that dataset only, the base entries of the
  parameters it names (a parameter may move between ``params`` and ``fixed``).
  Dataset names are matched exactly; other names get the base space.
- ``start`` values must lie in their searched parameter's domain; where a dataset
  override no longer admits a value, that value is left to the sampler. A dataset
  override's own ``start`` list replaces the base list for that dataset and must lie
  in that dataset's domains.
- In YAML, ``1e-3`` is read as a number (as in YAML 1.2 and JSON).

Errors are ``SpaceError`` (a ``ValueError``) with the space name and the dotted
path of the problem, e.g. ``space 'mine': params.ordering: choice: unknown value
'foo' (allowed: natural, random, agnostic)``.
"""

from made_core.hyperparameters import DEFAULTS, HYPERPARAMETERS, MASK_SAMPLING, PARAMETERS, ParameterInfo
from spaces.builtin import BUILTIN_SPACES
from spaces.domains import Choice, Condition, FloatRange, IntRange, SearchedParameter
from spaces.errors import SpaceError
from spaces.loading import SPACE_FILE_SUFFIXES, available_spaces, get_space, load_space_file
from spaces.parsing import DatasetOverride
from spaces.space import DefineByRun, Layout, SearchSpace

__all__ = [
    "BUILTIN_SPACES",
    "Choice",
    "Condition",
    "DEFAULTS",
    "DatasetOverride",
    "DefineByRun",
    "FloatRange",
    "HYPERPARAMETERS",
    "IntRange",
    "Layout",
    "MASK_SAMPLING",
    "PARAMETERS",
    "ParameterInfo",
    "SPACE_FILE_SUFFIXES",
    "SearchSpace",
    "SearchedParameter",
    "SpaceError",
    "available_spaces",
    "get_space",
    "load_space_file",
]
