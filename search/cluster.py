"""Multi-node helpers for the search CLI: how many nodes, and is --storage usable.

Ray Tune no longer syncs trial results to the head node: every node writes its trials'
checkpoints and results straight to the storage path. On a cluster with more than one
node that path must therefore be reachable by all of them (s3://, gs://, ... or a
shared filesystem mounted at the same path on every node).
"""

from __future__ import annotations

from results.storage import is_uri


def count_alive_nodes() -> int:
    """Number of alive nodes in the Ray cluster this process is connected to
    (call after ``ray.init``)."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def trial_slots(cpus_per_trial: float, gpus_per_trial: float, concurrency: int | None) -> int:
    """How many trials the connected cluster runs at once (at least 1; call after ``ray.init``)."""
    import ray

    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0) // cpus_per_trial)
    if gpus_per_trial > 0:
        slots = min(slots, int(resources.get("GPU", 0) // gpus_per_trial))
    if concurrency is not None:
        slots = min(slots, concurrency)
    return max(1, slots)


def check_storage_for_cluster(storage: str, storage_is_shared: bool, num_nodes: int) -> None:
    """Refuse a local --storage on a multi-node cluster unless declared shared.

    Raises ValueError when ``num_nodes > 1``, ``storage`` is a local path and
    ``storage_is_shared`` (the CLI's ``--shared-storage``) is False.
    """
    if num_nodes <= 1 or storage_is_shared or is_uri(storage):
        return
    raise ValueError(
        f"--storage {storage} is a local path but the cluster has {num_nodes} nodes: "
        "trials on other nodes cannot write there. Use a URI every node can reach "
        "(s3://..., gs://...) or a shared filesystem mounted at the same path on every "
        "node and pass --shared-storage."
    )
