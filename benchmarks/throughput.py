"""Throughput benchmark: MADE training against an unmasked MLP, and mask-ensemble evaluation.

Run ``python -m benchmarks.throughput [--quick] [--device cpu|cuda] [--threads N] [--processes N] [--json PATH]``.

1. Training. Examples/s of the real training step for a MADE and for an MLP with the same
   layers, initial weights, optimiser and batches but no masks. The step is the Trainer's
   step (``made_core.steps``: gather a minibatch, logits under the step's mask, BCE-with-logits
   summed over dimensions / batch, zero_grad, backward, optimiser step, loss accumulated on
   the device, one host sync per timed block); the MADE, its optimiser and its step strategy
   are built by ``Trainer`` itself, and the MLP runs through ``DenseStep``, the same loop. The two models are timed in alternating blocks in one process (A/B,
   then B/A, ...), so a change in machine load hits both; MADE/MLP is the median over rounds
   of the ratio of adjacent blocks. Targets: MADE/MLP >= ``TARGET_RATIOS`` (by mask count). On the CPU the same
   ratio is also given by process CPU time, which other processes' load disturbs less.
   The reference run repeats this section in ``processes`` fresh Python processes and takes
   the median over them: on the 2-core CI machine one process's MLP ran at 3.4 ms per step
   and the next one's at 5.4 ms (same code, same shapes; where a process's tensors land in
   memory and cache decides it), so a single process's ratio can be off by 20%.
2. Evaluation. Examples/s of ``evaluate_nll(model, rows, n_masks=32)`` and its matmul
   FLOP rate as a fraction of the rate of the same matmuls (same shapes, same batch size)
   run dense, timed alternately in the same process. Both count the dense matmuls' FLOPs:
   evaluation skips the masked weights' zero blocks (``made_core.blocked``), so a fraction
   above 1 is faster than the dense matmuls. Target: >= ``EVALUATION_TARGET``.
3. Sampling. Milliseconds of ``MADE.sample`` for 784 dimensions against one full forward pass
   per dimension (``sample_by_passes``) with the same uniforms, timed alternately.

The benchmark reports; it never fails. Timings on a shared machine are noisy, which is why
only ratios measured side by side are compared with the target.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from made_core.allocator import keep_freed_memory
from made_core.config import TrainConfig, resolve_device
from made_core.data import DatasetError, load_dataset, resolve_data_dir
from made_core.evaluate import as_tensor, evaluate_nll
from made_core.fused_adam import MaskedAdam
from made_core.hyperparameters import MASK_SAMPLING
from made_core.machine import cpu_model
from made_core.model import ACTIVATION_FUNCTIONS, MADE
from made_core.steps import DenseStep, TrainingStep
from made_core.train import Trainer

# MADE/MLP training throughput per mask count: a MADE needs about half an MLP's matmul work.
TARGET_RATIOS: dict[int, float] = {1: 1.2, 32: 1.0}
EVALUATION_TARGET = 0.95  # ensemble evaluation against the dense matmul rate
INPUT_DIM = 784  # binarized MNIST
HIDDEN_CONFIGS: tuple[tuple[int, ...], ...] = ((500,), (500, 500))
# Mask sampling (a fresh mask every minibatch) is measured too, for information: the target
# is set for one mask and for 32 cycled masks.
TRAINING_MASK_COUNTS: tuple[int, ...] = (1, 32, MASK_SAMPLING)
ENSEMBLE_MASKS = 32
BATCH_SIZE = 100
EVAL_BATCH_SIZE = 1000  # evaluate_nll's default
RANDOM_PIXEL_PROBABILITY = 0.5


@dataclass(frozen=True)
class BenchSettings:
    """How much to measure. ``full()`` is the reference run, ``quick_run()`` a smoke run of a few seconds."""

    device: str = "auto"
    training_rounds: int = 15  # interleaved MADE/MLP block pairs per configuration
    steps_per_block: int = 16
    warmup_steps: int = 10
    training_rows: int = 10_000
    evaluation_rows: int = 10_000
    evaluation_rounds: int = 2  # interleaved ensemble/dense pairs per model (A/B, then B/A)
    direct_connection: bool = False
    data: str = "auto"  # "auto": MNIST from the data dir when present, else random rows; "random"
    processes: int = 3  # fresh processes that each measure section 1; 1: this process only
    quick: bool = False

    @classmethod
    def full(cls, **overrides: object) -> BenchSettings:
        return cls(**overrides)  # type: ignore[arg-type]

    @classmethod
    def quick_run(cls, **overrides: object) -> BenchSettings:
        values: dict[str, object] = dict(
            training_rounds=3, steps_per_block=3, warmup_steps=2, training_rows=500,
            evaluation_rows=200, evaluation_rounds=1, processes=1, quick=True,
        )  # fmt: skip
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BenchData:
    """Rows for both sections (float32 0/1, D = 784) and where they came from."""

    training_rows: np.ndarray
    evaluation_rows: np.ndarray
    description: str


@dataclass(frozen=True)
class TrainingResult:
    """One configuration of section 1. Rates are medians over rounds, in examples/s."""

    hidden_sizes: tuple[int, ...]
    num_masks: int
    made_examples_per_second: float
    mlp_examples_per_second: float
    ratio: float  # median over rounds of MADE/MLP from adjacent blocks (wall-clock rates)
    ratio_quartiles: tuple[float, float]
    cpu_time_ratio: float | None  # the same from CPU time per example; None on a GPU
    cpu_time_ratio_quartiles: tuple[float, float] | None
    rounds: int
    steps_per_block: int
    round_ratios: tuple[float, ...] = ()  # every round's MADE/MLP (wall clock), all processes pooled
    round_cpu_time_ratios: tuple[float, ...] = ()  # the same by CPU time; empty on a GPU
    process_ratios: tuple[float, ...] = ()  # each process's median ratio when measured in several

    @property
    def verdict(self) -> str:
        """PASS or MISS against the target; "-" where no target is set (mask sampling)."""
        target = TARGET_RATIOS.get(self.num_masks)
        if target is None:
            return "-"
        return "PASS" if self.ratio >= target else "MISS"


@dataclass(frozen=True)
class EvaluationResult:
    """One model of section 2. FLOPs count the matmuls only (2 * rows * fan_in * fan_out each)."""

    hidden_sizes: tuple[int, ...]
    n_masks: int
    rows: int
    examples_per_second: float
    ensemble_gflops_per_second: float
    dense_gflops_per_second: float
    fraction_of_dense: float
    fraction_of_dense_by_cpu_time: float | None  # the same from process CPU time; None on a GPU
    matmul_gflop: float
    nll: float

    @property
    def verdict(self) -> str:
        return "PASS" if self.fraction_of_dense >= EVALUATION_TARGET else "MISS"


@dataclass(frozen=True)
class SamplingResult:
    """One model of section 3: ``MADE.sample`` beside one full forward pass per dimension."""

    hidden_sizes: tuple[int, ...]
    rows: int
    milliseconds: float
    passes_milliseconds: float
    speedup: float


@dataclass
class BenchReport:
    environment: dict[str, object]
    settings: dict[str, object]
    data: str
    optimizer: str
    training: list[TrainingResult] = field(default_factory=list)
    evaluation: list[EvaluationResult] = field(default_factory=list)
    sampling: list[SamplingResult] = field(default_factory=list)


# -- the baseline --------------------------------------------------------------------
class UnmaskedMLP(nn.Module):
    """The layers of a MADE, copied with their current weights, used without masks; trained
    through ``made_core.steps.DenseStep``, the same loop as the MADE's own step."""

    def __init__(self, made: MADE) -> None:
        super().__init__()
        self.activation = ACTIVATION_FUNCTIONS[made.activation]
        self.hidden_layers = copy.deepcopy(made.hidden_layers)
        self.output_layer = copy.deepcopy(made.output_layer)
        self.direct_layer = copy.deepcopy(made.direct_layer)

    def logits(self, x: torch.Tensor, mask_index: int | None = None) -> torch.Tensor:
        hidden = x
        for layer in self.hidden_layers:
            assert isinstance(layer, nn.Linear)
            hidden = self.activation(F.linear(hidden, layer.weight, layer.bias))
        logits = F.linear(hidden, self.output_layer.weight, self.output_layer.bias)
        if self.direct_layer is not None:
            logits = logits + F.linear(x, self.direct_layer.weight)
        return logits


