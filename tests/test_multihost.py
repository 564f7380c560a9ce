"""Multi-host Ray tests on one machine: every node is its own network namespace.

These prove the harness in ``tests/netns_cluster.py`` (real separate hosts as
Ray sees them, a host crash noticed by the cluster, complete teardown). The
multi-host sweep test joins them once ``search.run`` exists::

    with netns_ray_cluster(workers=2, cpus_per_node=1) as cluster:
        storage = cluster.shared_dir("runs")      # same path on every "host"
        proc = cluster.start_driver(["python", "-m", "search.run", "--address", "auto",
                                     "--storage", str(storage), "--shared-storage", ...],
                                    stdout=subprocess.PIPE, text=True)
        ...                                       # wait for the first trial results
        cluster.kill_node(cluster.worker_ns[0])   # a host dies mid-sweep
        proc.wait(timeout=...)

Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns_cluster import (  # noqa: E402
    PREFIX,
    _pid_alive,
    list_namespaces,
    netns_cluster_factory,  # noqa: F401  (pytest fixture)
    netns_ray_cluster,
    pids_mentioning,
    require_netns,
)

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
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True).stdout
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
            cluster.worker_ns[0], ["python", "-c", ISOLATION_PROBE, *host_ipv4_addresses()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = driver.stdout.readline()
    if line.strip() != "RUNNING_ON_ALL":
        driver.kill()
        pytest.fail(f"driver did not start tasks on all hosts: {line!r}\n"
                    f"{driver.communicate(timeout=30)}")
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


def test_no_namespace_of_this_process_left():
    """Runs last in this module: everything the harness made is gone."""
    assert not list_namespaces(PREFIX), list_namespaces(PREFIX)
