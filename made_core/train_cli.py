"""``python -m made_core.train`` (console script ``made-train``): train one MADE, report its test NLL."""

from __future__ import annotations

import argparse
import sys

from made_core.config import DEFAULT_VALID_MASKS, HYPERPARAMETER_FIELDS, TrainConfig
from made_core.ensembles import SAMPLING_TEST_MASK_CHOICES, check_test_masks, choose_test_masks, describe_test_mask_choice
from made_core.hyperparameters import add_flags
from made_core.precision import PRECISIONS
from made_core.train import Trainer


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    from made_core.cli import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(
        prog="made-train", description="Train one MADE and report its test NLL.", formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="dataset name (e.g. dna, mnist, synthetic-mob)")
    parser.add_argument("--data-dir", default=None, help="folder of .npz files (default: $MADE_DATA_DIR, else a cache dir)")
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=list(defaults.hidden_sizes), help="hidden layer sizes, e.g. 500 500"
    )
    add_flags(parser, HYPERPARAMETER_FIELDS)
    parser.add_argument("--grad-clip", type=float, default=None, help="clip gradients to this norm (unset: no clipping)")
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument(
        "--validate-every", type=int, default=None,
        help="epochs between validations (unset: every epoch unless validating would cost more than a third of "
        "the training between two; at most patience / 4)",
    )  # fmt: skip
    parser.add_argument(
        "--valid-masks", type=int, default=None, help=f"validation ensemble size (unset: min(num_masks, {DEFAULT_VALID_MASKS}))"
    )
    parser.add_argument(
        "--test-masks",
        type=int,
        default=None,
        help="test ensemble size (unset: all num_masks masks; for mask sampling, the size among "
        f"{', '.join(map(str, SAMPLING_TEST_MASK_CHOICES))} with the lowest validation NLL)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=defaults.precision,
        help="training steps on CUDA: fp32, tf32 (TF32 matmuls) or bf16 (bf16 autocast); the CPU and every NLL stay fp32",
    )  # fmt: skip
    parser.add_argument("--checkpoint-dir", default=None, help="write a checkpoint here every epoch (unset: none)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    parser.add_argument("--save-model", default=None, help="folder to write the best model (model.pt) to (unset: not saved)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from made_core.data import DatasetError, load_dataset  # the CLI needs data; the library does not

    args = build_parser().parse_args(argv)
    try:
        if args.resume and not args.checkpoint_dir:
            raise ValueError("--resume needs --checkpoint-dir")
        config = TrainConfig(
            hidden_sizes=tuple(args.hidden), **{name: getattr(args, name) for name in HYPERPARAMETER_FIELDS},
            grad_clip=args.grad_clip, max_epochs=args.max_epochs, patience=args.patience, validate_every=args.validate_every,
            valid_masks=args.valid_masks, seed=args.seed, device=args.device, precision=args.precision,
        )  # fmt: skip
        check_test_masks(args.test_masks, config.num_masks, "--test-masks")
        data = load_dataset(args.dataset, data_dir=args.data_dir)
        if args.resume:
            trainer = Trainer.from_checkpoint(args.checkpoint_dir, data.train, data.valid, args.device, args.max_epochs)
        else:
            trainer = Trainer(config, data.train, data.valid)
    except (ValueError, DatasetError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"{data.name}: {data.train.shape[0]}/{data.valid.shape[0]}/{data.test.shape[0]} rows, D={data.input_dim}; "
          f"training on {trainer.device}, validating every {trainer.validation_interval} epoch(s); {trainer.config}",
          flush=True)  # fmt: skip
    for result in trainer.epochs():
        marker = " *" if result.is_best else ""
        print(
            f"epoch {result.epoch:4d}  train {result.train_nll:9.3f}  valid {result.valid_nll:9.3f}  "
            f"best {result.best_valid_nll:9.3f} (epoch {result.best_epoch})  "
            f"{result.epoch_seconds:6.2f}s  {result.examples_per_second:8.0f} ex/s{marker}",
            flush=True,
        )
        if args.checkpoint_dir:
            trainer.save_checkpoint(args.checkpoint_dir)
    if trainer.progress.best_epoch == 0:
        print(
            f"training diverged at epoch {trainer.progress.epoch}: no finite validation NLL; no test NLL reported",
            file=sys.stderr,
        )
        return 1
    print(f"stopped: {trainer.progress.status} after {trainer.progress.epoch} epochs; best valid NLL "
          f"{trainer.progress.best_valid_nll:.3f} at epoch {trainer.progress.best_epoch}")  # fmt: skip
    if args.save_model:
        from made_core.model import save_model

        print(f"model written to {save_model(trainer.model, args.save_model)}")
    ensemble = choose_test_masks(trainer.model, data.valid, args.test_masks, trainer.config.eval_batch_size)
    if len(ensemble.valid_by_size) > 1:
        print(f"test ensemble chosen on validation: {describe_test_mask_choice(ensemble.valid_by_size)}")
    test = trainer.evaluate(data.test, ensemble.masks)
    line = f"test NLL ({ensemble.masks} mask{'s' if ensemble.masks > 1 else ''}): {test}"
    if data.true_test_nll is not None:
        line += f"   (true NLL of the test set: {data.true_test_nll:.2f})"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
