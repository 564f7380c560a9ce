"""Real multi-host Ray clusters on one machine, built from network namespaces.

Every node of the cluster is a network namespace with its own address on a
private subnet; the namespaces are joined by veth pairs to a bridge that lives
in a *switch* namespace of its own. Nothing of the cluster's network touches
the host's network namespace: there is no device, address or route in the
root namespace, and the node namespaces have a single route (their /24) and no
default route, so no packet can leave the cluster. Because each cluster is
fully isolated, two clusters (two pytest processes, say) may use the same
subnet without clashing.

Usage::

    from netns_cluster import netns_ray_cluster

    with netns_ray_cluster(workers=2, cpus_per_node=1) as cluster:
        res = cluster.run_driver(["python", "-m", "search.run", "--address", "auto", ...])
        cluster.kill_node(cluster.worker_ns[0])           # SIGKILL that host

or, in pytest, the ``netns_cluster_factory`` fixture (tears down at test end).

Requirements: root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and ``ip`` from iproute2
with ``ip netns``. Otherwise :func:`require_netns` / the fixture skip the test
with the reason.

Facts about Ray 2.60 this relies on (checked on the dev machine):

* Each node runs ``ray start --block`` under ``ip netns exec`` in a new session,
  so the node's whole process tree (gcs_server, raylet, agents, workers) shares
  one process group that :meth:`NetnsRayCluster.kill_node` SIGKILLs. Processes
  left in a namespace are found with ``ip netns pids`` and killed too.
* Without a default route Ray cannot find its address by "connecting" to
  8.8.8.8 (it fails locally with ENETUNREACH, nothing is sent), so every node
  gets ``--node-ip-address`` explicitly.
* A worker node without ``--temp-dir`` writes into the *head's* temp dir
  (Ray takes it from the GCS); each node gets its own ``--temp-dir``.
* Ports do not clash: each namespace has its own network stack, so every node
  can use Ray's default ports.
* ``/dev/shm`` is shared by all namespaces (``ip netns exec`` only changes the
  network namespace and remounts /sys), which is what Ray's object store
  needs; nodes get a small ``--object-store-memory`` so that several of them
  fit in it.
* The GCS declares a SIGKILLed node dead after health checks fail
  (``RAY_health_check_*``); the defaults take ~15 s, ``fast_failure_detection``
  brings that to about 2 s.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PREFIX = f"ms{os.getpid()}_"  # every namespace of this process starts with it
_NS_NAME_RE = re.compile(r"^ms(\d+)_(\d+)(s|h|w\d+)$")
_READY_LINE = "Ray runtime started."
TMP_BASE = "/tmp"

_counter = 0
_counter_lock = threading.Lock()
_live_clusters: set[NetnsRayCluster] = set()


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here (not root, no iproute2, ...)."""


