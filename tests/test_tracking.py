"""--tracking mlflow / wandb through Ray Tune's own logger callbacks, offline: an MLflow file store, W&B offline mode."""

from __future__ import annotations

import json

import pytest
from driver_processes import finish, start_driver

from results import schema

TINY = ["--dataset", "synthetic-tiny", "--space", "quick", "--max-epochs", "2", "--num-cpus", "2", "--no-tables"]


@pytest.mark.slow
def test_mlflow_tracking_with_config_file_and_verbose_output(tmp_path, ray_env, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]')")
    config = tmp_path / "sweep.yaml"
    config.write_text(f"num-samples: 3\nseed: 5\nstorage: {tmp_path / 'runs'}\ntracking: mlflow\n")
    env = {key: value for key, value in ray_env.items() if key != "MLFLOW_TRACKING_URI"}
    process = start_driver(
        ["--config", str(config), "-v", *TINY, "--num-samples", "2", "--name", "tracked", "--reseeds", "1"], env
    )
    output = finish(process, timeout=600)
    assert process.returncode == 0, output
    assert "Trial status:" in output, output  # -v: Ray Tune's own trial table
    experiment = tmp_path / "runs" / "tracked"
    settings = json.loads((experiment / schema.EXPERIMENT_FILE).read_text())["settings"]
    assert (settings["num_samples"], settings["seed"], settings["tracking"]) == (2, 5, "mlflow")  # the flag beats the file
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the file store the sweep wrote

    client = MlflowClient(tracking_uri=(experiment / "mlruns").resolve().as_uri())
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert len(runs) == 3  # the two trials, and the leader retrained with another seed
    assert all("best_valid_nll" in run.data.metrics and run.data.params for run in runs)
    assert [run.data.params.get(schema.TRIAL_SEED_KEY) for run in runs].count("6") == 1


@pytest.mark.slow
def test_wandb_tracking_offline(tmp_path, ray_env):
    pytest.importorskip("wandb", reason="the wandb extra is not installed (pip install -e '.[wandb]')")
    wandb_dir = tmp_path / "wandb-files"
    wandb_dir.mkdir()
    env = dict(ray_env, WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true")
    process = start_driver(
        [*TINY, "--num-samples", "2", "--name", "wb", "--storage", str(tmp_path / "runs"), "--tracking", "wandb"], env
    )
    output = finish(process, timeout=600)
    assert process.returncode == 0, output
    offline_runs = list(wandb_dir.glob("wandb/offline-run-*"))
    assert len(offline_runs) == 2, (offline_runs, output[-3000:])
    assert all(list(run.glob("*.wandb")) for run in offline_runs)