# -- timing helpers ------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock time covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_block(
    train_step: TrainingStep,
    rows: torch.Tensor,
    order: torch.Tensor,
    first_step: int,
    steps: int,
    batch_size: int,
) -> torch.Tensor:
    """Run ``steps`` training steps as ``Trainer.train_epoch`` does; returns the summed loss.

    Step s is ``train_step`` on minibatch ``s mod (len(order) // batch_size)`` of
    ``rows[order]``. The loss stays on
    the device (the Trainer syncs once per epoch); the caller syncs once per block by reading it.
    A test checks that this and ``Trainer.train_epoch`` give bit-identical weights.
    """
    total_loss = torch.zeros((), device=rows.device, dtype=torch.float64)
    batches = len(order) // batch_size
    for step in range(first_step, first_step + steps):
        start = (step % batches) * batch_size
        batch = rows[order[start : start + batch_size]]
        total_loss += train_step(batch, step).double() * len(batch)
    return total_loss


@dataclass(frozen=True)
class Timing:
    wall_seconds: float
    cpu_seconds: float  # CPU time of this process, all its threads


def timed(run: Callable[[], object], device: torch.device) -> Timing:
    """Wall-clock and process CPU seconds taken by ``run()``, including the GPU work it queued."""
    synchronize(device)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    run()
    synchronize(device)
    return Timing(time.perf_counter() - wall_start, time.process_time() - cpu_start)


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0])
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return (low, high)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    settings = optimizer.defaults
    if isinstance(optimizer, MaskedAdam):
        return f"MaskedAdam for MADEs with several masks, torch's fused Adam for the MLP and one-mask MADEs (lr {settings['lr']})"
    kernel = "fused" if settings.get("fused") else "foreach" if settings.get("foreach") else "per-tensor"
    return f"{type(optimizer).__name__} (lr {settings.get('lr')}, {kernel} kernel)"


