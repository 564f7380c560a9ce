"""URI storage (--storage s3://...) against a real S3-compatible server on loopback (moto in server mode).

The server runs as ``python -m moto.server -H 127.0.0.1 -p <free port>`` in its own process
group, killed by id at the end; every URI names it with pyarrow's query parameters
(``?endpoint_override=127.0.0.1:<port>&scheme=http``), which Ray hands to pyarrow unchanged.
Credentials are the dummy ``testing`` pair and instance-metadata lookups are disabled, so
nothing leaves the loopback interface. Skipped (with the reason) when moto is not installed:
``pip install -e ".[dev]"``.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from driver_processes import ROOT, finish, kill_group, start_driver

from results import schema
from results.aggregate import aggregate
from results.storage import (
    STAGING_ENV,
    ExperimentFolder,
    PeriodicUpload,
    StorageError,
    check_writable,
    fetch_experiments,
    is_uri,
    join_uri,
    list_experiments,
    normalize_storage,
    staging_storage,
)
from search.run import main

BUCKET = "made-test"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance-metadata address for credentials
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def s3_uri(port: int, bucket: str = BUCKET, prefix: str = "runs") -> str:
    return f"s3://{bucket}/{prefix}?endpoint_override=127.0.0.1:{port}&scheme=http"


@pytest.fixture(scope="module")
def moto_port():
    """A moto S3 server on 127.0.0.1:<free port> holding an empty bucket BUCKET."""
    try:
        import flask  # noqa: F401  (moto's server mode needs its [server] extra)
        import moto.server  # noqa: F401
    except ImportError as error:
        pytest.skip(f"moto[server] is not installed ({error}); pip install -e '.[dev]'")
    port = free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **AWS_ENV), start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.skip(f"moto server did not start: {log.read().decode(errors='replace')[-500:]}")
                time.sleep(0.2)
        import pyarrow.fs

        admin = pyarrow.fs.S3FileSystem(
            access_key="testing", secret_key="testing", region="us-east-1",
            endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True,
        )  # fmt: skip
        admin.create_dir(BUCKET)
        yield port
    finally:
        kill_group(process)
        process.wait()
        log.close()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))


def bucket_files(port: int, prefix: str) -> dict[str, int]:
    """``{path below prefix: size}`` of every object under ``BUCKET/prefix``."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(s3_uri(port, prefix=prefix))
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return {info.path[len(root) + 1 :]: info.size for info in infos if info.type == pyarrow.fs.FileType.File}


def read_object(port: int, prefix: str, relative: str) -> bytes:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(s3_uri(port, prefix=prefix))
    with fs.open_input_stream(f"{root}/{relative}", compression=None) as stream:
        return stream.read()


# -- helpers, no server needed -----------------------------------------------------------
def test_join_and_normalize_keep_the_query():
    uri = "s3://bucket/a/?endpoint_override=127.0.0.1:9000&scheme=http"
    assert normalize_storage(uri) == "s3://bucket/a?endpoint_override=127.0.0.1:9000&scheme=http"
    assert (
        join_uri(normalize_storage(uri), "exp", "best.json")
        == "s3://bucket/a/exp/best.json?endpoint_override=127.0.0.1:9000&scheme=http"
    )
    assert join_uri("s3://bucket", "exp") == "s3://bucket/exp"
    assert normalize_storage("file:///tmp/x/../y") == "/tmp/y"


def test_staging_folder_is_per_uri(tmp_path, monkeypatch):
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "stage"))
    one = ExperimentFolder("s3://b/p", "exp")
    other = ExperimentFolder("s3://b/p?endpoint_override=127.0.0.1:1&scheme=http", "exp")
    assert one.local_path.parent.parent == tmp_path / "stage"
    assert one.local_path.name == "exp" and one.local_path != other.local_path
    assert ExperimentFolder("s3://b/p", "exp", tmp_path / "flag").local_path.is_relative_to(tmp_path / "flag")
    assert staging_storage("s3://b/p", tmp_path / "stage") == one.local_storage
    local = ExperimentFolder(str(tmp_path / "runs"), "exp")
    assert not local.is_uri and local.location == str(tmp_path / "runs" / "exp") and local.local_path == tmp_path / "runs" / "exp"


