"""How people start sweeps: console scripts, --help, --config files, search.sweep, provenance, resume's frozen space."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from driver_processes import ROOT, finish, start_driver

from results import schema
from search import SweepResult, UsageError, sweep
from search.provenance import provenance
from search.run import build_parser, main, make_plan, parse_args
from search.settings import setting_actions

SCRIPTS = {"made-search": "search.run", "made-train": "made_core.train", "made-aggregate": "results.aggregate",
           "made-bench": "benchmarks.throughput"}  # fmt: skip


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_are_installed_and_show_help(script):
    path = shutil.which(script, path=str(Path(sys.executable).parent))
    assert path is not None, f"{script} is not installed next to {sys.executable} (pip install -e .)"
    done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
    # The python -m form keeps working and says the same.
    module = subprocess.run(
        [sys.executable, "-m", SCRIPTS[script], "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert module.returncode == 0 and module.stdout == done.stdout


def test_help_shows_every_default():
    text = " ".join(build_parser().format_help().split())
    for dest, action in setting_actions(build_parser()).items():
        if action.default is not None:
            assert f"(default: {action.default})" in text, dest
        else:
            assert "unset" in (action.help or "") or action.required, f"--{dest}: say what happens when it is not given"
    assert "32, 64, 128, 256 with the lowest validation NLL" in text  # what --test-masks really does


def test_config_file_sets_defaults_and_flags_override(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text("dataset: dna\nnum-samples: 5\nmax_epochs: 40\ntime_budget: 90\nshared_storage: true\n")
    args = parse_args(["--config", str(config), "--num-samples", "7"])
    assert (args.dataset, args.num_samples, args.max_epochs, args.time_budget, args.shared_storage) == ("dna", 7, 40, "90", True)


@pytest.mark.parametrize(
    "text,message",
    [
        ("dataset: dna\nnum_sample: 4\n", "unknown setting 'num_sample'"),
        ("dataset: dna\nnum_samples: four\n", "num_samples: expected an integer"),
        ("dataset: dna\nnum_samples: 2.5\n", "num_samples: expected an integer"),
        ("dataset: dna\nresume: yes please\n", "resume: expected true or false"),
        ("dataset: dna\ntracking: neptune\n", "is not one of mlflow, wandb"),
        ("- dataset\n", "expected a mapping of settings"),
        ("dataset: [dna\n", "YAML syntax error"),
    ],
)
def test_bad_config_file_exits_2_with_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "sweep.yaml"
    config.write_text(text)
    assert main(["--config", str(config), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_sweep_refuses_bad_input_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="unknown setting 'epochs'"):
        sweep("dna", epochs=3, storage=str(tmp_path / "runs"))
    with pytest.raises(UsageError, match="num_samples: expected an integer"):
        sweep("dna", num_samples="many", storage=str(tmp_path / "runs"))
    with pytest.raises(ValueError, match="--num-samples must be a positive integer"):  # the CLI's own checks
        sweep("dna", num_samples=0, storage=str(tmp_path / "runs"))
    with pytest.raises(UsageError, match="unknown dataset"):
        sweep("imagenet", storage=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_tracking_package_exits_2(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["--dataset", "dna", "--tracking", "wandb", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "--tracking wandb needs the wandb package: pip install 'made-search[wandb]'" in err and err.count("\n") == 1


def test_provenance_has_every_schema_key():
    recorded = provenance()
    assert tuple(recorded) == schema.PROVENANCE_KEYS
    assert set(recorded["packages"]) == {"made-search", "torch", "ray", "optuna", "numpy"}
    assert all(recorded["packages"].values())
    assert recorded["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(recorded["gpus"], list) and recorded["cpu"] and recorded["host"]
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert recorded["git_commit"] == head and isinstance(recorded["git_dirty"], bool)


def test_resume_uses_the_space_stored_in_the_experiment(tmp_path, caplog):
    space_file = tmp_path / "mine.yaml"
    space_file.write_text("params:\n  hidden_units: {choice: [16, 32]}\nfixed: {num_masks: 1}\n")
    runs = tmp_path / "runs"
    plan, _ = make_plan(
        parse_args(["--dataset", "synthetic-tiny", "--space", str(space_file), "--storage", str(runs), "--name", "mine"])
    )
    stored = plan.space.to_data()
    (runs / "mine").mkdir(parents=True)
    (runs / "mine" / schema.EXPERIMENT_FILE).write_text(
        json.dumps(
            {
                "experiment": "mine",
                "dataset": "synthetic-tiny",
                "space": str(space_file),
                "space_data": stored,
                "seed": 0,
                "num_samples": 4,
                "max_epochs": 3,
                "status": "interrupted",
            }
        )  # fmt: skip
    )
    space_file.write_text("params:\n  hidden_units: {choice: [64, 128]}\nfixed: {num_masks: 4}\n")  # edited since
    search_logger = logging.getLogger("search")  # the CLI's own handlers may keep it from propagating
    search_logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    level, search_logger.level = search_logger.level, logging.INFO
    try:
        resumed, _ = make_plan(parse_args(["--dataset", "synthetic-tiny", "--storage", str(runs), "--name", "mine", "--resume"]))
    finally:
        search_logger.removeHandler(caplog.handler)
        search_logger.setLevel(level)
    assert resumed.space.to_data() == stored and resumed.space.fixed["num_masks"] == 1
    assert "has changed since this sweep started" in caplog.text
    space_file.unlink()  # gone from disk: the stored copy is all there is, and enough
    again, _ = make_plan(parse_args(["--dataset", "synthetic-tiny", "--storage", str(runs), "--name", "mine", "--resume"]))
    assert again.space.to_data() == stored


def readme_notebook_example() -> str:
    """The Python block that follows the README's ``<!-- notebook example -->`` marker."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- notebook example -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 5, block
    return block


