"""Multi-host Ray tests on one machine: every node is its own network namespace.

The harness tests (``tests/netns_cluster.py``: real separate hosts as Ray sees them,
a host crash noticed by the cluster, complete teardown), then real sweeps with
``python -m search.run`` on a 3-host cluster whose ``--storage`` is a folder every
host sees at the same path (``--shared-storage``):

- trials spread over the hosts, results, best.json and tables complete; the same
  command without ``--shared-storage`` is refused (exit 2);
- a worker host SIGKILLed while a trial trains on it: the sweep still finishes every
  trial once, the lost trial is retried and goes on from its checkpoint on a survivor.

Run with ``-s`` to see the figures (nodes used, trials per node, retries, wall time).
Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns_cluster import (  # noqa: E402
    PREFIX,
    _pid_alive,
    list_namespaces,
    netns_ray_cluster,
    pids_mentioning,
    require_netns,
)

from results import schema  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _needs_netns():
    require_netns()


def assert_torn_down(cluster, pids: set[int]) -> None:
    """No namespace, process or temp dir of ``cluster`` is left."""
    assert not list_namespaces(cluster.prefix), list_namespaces(cluster.prefix)
    deadline = time.monotonic() + 10
    while True:  # killed children may take a moment to be reaped by init
        alive = [p for p in pids if _pid_alive(p)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not alive, f"processes of the cluster survive teardown: {alive}"
    assert not pids_mentioning(str(cluster.tmp_root))
    if not os.environ.get("NETNS_CLUSTER_KEEP_LOGS"):
        assert not cluster.tmp_root.exists()


ISOLATION_PROBE = """
import errno, json, socket, sys
reachable = []
for ip in ["8.8.8.8", "1.1.1.1", *sys.argv[1:]]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((ip, 9))          # UDP: only a route lookup, no packet is sent
        reachable.append(ip)
    except OSError as e:
        if e.errno != errno.ENETUNREACH:
            reachable.append(f"{ip}: {e}")
    finally:
        s.close()
print(json.dumps({"reachable": reachable}))
"""


def host_ipv4_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]


SPREAD_DRIVER = """
import json, os, socket, time, ray

ray.init()  # RAY_ADDRESS from the harness: head_ip:port

@ray.remote(num_cpus=1)
def where():
    time.sleep(1.0)
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "netns": os.readlink("/proc/self/ns/net"),
    }

