"""``python -m benchmarks.ablation``: does a change to a configuration help on every set of the suite?

The evidence a search-space knob needs before it goes into the default space: for each dataset
of the search benchmark's suite and each seed, one training run of a base configuration (the
library's defaults unless ``--base``) and one of the same with ``--change`` applied, on the same
machine one after the other, each to convergence (patience 30) or ``--max-seconds``. It prints,
per dataset, the test NLL of both (mean over seeds ± the spread of the seeds), the difference,
and whether the change won on every seed; and writes the table as Markdown with its command
and commit.

    python -m benchmarks.ablation --change activation=tanh --seeds 2
    python -m benchmarks.ablation --base num_masks=1,ordering=natural --change num_masks=32,ordering=agnostic
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.search import SUITES, BaselineResult, dataset_source, header, log, run_config


@dataclass(frozen=True)
class Comparison:
    dataset: str
    base: list[BaselineResult]
    changed: list[BaselineResult]

    @property
    def difference(self) -> float:
        """Mean test NLL of the change minus the base's (negative: the change helps)."""
        return statistics.fmean(r.test_nll for r in self.changed) - statistics.fmean(r.test_nll for r in self.base)

    @property
    def wins(self) -> int:
        """Seeds on which the change gave the lower test NLL."""
        return sum(c.test_nll < b.test_nll for b, c in zip(self.base, self.changed, strict=True))


def chosen_on_validation(results: Sequence[BaselineResult]) -> tuple[int, BaselineResult]:
    """The seed (index) with the lowest validation NLL, and its result: what retraining a
    configuration with other seeds and keeping the best on validation delivers (search.reseed)."""
    return min(enumerate(results), key=lambda pair: pair[1].valid_nll)


def parse_assignments(text: str) -> dict[str, Any]:
    """``key=value,key=value`` over canonical hyperparameters, each value checked by its vocabulary."""
    from made_core.hyperparameters import PARAMETERS

    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        info = PARAMETERS.get(key.strip())
        if not sep or info is None:
            raise ValueError(f"{item!r}: expected name=value with a hyperparameter name ({', '.join(PARAMETERS)})")
        value: Any = raw.strip()
        if info.type is bool:
            value = {"true": True, "false": False}.get(value.lower(), value)
        elif info.type in (int, float):
            try:
                value = info.type(float(value)) if info.type is int and float(value).is_integer() else info.type(value)
            except ValueError:
                pass  # problem_for_setting names it
        problem = info.problem_for_setting(value)
        if problem is not None:
            raise ValueError(problem)
        values[info.name] = info.normalize(value)
    return values


def _mean(results: Sequence[BaselineResult]) -> str:
    values = [r.test_nll for r in results]
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{spread}"