# --------------------------------------------------------------------------- utils


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def list_namespaces(prefix: str = "ms") -> list[str]:
    """Names of network namespaces on the host starting with ``prefix``."""
    out = _ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def pids_in_namespace(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.strip().isdigit()]


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def pids_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (e.g. a cluster's temp root)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and _pid_alive(int(entry)):
            found.append(int(entry))
    return found


def netns_unavailable_reason() -> str | None:
    """Why network-namespace clusters cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "multi-host tests need root to create network namespaces (ip netns)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"{PREFIX}probe"
    try:
        res = _ip("netns", "add", probe, check=False)
        if res.returncode != 0:
            return f"`ip netns add` failed: {res.stderr.strip() or res.returncode}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def require_netns() -> None:
    """pytest.skip with a clear reason when namespaces are unavailable."""
    reason = netns_unavailable_reason()
    if reason is not None:
        import pytest

        pytest.skip(reason)


def cleanup_stale_namespaces() -> list[str]:
    """Remove namespaces (and their processes) and temp roots left by a harness
    process that died (e.g. pytest SIGKILLed, so neither finally nor atexit ran).

    Only names of this harness's exact forms ``ms<pid>_<k>{s,h,w<i>}`` and
    ``/tmp/ms<pid>_<k>_*`` whose ``<pid>`` no longer exists are touched.
    """
    removed = []
    for ns in list_namespaces("ms"):
        m = _NS_NAME_RE.match(ns)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        _kill_pids(pids_in_namespace(ns))
        _ip("netns", "del", ns, check=False)
        removed.append(ns)
    # Temp roots /tmp/ms<pid>_<k>_XXXX of dead harness processes.
    for path in Path(TMP_BASE).glob("ms*_*_*"):
        m = re.match(r"^ms(\d+)_\d+_", path.name)
        if m and path.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


# --------------------------------------------------------------------------- cluster


@dataclass
class Node:
    ns: str
    ip: str
    temp_dir: Path
    log_path: Path
    is_head: bool
    proc: subprocess.Popen | None = None
    killed: bool = False

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"


@dataclass(eq=False)
class NetnsRayCluster:
    """A Ray head plus workers, each in its own network namespace.

    Attributes worth using from tests: ``head_ip``, ``port``, ``address``
    ("ip:port"), ``head_ns``, ``worker_ns`` (list), ``nodes`` (ns -> Node),
    ``tmp_root`` (everything the cluster writes, removed at teardown).
    """

    workers: int = 2
    cpus_per_node: int = 1
    head_cpus: int | None = None
    object_store_mb: int = 100
    subnet: str = "10.213.0"  # /24; isolated per cluster, so a fixed one is fine
    port: int = 6379
    fast_failure_detection: bool = True
    node_env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        global _counter
        with _counter_lock:
            self.index = _counter
            _counter += 1
        self.prefix = f"{PREFIX}{self.index}"
        self.switch_ns = f"{self.prefix}s"
        self.head_ns = f"{self.prefix}h"
        self.worker_ns = [f"{self.prefix}w{i}" for i in range(1, self.workers + 1)]
        self.head_ip = f"{self.subnet}.1"
        self.address = f"{self.head_ip}:{self.port}"
        self.nodes: dict[str, Node] = {}
        self.tmp_root: Path | None = None
        self._created_ns: list[str] = []
        self._procs: list[subprocess.Popen] = []  # every process group we started
        self._seen_pids: set[int] = set()
        self._torn_down = False
        self.bringup_s: float | None = None

    # ------------------------------------------------------------------ env
    @property
    def ray_bin(self) -> str:
        cand = Path(sys.executable).parent / "ray"
        return str(cand) if cand.exists() else (shutil.which("ray") or "ray")

    def base_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for anything running in the cluster (nodes and drivers)."""
        env = dict(os.environ)
        env.update(
            RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONUNBUFFERED="1",
            # The project is importable on every node, as if installed there (Ray
            # workers import trainables by module name).
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        )
        if self.fast_failure_detection:
            env.update(
                RAY_health_check_initial_delay_ms="1000",
                RAY_health_check_period_ms="500",
                RAY_health_check_timeout_ms="500",
                RAY_health_check_failure_threshold="3",
            )
        env.update(self.node_env)
        if extra:
            env.update(extra)
        return env

    def driver_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Env for a driver in the head namespace: ``ray.init()``,
        ``ray.init(address="auto")`` and ``--address auto`` reach this cluster."""
        env = self.base_env()
        env.update(
            RAY_ADDRESS=self.address,
            RAY_TMPDIR=str(self.nodes[self.head_ns].temp_dir),
        )
        if extra:
            env.update(extra)
        return env

    def shared_dir(self, name: str) -> Path:
        """A directory every node sees at the same path (the namespaces share the
        host's filesystem): a truthful ``--storage DIR --shared-storage``. Removed
        at teardown."""
        assert self.tmp_root is not None, "the cluster is not started"
        path = self.tmp_root / "shared" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ network
    def _create_network(self) -> None:
        for ns in [self.switch_ns, self.head_ns, *self.worker_ns]:
            _ip("netns", "add", ns)
            self._created_ns.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # No IPv6: no router solicitations / DAD chatter, IPv4 only.
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sh",
                    "-c",
                    "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
                ],
                capture_output=True,
                check=False,
                timeout=30,
            )
        _ip("-n", self.switch_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch_ns, "link", "set", "br0", "up")
        for i, ns in enumerate([self.head_ns, *self.worker_ns], start=1):
            port_dev = f"p{i}"
            # Both ends are created directly inside namespaces: nothing in the root ns.
            _ip("-n", self.switch_ns, "link", "add", port_dev, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.switch_ns, "link", "set", port_dev, "master", "br0")
            _ip("-n", self.switch_ns, "link", "set", port_dev, "up")
            ip = f"{self.subnet}.{i}"
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            assert self.tmp_root is not None
            self.nodes[ns] = Node(
                ns=ns,
                ip=ip,
                temp_dir=self.tmp_root / ("h" if ns == self.head_ns else ns[len(self.prefix) :]),
                log_path=self.tmp_root / f"{ns[len(self.prefix) :]}.log",
                is_head=(ns == self.head_ns),
            )
        # Safety net: no namespace may have a route beyond its /24.
        for ns in [self.head_ns, *self.worker_ns]:
            routes = _ip("-n", ns, "route", "show").stdout
            assert "default" not in routes, f"unexpected default route in {ns}: {routes}"

    # ------------------------------------------------------------------ processes
    def run_in(
        self,
        ns: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        **popen_kwargs,
    ) -> subprocess.Popen:
        """Start ``argv`` inside namespace ``ns`` in a new session (its own process
        group, tracked and SIGKILLed at teardown). ``env`` defaults to
        :meth:`driver_env` and is used as given otherwise. A leading "python"
        means this interpreter (the venv's)."""
        argv = list(argv)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        popen_kwargs.setdefault("cwd", str(REPO_ROOT))
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            env=dict(env) if env is not None else self.driver_env(),
            start_new_session=True,
            **popen_kwargs,
        )
        self._procs.append(proc)
        return proc

    def start_driver(self, argv: Sequence[str], env: Mapping[str, str] | None = None, **popen_kwargs) -> subprocess.Popen:
        """Start a driver in the head namespace (env: driver_env() + ``env``)."""
        return self.run_in(self.head_ns, argv, self.driver_env(env), **popen_kwargs)

    def run_driver(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run a driver in the head namespace to completion; output captured as text.
        On timeout its process group is killed and TimeoutExpired raised."""
        proc = self.start_driver(argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
        res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check and res.returncode != 0:
            raise AssertionError(
                f"driver {list(argv)} exited {res.returncode}\n--- stdout\n{out[-4000:]}\n--- stderr\n{err[-8000:]}"
            )
        return res

    def run_python(
        self, code: str, timeout: float = 120.0, check: bool = True, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a Python snippet as a driver in the head namespace."""
        return self.run_driver([sys.executable, "-c", textwrap.dedent(code)], env=env, timeout=timeout, check=check)

    def _start_node(self, node: Node) -> None:
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        cpus = self.cpus_per_node if not node.is_head or self.head_cpus is None else self.head_cpus
        argv = [
            self.ray_bin,
            "start",
            f"--node-ip-address={node.ip}",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--temp-dir={node.temp_dir}",
            "--disable-usage-stats",
            "--block",
        ]
        if node.is_head:
            argv[2:2] = ["--head", f"--port={self.port}", "--include-dashboard=false"]
        else:
            argv[2:2] = [f"--address={self.address}"]
        env = self.base_env({"RAY_TMPDIR": str(node.temp_dir)})
        with open(node.log_path, "wb") as log:
            node.proc = self.run_in(node.ns, argv, env, stdout=log, stderr=subprocess.STDOUT)

    def _wait_ready(self, nodes: Sequence[Node], deadline: float) -> None:
        pending = list(nodes)
        while pending:
            for node in list(pending):
                assert node.proc is not None, f"ray node in {node.ns} was never started"
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray node in {node.ns} exited with {node.proc.returncode}:\n{node.log_tail()}")
                if _READY_LINE in node.log_path.read_text(errors="replace"):
                    pending.remove(node)
            if pending and time.monotonic() > deadline:
                raise TimeoutError("ray nodes not up in time: " + "; ".join(f"{n.ns}:\n{n.log_tail()}" for n in pending))
            if pending:
                time.sleep(0.2)

    def nodes_info(self, timeout: float = 60.0) -> list[dict]:
        """ray.nodes() as seen by a driver in the head namespace (NodeID,
        NodeManagerAddress, Alive, Resources)."""
        res = self.run_python(_NODES_SNIPPET, timeout=timeout)
        return json.loads(res.stdout.strip().splitlines()[-1])

    def wait_for_nodes(self, alive: int, dead: int = 0, timeout: float = 60.0) -> list[dict]:
        """Block until ray.nodes() shows exactly ``alive`` alive nodes (and at
        least ``dead`` dead ones); returns the node list."""
        code = _WAIT_SNIPPET.format(alive=alive, dead=dead, timeout=timeout)
        res = self.run_python(code, timeout=timeout + 60, check=False)
        if res.returncode != 0:
            raise TimeoutError(f"cluster did not reach alive={alive} dead>={dead}:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    def start(self) -> NetnsRayCluster:
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        t0 = time.monotonic()
        _live_clusters.add(self)
        try:
            cleanup_stale_namespaces()
            # /tmp, not $TMPDIR: Ray's unix socket paths must stay < 108 bytes.
            self.tmp_root = Path(tempfile.mkdtemp(prefix=f"{self.prefix}_", dir=TMP_BASE))
            self._create_network()
            deadline = time.monotonic() + self.startup_timeout_s
            head = self.nodes[self.head_ns]
            self._start_node(head)
            self._wait_ready([head], deadline)
            workers = [self.nodes[ns] for ns in self.worker_ns]
            for node in workers:
                self._start_node(node)
            self._wait_ready(workers, deadline)
            self.wait_for_nodes(alive=1 + self.workers, timeout=max(5.0, deadline - time.monotonic()))
        except BaseException:
            self.teardown()
            raise
        self.bringup_s = time.monotonic() - t0
        return self

    # ------------------------------------------------------------------ faults
    def kill_node(self, ns: str, timeout: float = 10.0) -> None:
        """SIGKILL a node's process group and anything else in its namespace
        (a host crash as Ray sees it). Blocks until the namespace is empty."""
        node = self.nodes[ns]
        if node.proc is not None:
            self._seen_pids.update(pids_in_namespace(ns))
            _killpg(node.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            left = [p for p in pids_in_namespace(ns) if _pid_alive(p)]
            if not left:
                break
            _kill_pids(left)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes survive in {ns}: {left}")
            time.sleep(0.05)
        if node.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=5)
        node.killed = True

    def started_pids(self) -> set[int]:
        """Every pid seen in this cluster's namespaces or started by it so far."""
        pids = set(self._seen_pids) | {p.pid for p in self._procs}
        for ns in self._created_ns:
            pids.update(pids_in_namespace(ns))
        return pids

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> None:
        """Kill every process group and namespace process, delete the namespaces
        (which destroys the veths and the bridge) and the temp dirs. Idempotent."""
        if self._torn_down:
            return
        self._torn_down = True
        try:
            with contextlib.suppress(Exception):
                self._seen_pids.update(self.started_pids())
            for proc in self._procs:
                _killpg(proc.pid)
            deadline = time.monotonic() + 15
            for ns in self._created_ns:
                while True:
                    left = [p for p in pids_in_namespace(ns) if _pid_alive(p)]
                    if not left or time.monotonic() > deadline:
                        break
                    _kill_pids(left)
                    time.sleep(0.05)
            for proc in self._procs:
                with contextlib.suppress(Exception):
                    proc.wait(timeout=5)
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        with contextlib.suppress(Exception):
                            stream.close()
            for ns in reversed(self._created_ns):
                _ip("netns", "del", ns, check=False)
            if self.tmp_root is not None:
                # Stray processes that escaped the namespaces (none expected).
                _kill_pids(pids_mentioning(str(self.tmp_root)))
        finally:
            if self.tmp_root is not None and not os.environ.get("NETNS_CLUSTER_KEEP_LOGS"):
                shutil.rmtree(self.tmp_root, ignore_errors=True)
            _live_clusters.discard(self)

    def __enter__(self) -> NetnsRayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.teardown()


_NODES_SNIPPET = """
import json, ray
ray.init(logging_level="ERROR", log_to_driver=False)
print(json.dumps([{k: n[k] for k in ("NodeID", "NodeManagerAddress", "Alive", "Resources")}
                  for n in ray.nodes()]))
"""

_WAIT_SNIPPET = """
import json, time, ray
ray.init(logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + {timeout}
while True:
    nodes = [{{k: n[k] for k in ("NodeID", "NodeManagerAddress", "Alive", "Resources")}}
             for n in ray.nodes()]
    alive = sum(n["Alive"] for n in nodes)
    if alive == {alive} and len(nodes) - alive >= {dead}:
        print(json.dumps(nodes)); break
    if time.monotonic() > deadline:
        print(json.dumps(nodes)); raise SystemExit(1)
    time.sleep(0.25)
"""


@contextlib.contextmanager
def netns_ray_cluster(**kwargs) -> Iterator[NetnsRayCluster]:
    """``with netns_ray_cluster(workers=2, cpus_per_node=1) as cluster: ...``
    (keyword arguments: see :class:`NetnsRayCluster`). Raises NetnsUnavailable
    when namespaces cannot be used; use the pytest fixture to skip instead."""
    cluster = NetnsRayCluster(**kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.teardown()


def _teardown_all() -> None:
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.teardown()


atexit.register(_teardown_all)

try:
    import pytest
except ImportError:  # pragma: no cover - the harness works without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def netns_cluster_factory():
        """Fixture: ``cluster = netns_cluster_factory(workers=2)`` returns a
        started cluster; every cluster made is torn down when the test ends.
        Skips the test when network namespaces are unavailable."""
        require_netns()
        made: list[NetnsRayCluster] = []

        def make(**kwargs) -> NetnsRayCluster:
            cluster = NetnsRayCluster(**kwargs)
            made.append(cluster)
            return cluster.start()

        try:
            yield make
        finally:
            for cluster in made:
                cluster.teardown()