# -- section 1: training --------------------------------------------------------------
def mlp_optimizer_like(made_optimizer: torch.optim.Optimizer, mlp: UnmaskedMLP) -> torch.optim.Optimizer:
    """The MLP's optimiser: the MADE's class and settings; for ``MaskedAdam``, whose fusion is
    with mask products an MLP does not have, torch's Adam with the same settings (fused on the CPU)."""
    if isinstance(made_optimizer, MaskedAdam):
        settings = made_optimizer.defaults
        return torch.optim.Adam(mlp.parameters(), lr=settings["lr"], betas=settings["betas"], eps=settings["eps"],
                                weight_decay=settings["weight_decay"], fused=True)  # fmt: skip
    return type(made_optimizer)(mlp.parameters(), **made_optimizer.defaults)


def benchmark_training(
    hidden_sizes: tuple[int, ...], num_masks: int, rows: np.ndarray, settings: BenchSettings
) -> tuple[TrainingResult, str]:
    """MADE vs unmasked MLP training throughput for one configuration; also names the optimiser."""
    config = TrainConfig(
        hidden_sizes=hidden_sizes, num_masks=num_masks, direct_connection=settings.direct_connection,
        batch_size=BATCH_SIZE, device=settings.device,
    )  # fmt: skip
    trainer = Trainer(config, rows, rows[:BATCH_SIZE])  # builds the MADE and its optimiser as training does
    made, made_optimizer = trainer.model, trainer.optimizer
    mlp = UnmaskedMLP(made).to(trainer.device)
    mlp_optimizer = mlp_optimizer_like(made_optimizer, mlp)
    device_rows = trainer.train_rows
    order = torch.randperm(len(device_rows), generator=torch.Generator().manual_seed(0)).to(trainer.device)

    for mask_index in range(num_masks):  # build every cached mask before timing
        made.masks(mask_index)
    contenders = {"MADE": trainer.train_step, "MLP": DenseStep(mlp, mlp_optimizer)}
    next_step = dict.fromkeys(contenders, 0)

    def run_block(name: str, steps: int) -> Timing:
        train_step = contenders[name]
        first = next_step[name]
        next_step[name] += steps
        return timed(lambda: float(train_block(train_step, device_rows, order, first, steps, BATCH_SIZE)), trainer.device)

    for name in contenders:
        run_block(name, settings.warmup_steps)
    examples = settings.steps_per_block * BATCH_SIZE
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    wall_ratios, cpu_ratios = [], []
    for round_index in range(settings.training_rounds):
        names = ("MADE", "MLP") if round_index % 2 == 0 else ("MLP", "MADE")
        this_round = {name: run_block(name, settings.steps_per_block) for name in names}
        for name, timing in this_round.items():
            rates[name].append(examples / timing.wall_seconds)
        made_time, mlp_time = this_round["MADE"], this_round["MLP"]
        wall_ratios.append(mlp_time.wall_seconds / made_time.wall_seconds)
        cpu_ratios.append(mlp_time.cpu_seconds / max(made_time.cpu_seconds, 1e-9))
    on_cpu = trainer.device.type == "cpu"
    result = TrainingResult(
        hidden_sizes=hidden_sizes,
        num_masks=num_masks,
        made_examples_per_second=statistics.median(rates["MADE"]),
        mlp_examples_per_second=statistics.median(rates["MLP"]),
        ratio=statistics.median(wall_ratios),
        ratio_quartiles=quartiles(wall_ratios),
        cpu_time_ratio=statistics.median(cpu_ratios) if on_cpu else None,
        cpu_time_ratio_quartiles=quartiles(cpu_ratios) if on_cpu else None,
        rounds=settings.training_rounds,
        steps_per_block=settings.steps_per_block,
        round_ratios=tuple(wall_ratios),
        round_cpu_time_ratios=tuple(cpu_ratios) if on_cpu else (),
    )
    return result, describe_optimizer(made_optimizer)