def test_closed_port_exits_2_with_one_line(tmp_path, capsys, aws_env):
    uri = s3_uri(free_port())  # nothing listens there
    assert main(["--dataset", "dna", "--storage", uri, "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: --storage {uri} is not writable: cannot connect to the storage endpoint"), err


def test_unknown_scheme_and_bad_query_exit_2(tmp_path, capsys, aws_env):
    assert main(["--dataset", "dna", "--storage", "nosuchfs://bucket/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nosuchfs://bucket/x: cannot open its filesystem: pyarrow has no filesystem" in err, err
    assert main(["--dataset", "dna", "--storage", "s3://bucket/x?endpoint_override=127.0.0.1:1&bogus=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a query parameter pyarrow does not know" in err, err


# -- against the moto server -------------------------------------------------------------
def test_missing_bucket_exits_2_with_one_line(moto_port, capsys, aws_env):
    uri = s3_uri(moto_port, bucket="no-such-bucket")
    assert main(["--dataset", "dna", "--storage", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: --storage {uri} is not writable: the bucket does not exist"), err


def test_probe_leaves_nothing_behind(moto_port, aws_env):
    check_writable(s3_uri(moto_port, prefix="probe-test"))
    assert bucket_files(moto_port, "probe-test") == {}


def test_experiment_folder_publishes_reads_and_lists(moto_port, aws_env, tmp_path):
    uri = s3_uri(moto_port, prefix="folder-test")
    folder = ExperimentFolder(uri, "exp1")
    assert not folder.exists() and not folder.has_file(schema.EXPERIMENT_FILE)
    folder.local_path.mkdir(parents=True)
    (folder.local_path / schema.EXPERIMENT_FILE).write_text(
        json.dumps({"dataset": "dna", "started_at": "2026-01-01T00:00:00+00:00"})
    )
    (folder.local_path / "best_model").mkdir()
    (folder.local_path / "best_model" / "model.pt").write_bytes(b"\0weights.gz")  # no compression guessing
    folder.publish(schema.EXPERIMENT_FILE, "best_model", schema.BEST_FILE)  # best.json absent: skipped
    size = (folder.local_path / schema.EXPERIMENT_FILE).stat().st_size
    assert bucket_files(moto_port, "folder-test") == {"exp1/experiment.json": size, "exp1/best_model/model.pt": 11}
    assert folder.exists() and folder.has_file(schema.EXPERIMENT_FILE)
    assert ExperimentFolder(uri, "exp1").read_json(schema.EXPERIMENT_FILE)["dataset"] == "dna"
    assert [name for name, _ in list_experiments(uri, schema.EXPERIMENT_FILE)] == ["exp1"]
    # results.aggregate's view of a URI storage: its experiments' result files, fetched.
    target = fetch_experiments(uri, tmp_path / "down")
    assert (target / "exp1" / "best_model" / "model.pt").read_bytes() == b"\0weights.gz"
    assert (target / "exp1" / schema.EXPERIMENT_FILE).exists() and not (target / "exp1" / schema.BEST_FILE).exists()


def test_study_is_uploaded_periodically_while_the_sweep_runs(moto_port, aws_env, tmp_path):
    import sqlite3

    folder = ExperimentFolder(s3_uri(moto_port, prefix="periodic-test"), "exp1")
    folder.local_path.mkdir(parents=True)
    database = folder.local_path / schema.STUDY_FILE
    connection = sqlite3.connect(database)
    connection.execute("create table trials (value real)")
    connection.commit()

    def uploaded_rows() -> int:
        try:
            uploaded = read_object(moto_port, "periodic-test", f"exp1/{schema.STUDY_FILE}")
        except OSError:  # not uploaded yet
            return 0
        (tmp_path / "copy.db").write_bytes(uploaded)
        with sqlite3.connect(tmp_path / "copy.db") as copy:
            return copy.execute("select count(*) from trials").fetchone()[0]

    with PeriodicUpload(folder, database, schema.STUDY_FILE, interval=0.2) as upload:
        for row in range(3):  # the study grows while uploads happen
            connection.execute("insert into trials values (?)", (float(row),))
            connection.commit()
            deadline = time.monotonic() + 30
            while uploaded_rows() < row + 1:
                assert time.monotonic() < deadline, "the periodic upload never caught up"
                time.sleep(0.1)
    assert upload.uploads >= 3
    connection.close()
    # A local experiment folder has nothing to upload: no thread, no upload.
    with PeriodicUpload(ExperimentFolder(str(tmp_path / "runs"), "exp2"), database, schema.STUDY_FILE, interval=0.01) as local:
        time.sleep(0.1)
    assert local.uploads == 0


def test_aggregate_skips_an_unreadable_uri_with_a_warning(tmp_path, aws_env, caplog):
    assert is_uri("s3://b/x") and not is_uri("file:///x") and not is_uri("C://x") and not is_uri("runs")
    uri = s3_uri(free_port())  # nothing listens there
    result = aggregate([uri], tmp_path / "tables", None)
    assert result.experiments == [] and (tmp_path / "tables" / schema.BEST_TABLE).exists()
    assert any(f"cannot read storage {uri}" in record.getMessage() for record in caplog.records)


def test_existing_experiment_and_resume_lookup_on_a_uri(moto_port, capsys, aws_env):
    uri = s3_uri(moto_port, prefix="exists-test")
    folder = ExperimentFolder(uri, "taken")
    folder.local_path.mkdir(parents=True)
    (folder.local_path / schema.EXPERIMENT_FILE).write_text(json.dumps({"dataset": "mushrooms"}))
    folder.publish(schema.EXPERIMENT_FILE)
    assert main(["--dataset", "dna", "--storage", uri, "--name", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--dataset", "dna", "--storage", uri, "--resume"]) == 2
    assert f"--resume: no experiment for dataset dna under {uri}" in capsys.readouterr().err
    assert main(["--dataset", "dna", "--storage", uri, "--resume", "--name", "missing"]) == 2
    err = capsys.readouterr().err
    assert "exists-test/missing/experiment.json?endpoint_override=" in err and "does not exist" in err, err


def test_storage_error_is_a_value_error():
    assert issubclass(StorageError, ValueError)


# -- a real sweep ------------------------------------------------------------------------
@pytest.fixture
def sweep_env(tmp_path):
    temp = tempfile.mkdtemp(prefix="msu", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ, RAY_TMPDIR=temp, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT), **AWS_ENV)
    env[STAGING_ENV] = str(tmp_path / "staging")
    yield env
    shutil.rmtree(temp, ignore_errors=True)


def run_driver(tmp_path: Path, env: dict, *argv: str, timeout: float = 400) -> tuple[int, str]:
    process = start_driver(["--tables-dir", str(tmp_path / "tables"), "--figures-dir", str(tmp_path / "figures"),
                            "--num-cpus", "2", *argv], env)  # fmt: skip
    output = finish(process, timeout)
    return process.returncode, output


@pytest.mark.slow
def test_sweep_to_s3_uri_publishes_everything_and_resumes(moto_port, tmp_path, sweep_env, monkeypatch):
    uri = s3_uri(moto_port, prefix="sweeps")
    common = ["--dataset", "synthetic-tiny", "--storage", uri]
    code, output = run_driver(tmp_path, sweep_env, *common, "--space", "quick", "--num-samples", "3", "--max-epochs", "3",
                              "--grace-period", "3", "--name", "tiny-s3", "--seed", "1")  # fmt: skip
    assert code == 0, output
    assert "--optuna-storage postgresql://" in output  # the note about the SQLite study
    files = bucket_files(moto_port, "sweeps")
    for name in (
        schema.EXPERIMENT_FILE,
        schema.TRIALS_FILE,
        schema.CURVES_FILE,
        schema.BEST_FILE,
        "best_model/model.pt",
        schema.STUDY_FILE,
    ):
        assert files.get(f"tiny-s3/{name}", 0) > 0, (name, sorted(files))
    # Ray's own files: experiment state and every trial's checkpoints, written through pyarrow.
    assert any(path.startswith("tiny-s3/experiment_state") for path in files), sorted(files)
    checkpoints = {path.split("/")[1] for path in files if "/checkpoint_" in path}
    assert len(checkpoints) == 3, sorted(files)

    trials = pd.read_csv(io.BytesIO(read_object(moto_port, "sweeps", f"tiny-s3/{schema.TRIALS_FILE}")))
    assert len(trials) == 3 and (trials["status"] == "TERMINATED").all()
    best = json.loads(read_object(moto_port, "sweeps", f"tiny-s3/{schema.BEST_FILE}"))
    assert math.isfinite(best["test_nll"]) and best["test_nll_stderr"] > 0
    assert best["sweep_valid_nll"] == pytest.approx(trials["best_valid_nll"].min())
    assert best["valid_nll"] == best["valid_nll_by_test_masks"][str(best["test_masks"])]  # the reported ensemble
    assert best["checkpoint_path"] == "best_model" and best["checkpoint_uri"] == join_uri(uri, "tiny-s3", "best_model")
    info = json.loads(read_object(moto_port, "sweeps", f"tiny-s3/{schema.EXPERIMENT_FILE}"))
    assert info["status"] == "finished" and info["num_trials"] == 3
    # The uploaded study is a complete SQLite copy.
    import optuna

    copy = tmp_path / "study-copy.db"
    copy.write_bytes(read_object(moto_port, "sweeps", f"tiny-s3/{schema.STUDY_FILE}"))
    assert len(optuna.load_study(study_name="tiny-s3", storage=f"sqlite:///{copy}").trials) == 3
    # The tables were refreshed from the staged copy.
    table = pd.read_csv(tmp_path / "tables" / schema.BEST_TABLE)
    assert table.loc[0, "test_nll"] == pytest.approx(best["test_nll"])

    # results.aggregate reads the URI directly (no `aws s3 sync` needed).
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    result = aggregate([uri], tmp_path / "tables-from-uri", None)
    assert result.experiments == ["tiny-s3"]
    assert pd.read_csv(tmp_path / "tables-from-uri" / schema.BEST_TABLE).loc[0, "test_nll"] == pytest.approx(best["test_nll"])

    # --resume without --name finds the experiment by listing the bucket, reads experiment.json
    # from it, restores Ray's state from the URI (Tuner.can_restore/restore) and, with its local
    # study gone (another machine), fetches the uploaded study copy.
    study_file = Path(info["optuna_storage"].removeprefix("sqlite:///"))
    study_file.unlink()
    code, output = run_driver(tmp_path, sweep_env, *common, "--resume")
    assert code == 0, output
    assert "no restorable Ray state" not in output and "fetched the Optuna study" in output, output
    info = json.loads(read_object(moto_port, "sweeps", f"tiny-s3/{schema.EXPERIMENT_FILE}"))
    assert info["resumes"] == 1 and info["num_trials"] == 3 and info["status"] == "finished"
    resumed = json.loads(read_object(moto_port, "sweeps", f"tiny-s3/{schema.BEST_FILE}"))
    assert resumed["trial_id"] == best["trial_id"] and resumed["test_nll"] == pytest.approx(best["test_nll"])
