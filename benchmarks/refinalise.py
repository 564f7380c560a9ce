"""Redo the final stage of a search benchmark run's sweeps with the current code, and compare.

For every experiment of ``<work>/<run>/experiments`` it re-evaluates the top ``--finalists``
trials with their test-time ensembles (``search.experiment.reselect``) and writes, into a scratch
folder, what the sweep would now deliver (``evaluate_best`` with validation data: the chosen model
and the finalists' mixture), printing a table of the delivered test NLLs. No trial is retrained,
and the experiments are only read.

    python -m benchmarks.refinalise <work>/<run> --finalists 8 --output table.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refinalise", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a search benchmark run folder (<work>/<timestamp>) holding experiments/")
    parser.add_argument("--finalists", type=int, default=8, help="top trials by sweep objective to re-evaluate and mix")
    parser.add_argument("--data-dir", default=os.environ.get("MADE_DATA_DIR"), help="folder of the .npz files ($MADE_DATA_DIR)")
    parser.add_argument("--output", default=None, help="write the table to this Markdown file too")
    args = parser.parse_args(argv)
    run = Path(args.run)
    experiments = sorted(p for p in (run / "experiments").glob("*") if (p / "best.json").is_file())
    if not experiments or args.finalists < 1:
        print(f"error: {'--finalists must be >= 1' if experiments else f'no finished experiments under {run}/experiments'}",
              file=sys.stderr)  # fmt: skip
        return 2

    import torch

    from benchmarks.search import dataset_source, log
    from made_core.data import load_dataset
    from search.experiment import evaluate_best, read_ray_trials, reselect

    torch.set_num_threads(os.cpu_count() or 1)
    lines = [f"Finalists: the top {args.finalists} by sweep objective. *Before*: the sweep's own best.json. Test NLL in nats.", "",
             "| experiment | before: test NLL | chosen now: test NLL | mixture: valid NLL | mixture: test NLL | mixture - before | models mixed |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="refinalise-") as scratch:
        for path in experiments:
            before = json.loads((path / "best.json").read_text())
            info = json.loads((path / "experiment.json").read_text())
            source = dataset_source(before["dataset"], run, args.data_dir)
            data = load_dataset(source, data_dir=args.data_dir, download=False, progress=False)
            ranked = reselect(read_ray_trials(path), data.valid, None, args.finalists, int(info.get("seed", 0)))
            now = evaluate_best(Path(scratch) / path.name, ranked, before["dataset"], data.test, mix=True)
            assert now is not None
            mixture = now["mixture"]
            row = (f"| {path.name} | {before['test_nll']:.3f} | {now['test_nll']:.3f} | {mixture['valid_nll']:.3f} "
                   f"| {mixture['test_nll']:.3f} | {mixture['test_nll'] - before['test_nll']:+.3f} | {len(mixture['models'])} |")  # fmt: skip
            log(row)
            lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        from results.storage import atomic_write_text

        atomic_write_text(Path(args.output), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
