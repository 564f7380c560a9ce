"""The Optuna study in a real PostgreSQL server on loopback: a sweep, its --resume, and a second experiment continuing the study."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pandas as pd
import pytest
from driver_processes import finish, kill_after_finished, start_driver

from results import schema


def _server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian keeps them off PATH, under /usr/lib/postgresql/<version>/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (trust auth), stopped and removed afterwards."""
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server here (initdb/pg_ctl not found): apt-get install -y postgresql, as .ci/run does")
    pytest.importorskip("psycopg", reason="the postgres extra is not installed (pip install -e '.[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="mspg", dir="/tmp"))
    as_server_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres account the package made
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres account to run the server as")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_server_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    pg_ctl = [*as_server_user, str(binaries / "pg_ctl"), "-D", str(data), "-w"]
    subprocess.run([*as_server_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    subprocess.run([*pg_ctl, "-l", str(root / "server.log"), "-o", f"-h 127.0.0.1 -p {port} -k {root}", "start"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_sweep_resume_and_shared_study_in_postgresql(tmp_path, ray_env, postgres_url):
    runs = str(tmp_path / "runs")
    common = ["--dataset", "synthetic-tiny", "--storage", runs, "--num-cpus", "2", "--no-tables"]
    search = [*common, "--space", "quick", "--max-epochs", "6", "--grace-period", "6", "--concurrency", "1",
              "--optuna-storage", postgres_url, "--study-name", "shared"]  # fmt: skip
    first = start_driver([*search, "--name", "pg-1", "--num-samples", "3"], ray_env)
    finished = kill_after_finished(first, 1)

    # --resume needs neither the URL nor the study name again: experiment.json has them.
    resumed = start_driver([*common, "--name", "pg-1", "--resume"], ray_env)
    output = finish(resumed, timeout=600)
    assert resumed.returncode == 0, output
    trials = pd.read_csv(tmp_path / "runs" / "pg-1" / schema.TRIALS_FILE, dtype={"trial_id": str})
    assert len(trials) == 3 and (trials["status"] == "TERMINATED").all() and set(finished) <= set(trials["trial_id"])
    info = json.loads((tmp_path / "runs" / "pg-1" / schema.EXPERIMENT_FILE).read_text())
    assert (info["optuna_storage"], info["study_name"], info["resumes"]) == (postgres_url, "shared", 1)
    complete = optuna.trial.TrialState.COMPLETE
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    first_count = sum(t.state == complete for t in study.trials)
    assert first_count >= 3

    # A second experiment continues the same study.
    second = start_driver([*search, "--name", "pg-2", "--num-samples", "2"], ray_env)
    output = finish(second, timeout=600)
    assert second.returncode == 0, output
    assert len(pd.read_csv(tmp_path / "runs" / "pg-2" / schema.TRIALS_FILE)) == 2
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    assert sum(t.state == complete for t in study.trials) == first_count + 2
    assert optuna.study.get_all_study_names(postgres_url) == ["shared"]
    assert not (tmp_path / "runs" / "pg-1" / schema.STUDY_FILE).exists()  # no SQLite study beside it