def child_command(settings: BenchSettings, json_path: Path) -> list[str]:
    """The command line of a fresh process that measures section 1 under ``settings``."""
    command = [
        sys.executable, "-m", "benchmarks.throughput", "--training-only", "--processes", "1",
        "--device", settings.device, "--data", settings.data, "--threads", str(torch.get_num_threads()),
        "--repeats", str(settings.training_rounds), "--json", str(json_path),
        "--direct-connection" if settings.direct_connection else "--no-direct-connection",
    ]  # fmt: skip
    return command + (["--quick"] if settings.quick else [])


def combine_processes(per_process: Sequence[Sequence[TrainingResult]]) -> list[TrainingResult]:
    """One result per configuration from several processes' results: the median over processes
    of each process's ratio and rates; the quartiles of every round's ratio, pooled."""
    combined = []
    for rows in zip(*per_process):
        ratios = tuple(row.ratio for row in rows)
        pooled = [ratio for row in rows for ratio in row.round_ratios]
        cpu_ratios = [row.cpu_time_ratio for row in rows if row.cpu_time_ratio is not None]
        pooled_cpu = [ratio for row in rows for ratio in row.round_cpu_time_ratios]
        first = rows[0]
        combined.append(
            TrainingResult(
                hidden_sizes=first.hidden_sizes,
                num_masks=first.num_masks,
                made_examples_per_second=statistics.median(row.made_examples_per_second for row in rows),
                mlp_examples_per_second=statistics.median(row.mlp_examples_per_second for row in rows),
                ratio=statistics.median(ratios),
                ratio_quartiles=quartiles(pooled),
                cpu_time_ratio=statistics.median(cpu_ratios) if cpu_ratios else None,
                cpu_time_ratio_quartiles=quartiles(pooled_cpu) if pooled_cpu else None,
                rounds=sum(row.rounds for row in rows),
                steps_per_block=first.steps_per_block,
                round_ratios=tuple(pooled),
                round_cpu_time_ratios=tuple(pooled_cpu),
                process_ratios=ratios,
            )
        )
    return combined


def training_in_processes(settings: BenchSettings, log: Callable[[str], None]) -> tuple[list[TrainingResult], str]:
    """Section 1 measured in ``settings.processes`` fresh processes, one after the other."""
    per_process: list[list[TrainingResult]] = []
    optimizer = ""
    with tempfile.TemporaryDirectory(prefix="made-bench-") as folder:
        for index in range(settings.processes):
            json_path = Path(folder) / f"process-{index}.json"
            finished = subprocess.run(child_command(settings, json_path), capture_output=True, text=True)
            if finished.returncode != 0:
                raise RuntimeError(
                    f"benchmark process {index + 1} failed (exit {finished.returncode}):\n{finished.stderr[-2000:]}"
                )
            report = json.loads(json_path.read_text())
            rows = [training_result_from_json(row) for row in report["training"]]
            per_process.append(rows)
            optimizer = report["optimizer"]
            log(f"  process {index + 1}/{settings.processes}: MADE/MLP " + ", ".join(f"{row.ratio:.3f}" for row in rows))
    return combine_processes(per_process), optimizer


def training_result_from_json(row: dict[str, object]) -> TrainingResult:
    """A ``TrainingResult`` back from ``asdict`` JSON (tuples came back as lists)."""
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in row.items()}
    return TrainingResult(**values)  # type: ignore[arg-type]