def render(comparisons: Sequence[Comparison], base: dict[str, Any], change: dict[str, Any], run: dict[str, str]) -> str:
    described = lambda values: ", ".join(f"{k}={v}" for k, v in values.items()) or "the library's defaults"  # noqa: E731
    lines = [
        f"# Ablation: {described(change)} on {described(base)}",
        "",
        *(f"- {key}: {value}" for key, value in run.items()),
        "",
        "Test NLL in nats, mean over seeds (± their standard deviation); each run to convergence "
        "(patience 30) or the time limit; *wins*: seeds on which the change gave the lower test NLL.",
        "",
        "| dataset | base | changed | difference | wins | base epochs, s | changed epochs, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        timing = lambda rs: f"{statistics.fmean(r.epochs for r in rs):.0f}, {statistics.fmean(r.seconds for r in rs):.0f}"  # noqa: E731
        lines.append(
            f"| {c.dataset} | {_mean(c.base)} | {_mean(c.changed)} | {c.difference:+.2f} | {c.wins}/{len(c.base)} "
            f"| {timing(c.base)} | {timing(c.changed)} |"
        )
    if comparisons and len(comparisons[0].base) > 1:
        lines += [
            "",
            "## Choosing among the seeds on validation",
            "",
            "What retraining a configuration with other seeds and keeping the one with the lowest validation NLL "
            "(with its test ensemble) delivers, against seed 0 alone: test NLL.",
            "",
            "| dataset | configuration | seed 0 | chosen on validation (seed) | difference | spread over seeds |",
            "|---|---|---|---|---|---|",
        ]
        for c in comparisons:
            for label, results in (("base", c.base), ("changed", c.changed)):
                seed, chosen = chosen_on_validation(results)
                spread = max(r.test_nll for r in results) - min(r.test_nll for r in results)
                lines.append(
                    f"| {c.dataset} | {label} | {results[0].test_nll:.3f} | {chosen.test_nll:.3f} ({seed}) "
                    f"| {chosen.test_nll - results[0].test_nll:+.3f} | {spread:.3f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--change", required=True, help="name=value[,name=value]: what the changed runs use")
    parser.add_argument("--base", default="", help="name=value[,...] over the library's defaults (default: none)")
    parser.add_argument("--datasets", default=",".join(SUITES["standard"].datasets), help="comma-separated")
    parser.add_argument("--seeds", type=int, default=2, help="runs of each configuration per dataset")
    parser.add_argument("--max-epochs", type=int, default=SUITES["standard"].max_epochs)
    parser.add_argument("--max-seconds", type=float, default=SUITES["standard"].budget_seconds, help="per run")
    parser.add_argument("--data-dir", default=os.environ.get("MADE_DATA_DIR"), help="folder of the .npz files ($MADE_DATA_DIR)")
    parser.add_argument("--work", default=None, help="derived sets go here (default: the search benchmark's cache)")
    parser.add_argument("--output", default=None, help="write the table to this Markdown file too")
    args = parser.parse_args(argv)
    try:
        base, change = parse_assignments(args.base), parse_assignments(args.change)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not change or args.seeds < 1:
        print("error: --change names nothing to change" if not change else "error: --seeds must be >= 1", file=sys.stderr)
        return 2
    datasets = [d for d in args.datasets.split(",") if d]
    known = set(SUITES["standard"].datasets) | set(SUITES["smoke"].datasets)
    if unknown := sorted(set(datasets) - known):
        print(f"error: --datasets: not benchmark datasets: {', '.join(unknown)}", file=sys.stderr)
        return 2

    import torch

    from made_core.data import load_dataset
    from made_core.files import user_cache_dir

    work = Path(args.work) if args.work else user_cache_dir() / "search-benchmark"
    started = datetime.now(timezone.utc)
    torch.set_num_threads(os.cpu_count() or 1)
    comparisons = []
    for name in datasets:
        data = load_dataset(dataset_source(name, work, args.data_dir), data_dir=args.data_dir, download=False, progress=False)
        runs: dict[str, list[BaselineResult]] = {"base": [], "changed": []}
        for seed in range(args.seeds):
            for label, overrides in (("base", base), ("changed", {**base, **change})):
                result = run_config(label, overrides, data, args.max_epochs, args.max_seconds, seed)
                runs[label].append(result)
                log(f"{name} seed {seed} {label}: test {result.test_nll:.3f} ({result.epochs} epochs, {result.seconds:.0f} s)")
        comparisons.append(Comparison(name, runs["base"], runs["changed"]))
    minutes = (datetime.now(timezone.utc) - started).total_seconds() / 60
    text = render(
        comparisons,
        base,
        change,
        {
            **header(argv, "benchmarks.ablation"),
            "finished": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {minutes:.0f} min",
        },
    )
    print(text)
    if args.output:
        from results.storage import atomic_write_text

        atomic_write_text(Path(args.output), text)
    return 0 if all(math.isfinite(c.difference) for c in comparisons) else 1


if __name__ == "__main__":
    sys.exit(main())
