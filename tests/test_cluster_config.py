"""cluster.yaml / cluster-onprem.yaml pass Ray's own launcher validation, and the
search.cluster storage rule for multi-node sweeps. Fast, offline."""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from results.storage import is_uri
from search.cluster import check_storage_for_cluster, count_alive_nodes

ROOT = Path(__file__).resolve().parent.parent
AWS = ROOT / "cluster.yaml"
ONPREM = ROOT / "cluster-onprem.yaml"

jsonschema = pytest.importorskip("jsonschema")  # ray[default] ships it; validate_config needs it


def ray_validate(config: dict) -> dict:
    """What `ray up` does to a config before it contacts any cloud (Ray 2.60:
    commands._bootstrap_config -> prepare_config, then validate_config)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module", params=[AWS, ONPREM], ids=["aws", "onprem"])
def prepared(request) -> dict:
    return ray_validate(load(request.param))


# --------------------------------------------------------------------------- both files


def test_configs_pass_ray_validation(prepared):
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_working_copy_is_mounted(prepared):
    assert prepared["file_mounts"].get("~/made-search") == "."
    # The local virtualenv must not be shipped.
    assert any(".venv" in p for p in prepared["rsync_exclude"])


def _installs_project(commands: list[str]) -> bool:
    return any(re.search(r"pip install -e \S*made-search\[dev\]", c) for c in commands)


def _index(commands: list[str], pattern: str) -> int:
    for i, c in enumerate(commands):
        if re.search(pattern, c):
            return i
    raise AssertionError(f"no command matches {pattern!r} in {commands}")


def test_every_node_installs_the_project(prepared):
    # prepare_config merges setup_commands into head_setup_commands and
    # worker_setup_commands: these are the lists the nodes actually run.
    for key in ("head_setup_commands", "worker_setup_commands"):
        cmds = prepared[key]
        assert _installs_project(cmds), (key, cmds)
        # torch pinned exactly, installed before the project so pip keeps that build.
        torch_i = _index(cmds, r'pip install "?torch==\d+\.\d+\.\d+"?')
        ray_i = _index(cmds, r'pip install "?ray\[[^\]]*\]==2\.60\.\d+"?')
        proj_i = _index(cmds, r"pip install -e \S*made-search\[dev\]")
        assert torch_i < proj_i and ray_i < proj_i
    # A node type with its own worker_setup_commands would replace the global ones.
    for name, node_type in prepared["available_node_types"].items():
        if "worker_setup_commands" in node_type:
            assert _installs_project(node_type["worker_setup_commands"]), name
    # The install path is the file mount's target.
    assert "~/made-search" in prepared["file_mounts"]


def test_start_commands(prepared):
    head = " ; ".join(prepared["head_start_ray_commands"])
    worker = " ; ".join(prepared["worker_start_ray_commands"])
    assert re.search(r"ray start --head\b.*--port=6379", head), head
    assert "--address=$RAY_HEAD_IP:6379" in worker, worker
    assert "--head" not in worker


def test_shared_storage_is_configured(prepared):
    cmds = " ".join(prepared["worker_setup_commands"])
    assert "MADE_SEARCH_STORAGE=" in cmds


# --------------------------------------------------------------------------- AWS specifics


def test_aws_gpu_workers_declared():
    cfg = ray_validate(load(AWS))
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert isinstance(head["resources"]["CPU"], int) and head["resources"].get("GPU", 0) == 0
    workers = {n: t for n, t in types.items() if n != cfg["head_node_type"]}
    assert workers
    for name, t in workers.items():
        gpus = t["resources"].get("GPU")
        assert isinstance(gpus, int) and gpus >= 1, (name, t["resources"])
        assert isinstance(t["resources"]["CPU"], int)
        assert 0 <= t["min_workers"] <= t["max_workers"]
        assert t["node_config"]["InstanceType"].startswith(("g", "p"))
        # Workers write trial results to S3 themselves.
        assert "IamInstanceProfile" in t["node_config"], name
    assert sum(t["min_workers"] for t in workers.values()) >= 1
    assert sum(t["min_workers"] for t in types.values()) <= cfg["max_workers"]


def test_aws_storage_is_s3():
    cmds = " ".join(ray_validate(load(AWS))["setup_commands"])
    assert re.search(r"MADE_SEARCH_STORAGE=s3://", cmds)


# --------------------------------------------------------------------------- on-prem specifics


def test_onprem_uses_local_provider_with_placeholder_ips():
    raw = load(ONPREM)
    assert raw["provider"]["type"] == "local"
    doc_nets = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    ips = [raw["provider"]["head_ip"], *raw["provider"]["worker_ips"]]
    assert len(set(ips)) == len(ips) >= 3
    for ip in ips:
        assert any(ipaddress.ip_address(ip) in net for net in doc_nets), ip
    cfg = ray_validate(raw)
    (node_type,) = cfg["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(raw["provider"]["worker_ips"])


# --------------------------------------------------------------------------- the validation can fail


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c["available_node_types"]["worker.gpu.1x"]["resources"].update(GPU=0.5), id="float-gpu-resource"),
        pytest.param(lambda c: c["available_node_types"]["head.cpu"]["resources"].update(CPU="8"), id="string-cpu-resource"),
        pytest.param(lambda c: c.update(gpus_per_node=1), id="unknown-top-level-key"),
        pytest.param(lambda c: c["available_node_types"]["worker.gpu.1x"].update(gpu=1), id="unknown-node-type-key"),
        pytest.param(lambda c: c["available_node_types"]["worker.gpu.1x"].pop("resources"), id="missing-resources"),
        pytest.param(lambda c: c.update(head_node_type="no.such.type"), id="bad-head-node-type"),
        pytest.param(lambda c: c.update(head_setup_commands=[["pip", "install", "boto3"]]), id="command-not-a-string"),
        pytest.param(lambda c: c.update(max_workers=0), id="min-workers-above-max-workers"),
    ],
)
def test_mutated_aws_config_is_rejected(mutate):
    cfg = load(AWS)
    ray_validate(cfg)  # the original passes
    mutate(cfg)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(cfg)


def test_mutated_onprem_config_is_rejected():
    cfg = load(ONPREM)
    cfg["file_mounts_sync_continuously"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(cfg)


# --------------------------------------------------------------------------- search.cluster


@pytest.mark.parametrize(
    "storage, local",
    [
        ("/x", True),
        ("runs", True),
        ("./ray_results", True),
        ("~/made-search/runs", True),
        ("file:///mnt/shared/runs", True),
        ("FILE:///mnt/shared/runs", True),
        ("C://Users/me/runs", True),
        ("s3://bucket/made-search", False),
        ("gs://bucket/made-search", False),
        ("abfs://container@account.dfs.core.windows.net/x", False),
        ("hdfs://namenode:8020/x", False),
    ],
)
def test_is_local_path(storage, local):
    assert (not is_uri(storage)) is local


def test_local_storage_refused_on_multinode_cluster():
    with pytest.raises(ValueError) as err:
        check_storage_for_cluster("/x", storage_is_shared=False, num_nodes=3)
    msg = str(err.value)
    assert "--storage /x is a local path but the cluster has 3 nodes" in msg
    assert "s3://" in msg and "--shared-storage" in msg
    with pytest.raises(ValueError):
        check_storage_for_cluster("file:///x", storage_is_shared=False, num_nodes=2)


@pytest.mark.parametrize(
    "storage, shared, nodes",
    [
        ("/x", False, 1),  # single node: local is fine
        ("/x", False, 0),
        ("/mnt/nfs/runs", True, 4),  # declared shared
        ("s3://bucket/made-search", False, 4),  # reachable from every node
        ("gs://bucket/made-search", False, 2),
    ],
)
def test_storage_accepted(storage, shared, nodes):
    check_storage_for_cluster(storage, storage_is_shared=shared, num_nodes=nodes)


def test_count_alive_nodes_counts_only_alive(monkeypatch):
    ray = pytest.importorskip("ray")
    fake = [{"NodeID": "a", "Alive": True}, {"NodeID": "b", "Alive": False}, {"NodeID": "c", "Alive": True}]
    monkeypatch.setattr(ray, "nodes", lambda: fake)
    assert count_alive_nodes() == 2