@pytest.mark.slow
def test_notebook_example_runs(tmp_path, ray_env):
    """The README's five-line notebook use, run as written in a fresh folder."""
    program = readme_notebook_example() + "\nimport pickle\npickle.dump(result, open('result.pickle', 'wb'))\n"
    done = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=ray_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test NLL" in done.stdout
    import pickle

    result = pickle.loads((tmp_path / "result.pickle").read_bytes())
    assert isinstance(result, SweepResult) and result.status == "finished" and result.dataset == "synthetic-tiny"
    assert len(result.trials) == 2 and {"trial_id", "status", "best_valid_nll"} <= set(result.trials.columns)
    assert result.test_nll_stderr > 0 and result.test_masks >= 1 and set(result.best_config) >= {"num_masks", "ordering"}
    assert result.mixture is not None and result.mixture["valid_nll"] <= result.valid_nll + 1e-9
    experiment = Path(result.path)
    assert experiment.parent == tmp_path / "runs"
    info = json.loads((experiment / schema.EXPERIMENT_FILE).read_text())
    assert set(info) <= set(schema.EXPERIMENT_KEYS) | set(schema.EXPERIMENT_OPTIONAL_KEYS) | set(schema.EXPERIMENT_RUN_KEYS)
    assert set(schema.EXPERIMENT_KEYS) | set(schema.EXPERIMENT_RUN_KEYS) - {"resume_commands"} <= set(info)
    assert info["settings"]["num_samples"] == 2 and info["settings"]["space"] == "quick"
    assert info["command"].startswith("search.sweep('synthetic-tiny'")
    assert tuple(info["provenance"]) == schema.PROVENANCE_KEYS
    # The tables and figures of the storage, not the project's.
    assert result.tables_dir == tmp_path / "runs" / "tables" and (result.tables_dir / schema.BEST_TABLE).exists()


@pytest.mark.slow
def test_smoke_sweep_in_a_clean_checkout_leaves_it_clean(tmp_path, ray_env):
    """Run quietly with every default from inside a fresh clone: nothing tracked changes, nothing new shows."""
    if not (ROOT / ".git").exists():
        pytest.skip("the project is not a git checkout here, so there is no clean clone to make")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    head = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    process = start_driver(["-q", "--dataset", "synthetic-tiny", "--space", "quick", "--num-samples", "2", "--max-epochs", "2",
                            "--name", "smoke", "--num-cpus", "2"], dict(ray_env, PYTHONPATH=str(clone)), cwd=clone)  # fmt: skip
    output = finish(process, timeout=600)
    assert process.returncode == 0, output
    assert "sweep smoke" not in output and "best trial" not in output, output  # -q: warnings and errors only
    status = subprocess.run(
        ["git", "-C", str(clone), "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True
    )
    assert status.stdout == "", status.stdout
    info = json.loads((clone / "runs" / "smoke" / schema.EXPERIMENT_FILE).read_text())
    assert (info["provenance"]["git_commit"], info["provenance"]["git_dirty"]) == (head, False)
    best = (clone / "runs" / "tables" / schema.BEST_TABLE).read_text()
    assert head in best  # the row's commit
    assert any((clone / "runs" / "figures").glob("smoke_*.png"))