# -- section 2: evaluation --------------------------------------------------------------
def layer_weights(model: MADE) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The chain of (out, in) weights input -> hidden ... -> output, and the direct weight."""
    *hidden, output = model.masked_layers()[: len(model.hidden_sizes) + 1]
    chain = [layer.weight for layer in hidden] + [output.weight]
    return chain, None if model.direct_layer is None else model.direct_layer.weight


def matmul_flop(model: MADE, rows: int, n_masks: int) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of every matmul of an ``n_masks`` ensemble pass."""
    chain, direct = layer_weights(model)
    weights = chain + ([direct] if direct is not None else [])
    return n_masks * sum(2 * rows * weight.shape[0] * weight.shape[1] for weight in weights)


@torch.no_grad()
def dense_matmuls(model: MADE, rows: torch.Tensor, n_masks: int, batch_size: int) -> None:
    """The ensemble's matmuls alone: for each mask and batch, x @ W^T through the layers (no masks)."""
    chain, direct = layer_weights(model)
    for _ in range(n_masks):
        for start in range(0, len(rows), batch_size):
            inputs = rows[start : start + batch_size]
            hidden = inputs
            for weight in chain:
                hidden = torch.mm(hidden, weight.t())
            if direct is not None:
                torch.mm(inputs, direct.t())


def benchmark_evaluation(hidden_sizes: tuple[int, ...], rows: np.ndarray, settings: BenchSettings) -> EvaluationResult:
    """Ensemble evaluation throughput of an (untrained) MADE and its fraction of the dense matmul rate."""
    device = resolve_device(settings.device)
    torch.manual_seed(0)
    model = MADE(rows.shape[1], hidden_sizes, num_masks=ENSEMBLE_MASKS, ordering="agnostic",
                 direct_connection=settings.direct_connection).to(device)  # fmt: skip
    device_rows = as_tensor(rows, device, torch.float32)
    warmup_rows = device_rows[:EVAL_BATCH_SIZE]
    evaluate_nll(model, warmup_rows, n_masks=ENSEMBLE_MASKS)  # builds the 32 cached masks
    dense_matmuls(model, warmup_rows, 1, EVAL_BATCH_SIZE)

    nlls: list[float] = []

    def run_ensemble() -> None:
        nlls.append(evaluate_nll(model, device_rows, n_masks=ENSEMBLE_MASKS, batch_size=EVAL_BATCH_SIZE).mean)

    def run_dense() -> None:
        dense_matmuls(model, device_rows, ENSEMBLE_MASKS, EVAL_BATCH_SIZE)

    timings: dict[Callable[[], None], list[Timing]] = {run_ensemble: [], run_dense: []}
    for round_index in range(settings.evaluation_rounds):
        for run in (run_ensemble, run_dense) if round_index % 2 == 0 else (run_dense, run_ensemble):
            timings[run].append(timed(run, device))
    ensemble_time = statistics.median(timing.wall_seconds for timing in timings[run_ensemble])
    dense_time = statistics.median(timing.wall_seconds for timing in timings[run_dense])
    ensemble_cpu = statistics.median(timing.cpu_seconds for timing in timings[run_ensemble])
    dense_cpu = statistics.median(timing.cpu_seconds for timing in timings[run_dense])
    gflop = matmul_flop(model, len(device_rows), ENSEMBLE_MASKS) / 1e9
    return EvaluationResult(
        hidden_sizes=hidden_sizes,
        n_masks=ENSEMBLE_MASKS,
        rows=len(device_rows),
        examples_per_second=len(device_rows) / ensemble_time,
        ensemble_gflops_per_second=gflop / ensemble_time,
        dense_gflops_per_second=gflop / dense_time,
        fraction_of_dense=dense_time / ensemble_time,
        fraction_of_dense_by_cpu_time=dense_cpu / ensemble_cpu if device.type == "cpu" else None,
        matmul_gflop=gflop,
        nll=nlls[-1],
    )