refs = [where.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
out = {
    "tasks": ray.get(refs, timeout=60),
    "driver_netns": os.readlink("/proc/self/ns/net"),
    "nodes": [(n["NodeID"], n["NodeManagerAddress"], n["Alive"]) for n in ray.nodes()],
}
print(json.dumps(out))
"""


def test_tasks_spread_over_three_hosts(tmp_path):
    script = tmp_path / "spread.py"
    script.write_text(SPREAD_DRIVER)
    t0 = time.monotonic()
    with netns_ray_cluster(workers=2, cpus_per_node=1) as cluster:
        bringup = time.monotonic() - t0
        res = cluster.run_driver(["python", str(script)], timeout=120)
        out = json.loads(res.stdout.strip().splitlines()[-1])
        unreachable = cluster.run_in(
            cluster.worker_ns[0],
            ["python", "-c", ISOLATION_PROBE, *host_ipv4_addresses()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ).communicate(timeout=30)[0]
        pids = cluster.started_pids()
        host_netns = os.readlink("/proc/self/ns/net")
    node_ips = {cluster.nodes[ns].ip for ns in [cluster.head_ns, *cluster.worker_ns]}

    tasks = out["tasks"]
    assert len({t["node_id"] for t in tasks}) == 3, tasks
    assert {t["ip"] for t in tasks} == node_ips, tasks
    # Three different network stacks, none of them the host's or loopback.
    assert len({t["netns"] for t in tasks}) == 3, tasks
    assert host_netns not in {t["netns"] for t in tasks}
    assert out["driver_netns"] != host_netns
    assert {ip for _, ip, alive in out["nodes"] if alive} == node_ips
    assert bringup < 90, f"cluster took {bringup:.1f}s to come up"
    # No route out of the cluster: the host's addresses and the internet are unreachable
    # from a node (checked with UDP connect(), which sends nothing).
    assert json.loads(unreachable) == {"reachable": []}, unreachable

    assert_torn_down(cluster, pids)


FAULT_DRIVER = """
import json, os, sys, time, ray

marks = os.environ["MARK_DIR"]
ray.init()

@ray.remote(num_cpus=1, max_retries=3)
def work(i, seconds):
    node = ray.get_runtime_context().get_node_id()
    open(os.path.join(marks, f"{i}-{node}-{os.getpid()}"), "w").close()
    time.sleep(seconds)
    return {"i": i, "node_id": node, "ip": ray.util.get_node_ip_address()}

# Phase 1: one long task on every host; tell the test once all three run.
refs = [work.options(scheduling_strategy="SPREAD").remote(i, 6.0) for i in range(3)]
deadline = time.monotonic() + 60
while len({name.split("-")[1] for name in os.listdir(marks)}) < 3:
    assert time.monotonic() < deadline, os.listdir(marks)
    time.sleep(0.1)
print("RUNNING_ON_ALL", flush=True)
sys.stdin.readline()                      # the test kills a worker, then says go

# The task on the killed host is retried elsewhere: every result still arrives.
first = ray.get(refs, timeout=90)

deadline = time.monotonic() + 60
while True:
    nodes = [(n["NodeID"], n["NodeManagerAddress"], n["Alive"]) for n in ray.nodes()]
    if sum(not alive for _, _, alive in nodes) >= 1:
        break
    assert time.monotonic() < deadline, nodes
    time.sleep(0.2)

# Phase 2: the cluster keeps working on the survivors.
second = ray.get([work.options(scheduling_strategy="SPREAD").remote(10 + i, 0.5)
                  for i in range(4)], timeout=60)
print(json.dumps({"first": first, "second": second, "nodes": nodes}), flush=True)
"""


def test_worker_host_killed_mid_run(tmp_path, netns_cluster_factory):
    script = tmp_path / "fault.py"
    script.write_text(FAULT_DRIVER)
    cluster = netns_cluster_factory(workers=2, cpus_per_node=1)
    marks = cluster.tmp_root / "marks"
    marks.mkdir()
    victim = cluster.worker_ns[1]
    victim_ip = cluster.nodes[victim].ip

    driver = cluster.start_driver(
        ["python", str(script)],
        env={"MARK_DIR": str(marks)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = driver.stdout.readline()
    if line.strip() != "RUNNING_ON_ALL":
        driver.kill()
        pytest.fail(f"driver did not start tasks on all hosts: {line!r}\n{driver.communicate(timeout=30)}")
    t_kill = time.monotonic()
    cluster.kill_node(victim)
    driver.stdin.write("go\n")
    driver.stdin.flush()
    out, err = driver.communicate(timeout=150)
    assert driver.returncode == 0, err[-6000:]
    result = json.loads(out.strip().splitlines()[-1])
    recovered_s = time.monotonic() - t_kill

    dead = [ip for _, ip, alive in result["nodes"] if not alive]
    assert dead == [victim_ip], result["nodes"]
    assert sorted(r["i"] for r in result["first"]) == [0, 1, 2]
    assert all(r["ip"] != victim_ip for r in result["first"])  # the lost task was re-run
    survivors = {cluster.nodes[ns].ip for ns in (cluster.head_ns, cluster.worker_ns[0])}
    assert {r["ip"] for r in result["second"]} == survivors
    # The killed host really had started a task before it died.
    victim_node_ids = {n for n, ip, _ in result["nodes"] if ip == victim_ip}
    assert any(name.split("-")[1] in victim_node_ids for name in os.listdir(marks))
    assert recovered_s < 120

    # And the same state is visible from a fresh driver.
    info = {n["NodeManagerAddress"]: n["Alive"] for n in cluster.nodes_info()}
    assert info[victim_ip] is False and sum(info.values()) == 2

    pids = cluster.started_pids()
    cluster.teardown()
    assert_torn_down(cluster, pids)


# --------------------------------------------------------------------------- sweeps


def sweep_argv(storage: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["python", "-m", "search.run", "--storage", str(storage),
            "--tables-dir", str(out / "tables"), "--figures-dir", str(out / "figures"),
            "--name", name, *extra]  # fmt: skip


def cluster_ips(cluster) -> dict[str, str]:
    """ip -> namespace of every node."""
    return {cluster.nodes[ns].ip: ns for ns in [cluster.head_ns, *cluster.worker_ns]}


def read_history(trial_dir: Path) -> list[dict]:
    """Every result Ray logged for a trial, in order (result.json is appended to across
    retries). A line still being written is skipped."""
    rows: list[dict] = []
    path = trial_dir / "result.json"
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def per_node(trials: pd.DataFrame, ips: dict[str, str]) -> dict[str, int]:
    counts = trials["node_ip"].value_counts().to_dict()
    return {f"{ip} ({ips.get(ip, '?')})": int(n) for ip, n in sorted(counts.items())}


def test_sweep_runs_trials_on_several_hosts(tmp_path, netns_cluster_factory):
    t0 = time.monotonic()
    cluster = netns_cluster_factory(workers=2, cpus_per_node=1)  # 3 hosts, 1 CPU each
    bringup = time.monotonic() - t0
    ips = cluster_ips(cluster)
    storage = cluster.shared_dir("runs")  # the same path on every host
    # Trials of a few seconds (300 short epochs): with actors reused, trials of a few epochs all
    # run on the head's actor before a worker host's actor has started. A report every epoch,
    # each of which must reach the shared folder.
    epochs = 300
    common = ["--address", cluster.address, "--dataset", "synthetic-tiny", "--space", "quick", "--num-samples", "6",
              "--max-epochs", str(epochs), "--grace-period", str(epochs), "--patience", "1000",
              "--validate-every", "1", "--report-seconds", "0"]  # fmt: skip

    # A local path on a 3-node cluster is refused unless declared shared (before any work).
    refused = cluster.run_driver(sweep_argv(storage, tmp_path, "mh", *common), timeout=180, check=False)
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert f"--storage {storage} is a local path but the cluster has 3 nodes" in refused.stderr
    assert "--shared-storage" in refused.stderr
    assert not (storage / "mh").exists()

    t1 = time.monotonic()
    res = cluster.run_driver(sweep_argv(storage, tmp_path, "mh", *common, "--shared-storage"), timeout=420)
    driver_s = time.monotonic() - t1
    assert res.returncode == 0

    experiment = storage / "mh"
    trials = pd.read_csv(experiment / schema.TRIALS_FILE)
    assert len(trials) == 6 and trials["trial_id"].is_unique, trials
    assert (trials["status"] == "TERMINATED").all(), trials
    assert (trials["epochs"] == epochs).all(), trials
    assert set(trials["node_ip"]) <= set(ips), (trials["node_ip"], ips)
    assert trials["node_ip"].nunique() >= 2, f"all trials ran on one host: {trials['node_ip'].tolist()}"
    # Every trial's results (written from whichever host ran it) reached the shared folder.
    for trial_id in trials["trial_id"]:
        history = read_history(experiment / f"trial_{trial_id}")
        assert [row["epoch"] for row in history] == list(range(1, epochs + 1)), (trial_id, history[-3:])
        assert any((experiment / f"trial_{trial_id}").glob("checkpoint_*/trainer.pt")), trial_id
    best = json.loads((experiment / schema.BEST_FILE).read_text())
    assert best["trial_id"] in set(trials["trial_id"])
    assert math.isfinite(best["test_nll"]) and best["test_nll"] > 0
    assert best["sweep_valid_nll"] == pytest.approx(trials["best_valid_nll"].min())
    assert best["valid_nll"] == best["valid_nll_by_test_masks"][str(best["test_masks"])]  # the reported ensemble
    info = json.loads((experiment / schema.EXPERIMENT_FILE).read_text())
    assert info["status"] == "finished" and info["num_trials"] == 6

    table = pd.read_csv(tmp_path / "tables" / schema.BEST_TABLE)
    assert table["dataset"].tolist() == ["synthetic-tiny"], table
    row = table.iloc[0]
    assert row["experiment"] == "mh" and row["trial_id"] == best["trial_id"]
    assert row["test_nll"] == pytest.approx(best["test_nll"])
    all_trials = pd.read_csv(tmp_path / "tables" / schema.ALL_TRIALS_TABLE)
    assert len(all_trials) == 6 and set(all_trials["experiment"]) == {"mh"}
    assert set(all_trials["trial_id"]) == set(trials["trial_id"])
    assert set(all_trials["node_ip"]) == set(trials["node_ip"])

    print(
        f"\n[multi-host sweep] nodes used: {trials['node_ip'].nunique()} of {len(ips)}; "
        f"trials per node: {per_node(trials, ips)}; trials retried: {int((trials['num_failures'] > 0).sum())}; "
        f"wall: sweep {info['wall_seconds']:.0f} s (experiment.json), driver {driver_s:.0f} s, "
        f"cluster bring-up {bringup:.0f} s"
    )
    pids = cluster.started_pids()
    cluster.teardown()
    assert_torn_down(cluster, pids)


# A space whose epochs take ~0.5-1 s on synthetic-mob (1000 minibatches of 10): trials run
# long enough to be caught mid-training on a worker.
SLOW_SPACE = """\
name: slow
params:
  hidden_units: {choice: [16, 32]}
  num_masks: {choice: [1, 4]}
  ordering: {choice: [natural, random]}
  learning_rate: {float: [1.0e-3, 1.0e-2], log: true}
fixed: {hidden_layers: 1, activation: relu, optimizer: adam, weight_decay: 0.0,
        direct_connection: true, batch_size: 10}
"""


def test_sweep_survives_a_worker_host_killed_mid_trial(tmp_path, netns_cluster_factory):
    num_samples, max_epochs = 6, 12
    space = tmp_path / "slow.yaml"
    space.write_text(SLOW_SPACE)
    t0 = time.monotonic()
    cluster = netns_cluster_factory(workers=2, cpus_per_node=1, fast_failure_detection=True)
    bringup = time.monotonic() - t0
    ips = cluster_ips(cluster)
    worker_ips = {cluster.nodes[ns].ip: ns for ns in cluster.worker_ns}
    storage = cluster.shared_dir("runs")
    experiment = storage / "fault"
    argv = sweep_argv(storage, tmp_path, "fault", "--address", cluster.address, "--dataset", "synthetic-mob",
                      "--space", str(space), "--num-samples", str(num_samples), "--max-epochs", str(max_epochs),
                      "--grace-period", str(max_epochs), "--max-failures", "3", "--shared-storage",
                      "--checkpoint-every", "1")  # fmt: skip

    t1 = time.monotonic()
    driver = cluster.start_driver(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def read_output() -> None:
        for line in driver.stdout:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()

    def finished_ids() -> list[str]:
        return [line.split(" trial ")[1].split()[0] for _, line in list(lines) if " finished after " in line]

    # Wait until a trial has finished and another is mid-training on a worker host (with a
    # few checkpointed epochs behind it and a few still to go), then crash that host.
    victim = watched = None
    deadline = time.monotonic() + 300
    while victim is None:
        assert driver.poll() is None, (
            "sweep ended before a worker could be killed:\n" + "".join(line for _, line in lines)[-6000:]
        )
        assert time.monotonic() < deadline, "no trial mid-training on a worker:\n" + "".join(line for _, line in lines)[-6000:]
        if finished_ids():
            for trial_dir in sorted(experiment.glob("trial_*")):
                history = read_history(trial_dir)
                last = history[-1] if history else {}
                if last.get("node_ip") in worker_ips and not last.get("done") and 3 <= last.get("epoch", 0) <= max_epochs - 4:
                    victim, watched = worker_ips[last["node_ip"]], trial_dir.name.removeprefix("trial_")
                    break
        time.sleep(0.2)
    victim_ip = cluster.nodes[victim].ip
    finished_before = set(finished_ids())
    histories_before = {t: read_history(experiment / f"trial_{t}") for t in finished_before}
    t_kill = time.monotonic()
    cluster.kill_node(victim)

    try:
        driver.wait(timeout=480)
    finally:
        reader.join(timeout=10)
    output = "".join(line for _, line in lines)
    driver_s, after_kill_s = time.monotonic() - t1, time.monotonic() - t_kill
    assert driver.returncode == 0, output[-8000:]

    trials = pd.read_csv(experiment / schema.TRIALS_FILE)
    # None lost, none duplicated, all finished.
    assert len(trials) == num_samples and trials["trial_id"].is_unique, trials
    assert len(list(experiment.glob("trial_*"))) == num_samples
    assert (trials["status"] == "TERMINATED").all(), trials
    assert (trials["epochs"] == max_epochs).all(), trials
    assert set(trials["node_ip"]) <= set(ips), (trials["node_ip"], ips)
    retried = trials[trials["num_failures"] >= 1]
    assert watched in set(retried["trial_id"]), (watched, trials)
    assert victim_ip not in set(retried["node_ip"]), retried  # they finished on survivors
    study = optuna.load_study(study_name="fault", storage=f"sqlite:///{experiment / schema.STUDY_FILE}")
    assert len(study.trials) == num_samples
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), study.trials

    # Every retried trial ran on the victim first, then on a survivor, and its curve is whole.
    # One that had reported >= 3 epochs on the victim (so had checkpoints) went on from its last
    # checkpoint: the first epoch reported elsewhere is past 1 and at most one past the last
    # epoch the victim reported (Ray logs a result before it registers its checkpoint, so that
    # epoch may be trained and reported again), and epoch 1 was never trained twice.
    curves = pd.read_csv(experiment / schema.CURVES_FILE)
    resumed = {}
    for trial_id in retried["trial_id"]:
        history = read_history(experiment / f"trial_{trial_id}")
        epochs = [row["epoch"] for row in history]
        on_victim = [row["node_ip"] == victim_ip for row in history]
        split = on_victim.index(False) if False in on_victim else len(history)
        assert not any(on_victim[split:]), (trial_id, history)  # the victim's rows come first
        after = epochs[split:]
        assert after and after == list(range(after[0], max_epochs + 1)), (trial_id, epochs)
        assert curves[curves["trial_id"] == trial_id]["epoch"].tolist() == list(range(1, max_epochs + 1))
        last_on_victim = epochs[split - 1] if split else 0
        if last_on_victim >= 3:
            assert 1 < after[0] <= last_on_victim + 1, f"trial {trial_id} did not resume from its checkpoint: {epochs}"
            assert epochs.count(1) == 1, f"trial {trial_id} restarted from scratch: {epochs}"
            resumed[trial_id] = (last_on_victim, after[0])
    assert watched in resumed, (watched, resumed, trials)
    # Trials that had finished before the crash are untouched.
    for trial_id in finished_before:
        row = trials[trials["trial_id"] == trial_id].iloc[0]
        assert row["status"] == "TERMINATED" and row["num_failures"] == 0, row
        history = read_history(experiment / f"trial_{trial_id}")
        # (Its last row may reach result.json just after the progress line is printed.)
        assert history[: len(histories_before[trial_id])] == histories_before[trial_id]
        assert [r["epoch"] for r in history] == list(range(1, max_epochs + 1)), (trial_id, history)
    best = json.loads((experiment / schema.BEST_FILE).read_text())
    assert math.isfinite(best["test_nll"]) and best["trial_id"] in set(trials["trial_id"])

    hosts = sorted({row["node_ip"] for t in trials["trial_id"] for row in read_history(experiment / f"trial_{t}")})
    info = json.loads((experiment / schema.EXPERIMENT_FILE).read_text())
    print(
        f"\n[multi-host fault] killed {victim} ({victim_ip}) while trial {watched} had reported epoch "
        f"{resumed[watched][0]}, {len(finished_before)} trial(s) finished before; "
        f"nodes used: {len(hosts)} of {len(ips)} ({', '.join(hosts)}); "
        f"trials per node (final): {per_node(trials, ips)}; "
        f"trials retried: {len(retried)} ({', '.join(f'{t}: died after epoch {a}, resumed at epoch {b}' for t, (a, b) in resumed.items())}); "
        f"wall: sweep {info['wall_seconds']:.0f} s (experiment.json), driver {driver_s:.0f} s, "
        f"kill to sweep end {after_kill_s:.0f} s, cluster bring-up {bringup:.0f} s"
    )
    pids = cluster.started_pids()
    cluster.teardown()
    assert_torn_down(cluster, pids)


def test_no_namespace_of_this_process_left():
    """Runs last in this module: everything the harness made is gone."""
    assert not list_namespaces(PREFIX), list_namespaces(PREFIX)