# -- data and the whole run -------------------------------------------------------------
def load_bench_data(settings: BenchSettings) -> BenchData:
    """Binarized MNIST (train rows for training, the test split for evaluation) when its file is
    in the data directory and ``settings.data`` is "auto"; otherwise random 0/1 rows of MNIST shape."""
    reason = "--data random"
    if settings.data == "auto":
        try:
            mnist = load_dataset("mnist", download=False, progress=False)
        except DatasetError:
            reason = f"no binarized_mnist.npz in {resolve_data_dir()}"
        else:
            return BenchData(
                training_rows=mnist.train[: settings.training_rows],
                evaluation_rows=mnist.test[: settings.evaluation_rows],
                description=f"binarized MNIST from {resolve_data_dir()} (train split for training, test split for evaluation)",
            )
    generator = np.random.default_rng(0)
    draw = lambda count: (generator.random((count, INPUT_DIM)) < RANDOM_PIXEL_PROBABILITY).astype(np.float32)  # noqa: E731
    return BenchData(
        training_rows=draw(settings.training_rows),
        evaluation_rows=draw(settings.evaluation_rows),
        description=f"random 0/1 rows of MNIST shape, p = {RANDOM_PIXEL_PROBABILITY} ({reason})",
    )


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def environment(device: torch.device) -> dict[str, object]:
    return {
        "torch": str(torch.__version__),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_average(),
        "python": platform.python_version(),
        # Applied here, before either model runs, as Trainer does: both models train under it.
        "malloc_tuned": keep_freed_memory(),
    }


SAMPLING_ROWS = 100
SAMPLING_TARGET = 20.0  # times faster than a pass per dimension, for one hidden layer at D=784


def benchmark_sampling(hidden_sizes: tuple[int, ...], settings: BenchSettings) -> SamplingResult:
    """``MADE.sample`` (incremental for one hidden layer) against ``sample_by_passes``, timed in
    alternating rounds in this process, with the same uniforms."""
    device = resolve_device(settings.device)
    torch.manual_seed(0)
    model = MADE(INPUT_DIM, hidden_sizes, num_masks=1, ordering="agnostic", direct_connection=settings.direct_connection)
    model = model.to(device)
    rows = 20 if settings.quick else SAMPLING_ROWS
    uniforms = torch.rand(rows, INPUT_DIM, generator=torch.Generator(device=device).manual_seed(0), device=device)
    model.sample(1)  # builds the cached mask

    def sample() -> None:
        model.sample(rows, generator=torch.Generator(device=device).manual_seed(0))

    def passes() -> None:
        model.sample_by_passes(0, uniforms)

    timings: dict[Callable[[], None], list[float]] = {sample: [], passes: []}
    for round_index in range(2):
        for run in (sample, passes) if round_index % 2 == 0 else (passes, sample):
            timings[run].append(timed(run, device).wall_seconds)
    fast, slow = statistics.median(timings[sample]), statistics.median(timings[passes])
    return SamplingResult(hidden_sizes, rows, 1e3 * fast, 1e3 * slow, slow / fast)


def run_benchmark(
    settings: BenchSettings, log: Callable[[str], None] = lambda line: None, training_only: bool = False
) -> BenchReport:
    """Measure both sections (or only the first); ``log`` receives a line as each result arrives."""
    device = resolve_device(settings.device)
    data = load_bench_data(settings)
    report = BenchReport(environment=environment(device), settings=asdict(settings), data=data.description, optimizer="")
    if settings.processes > 1:
        report.training, report.optimizer = training_in_processes(settings, log)
    else:
        for hidden_sizes in HIDDEN_CONFIGS:
            for num_masks in TRAINING_MASK_COUNTS:
                result, report.optimizer = benchmark_training(hidden_sizes, num_masks, data.training_rows, settings)
                report.training.append(result)
                log(f"  training {layer_label(hidden_sizes)}, masks {mask_label(num_masks)}: MADE/MLP {result.ratio:.3f}")
    for hidden_sizes in () if training_only else HIDDEN_CONFIGS:
        evaluation = benchmark_evaluation(hidden_sizes, data.evaluation_rows, settings)
        report.evaluation.append(evaluation)
        log(f"  evaluation {layer_label(hidden_sizes)}: {evaluation.fraction_of_dense:.3f} of dense")
    for hidden_sizes in () if training_only else HIDDEN_CONFIGS:
        sampled = benchmark_sampling(hidden_sizes, settings)
        report.sampling.append(sampled)
        log(f"  sampling {layer_label(hidden_sizes)}: {sampled.speedup:.1f}x a pass per dimension")
    report.environment["load_average_end"] = load_average()
    return report


# -- the table ------------------------------------------------------------------------
def mask_label(num_masks: int) -> str:
    return "fresh" if num_masks == MASK_SAMPLING else str(num_masks)


def layer_label(hidden_sizes: Sequence[int]) -> str:
    sizes = set(hidden_sizes)
    return f"{len(hidden_sizes)}x{hidden_sizes[0]}" if len(sizes) == 1 else "-".join(map(str, hidden_sizes))


def _number(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "n/a"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _range(quartile_pair: tuple[float, float] | None) -> str:
    return "" if quartile_pair is None else f"({quartile_pair[0]:.3f}-{quartile_pair[1]:.3f})"


def _oversubscription_note(env: dict[str, object]) -> list[str]:
    """A warning when other processes already kept every CPU busy as the run started."""
    load, cpus, threads = env.get("load_average_start"), env.get("cpu_count"), env.get("cpu_threads")
    if not (isinstance(load, float) and isinstance(cpus, int) and load >= cpus):
        return []
    advice = (
        "; with several torch threads every parallel region waits for a preempted thread, so\n"
        "      these figures mostly measure contention: --threads 1 gives steadier ones"
        if isinstance(threads, int) and threads > 1 else ""
    )  # fmt: skip
    return [f"note: the CPUs were oversubscribed (load {load:.1f} on {cpus} CPUs){advice}"]


def format_report(report: BenchReport) -> str:
    """The human-readable tables of both sections."""
    env, s = report.environment, report.settings
    processes = int(s["processes"])  # type: ignore[call-overload]  # settings round-trip through JSON as plain values
    direct = "on" if s["direct_connection"] else "off"
    lines = [
        f"made_core benchmark{' (--quick)' if s['quick'] else ''}: torch {env['torch']}, device {env['device']} "
        f"({env['device_name']}, {env['cpu_threads']} torch threads on {env['cpu_count']} CPUs)",
        f"load average (1 min) at start / end: {_number(env.get('load_average_start'))} / {_number(env.get('load_average_end'))}",
        f"data: {report.data}",
        "allocator: "
        + (
            "glibc malloc keeps freed memory (made_core.allocator, as in Trainer)"
            if env.get("malloc_tuned")
            else "the platform's default settings"
        ),
        *_oversubscription_note(env),
        "",
        f"1. Training throughput, MADE vs unmasked MLP of the same shape (D={INPUT_DIM}, batch {BATCH_SIZE}, "
        f"{report.optimizer}, BCE-with-logits summed over dims / batch, direct connection {direct})",
        f"   {s['training_rounds']} interleaved rounds of {s['steps_per_block']} steps per model after "
        f"{s['warmup_steps']} warm-up steps; ex/s are medians over rounds;",
        "   MADE/MLP is the median of per-round ratios of adjacent blocks, with its interquartile range;",
        *(
            [
                f"   measured in {s['processes']} fresh processes one after the other: ex/s and MADE/MLP are the",
                "   medians over processes of each one's figures, the IQRs are over all rounds pooled, and",
                "   'per process' lists each process's MADE/MLP;",
            ]
            if processes > 1
            else []
        ),  # fmt: skip
        "   the verdict compares it with the target. 'by CPU time' is the same ratio from process CPU",
        "   seconds per example, which preemption by other processes disturbs less.",
        "   K masks are cycled one per minibatch, as in Trainer; 'fresh': a new mask every minibatch",
        f"   (mask sampling), for information: targets are for {' and '.join(map(str, TARGET_RATIOS))} masks.",
        "",
        f"   {'hidden':<8} {'masks':>5} {'MADE ex/s':>11} {'MLP ex/s':>11} {'MADE/MLP':>9}  {'(IQR)':<15} "
        f"{'by CPU time':>11}  {'(IQR)':<15} {'target':>6}  verdict" + ("  per process" if processes > 1 else ""),
    ]
    for row in report.training:
        lines.append(
            f"   {layer_label(row.hidden_sizes):<8} {mask_label(row.num_masks):>5} {row.made_examples_per_second:>11,.0f} "
            f"{row.mlp_examples_per_second:>11,.0f} {row.ratio:>9.3f}  {_range(row.ratio_quartiles):<15} "
            f"{_ratio(row.cpu_time_ratio):>11}  {_range(row.cpu_time_ratio_quartiles):<15} "
            f"{f'{TARGET_RATIOS[row.num_masks]:.2f}' if row.verdict != '-' else '-':>6}  {row.verdict:<7}"
            + "  ".join(f"{ratio:.3f}" for ratio in row.process_ratios)
        )
    if not report.evaluation:
        return "\n".join(lines)
    first = report.evaluation[0]
    lines += [
        "",
        f"2. {ENSEMBLE_MASKS}-mask ensemble evaluation: evaluate_nll(model, rows, n_masks={ENSEMBLE_MASKS}), "
        f"batch {EVAL_BATCH_SIZE}, {first.rows} rows, untrained agnostic-order MADE, direct connection {direct}",
        f"   dense reference: the same torch matmuls ({ENSEMBLE_MASKS} masks x every layer's rows x fan_in @ fan_in x fan_out, "
        f"in batches of {EVAL_BATCH_SIZE}) with nothing else;",
        f"   GFLOP/s count the dense matmuls' FLOPs only; medians of {s['evaluation_rounds']} interleaved rounds;",
        "   fraction of dense = ensemble GFLOP/s / dense GFLOP/s (wall clock), and the same by process CPU time;",
        "   evaluation skips the masked weights' zero blocks (made_core.blocked), so above 1 is faster than dense.",
        "",
        f"   {'hidden':<8} {'GFLOP':>7} {'examples/s':>11} {'ensemble GFLOP/s':>17} {'dense GFLOP/s':>14} "
        f"{'fraction of dense':>18} {'by CPU time':>12} {'target':>7}  verdict",
    ]
    for evaluated in report.evaluation:
        lines.append(
            f"   {layer_label(evaluated.hidden_sizes):<8} {evaluated.matmul_gflop:>7.1f} {evaluated.examples_per_second:>11,.0f} "
            f"{evaluated.ensemble_gflops_per_second:>17.1f} {evaluated.dense_gflops_per_second:>14.1f} "
            f"{evaluated.fraction_of_dense:>18.3f} {_ratio(evaluated.fraction_of_dense_by_cpu_time):>12} "
            f"{EVALUATION_TARGET:>7.2f}  {evaluated.verdict}"
        )
    if report.sampling:
        lines += [
            "",
            f"3. Sampling {report.sampling[0].rows} rows of D={INPUT_DIM}: MADE.sample against one full forward pass per",
            "   dimension (sample_by_passes), same uniforms, medians of 2 interleaved rounds; one hidden layer",
            f"   updates its pre-activations one input at a time (target {SAMPLING_TARGET:.0f}x), deeper nets make a pass per dimension.",
            "",
            f"   {'hidden':<8} {'sample ms':>10} {'passes ms':>10} {'speed-up':>9} {'target':>7}  verdict",
        ]
        for sampled in report.sampling:
            one_layer = len(sampled.hidden_sizes) == 1
            verdict = ("PASS" if sampled.speedup >= SAMPLING_TARGET else "MISS") if one_layer else "-"
            target = f"{SAMPLING_TARGET:.0f}x" if one_layer else "-"
            lines.append(
                f"   {layer_label(sampled.hidden_sizes):<8} {sampled.milliseconds:>10.1f} {sampled.passes_milliseconds:>10.1f} "
                f"{sampled.speedup:>8.1f}x {target:>7}  {verdict}"
            )
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    from made_core.cli import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(
        prog="made-bench", description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a reduced run: few steps, one evaluation round on 200 rows")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved training rounds per configuration (default 15; 3 with --quick)"
    )
    parser.add_argument(
        "--eval-repeats", type=int, default=None, help="interleaved evaluation rounds per model (default 2; 1 with --quick)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--direct-connection", action=argparse.BooleanOptionalAction, default=False,
                        help="benchmark models with the direct input->output layer")  # fmt: skip
    parser.add_argument("--data", choices=("auto", "random"), default="auto",
                        help="auto: binarized MNIST from $MADE_DATA_DIR (or the cache dir) when present, else random rows")  # fmt: skip
    parser.add_argument("--processes", type=int, default=None,
                        help="fresh processes that each measure the training section; the table gives the median "
                             "over them (default 3; 1 with --quick)")  # fmt: skip
    parser.add_argument("--training-only", action="store_true", help="measure the training section only")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for name in ("repeats", "eval_repeats", "threads", "processes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    overrides: dict[str, object] = {"device": args.device, "direct_connection": args.direct_connection, "data": args.data}
    if args.repeats is not None:
        overrides["training_rounds"] = args.repeats
    if args.eval_repeats is not None:
        overrides["evaluation_rounds"] = args.eval_repeats
    if args.processes is not None:
        overrides["processes"] = args.processes
    settings = BenchSettings.quick_run(**overrides) if args.quick else BenchSettings.full(**overrides)
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        report = run_benchmark(settings, lambda line: print(line, file=sys.stderr, flush=True), args.training_only)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside a test process
    print(format_report(report), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
