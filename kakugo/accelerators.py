"""Which accelerator a stage ran on, for the cost ledger: the type of the nodes that held
its work, read from Ray's node resources. Ray's cloud providers and its GPU detection give
every GPU node an `accelerator_type:<TYPE>` resource (H100, A100-80G, ...); a GPU node
without one is priced as "GPU", a node without GPUs as "CPU".
"""

from __future__ import annotations

from collections.abc import Iterable

ACCELERATOR_RESOURCE = "accelerator_type:"
# Ray Serve names the placement group of each replica after the replica's actor:
# SERVE_REPLICA::{app}#{deployment}#{suffix}. tests/integration/test_engine_pass.py checks
# that it still does.
SERVE_REPLICA_PREFIX = "SERVE_REPLICA::"


def device_of_resources(resources: dict[str, float]) -> str:
    """The device type a node with these Ray resources offers."""
    if not resources.get("GPU"):
        return "CPU"
    types = [k.removeprefix(ACCELERATOR_RESOURCE) for k in resources
             if k.startswith(ACCELERATOR_RESOURCE)]
    return types[0] if len(types) == 1 else "GPU"


def node_devices() -> dict[str, str]:
    """Device type of every alive node of the connected cluster, by node id."""
    import ray

    return {node["NodeID"]: device_of_resources(node.get("Resources", {}))
            for node in ray.nodes() if node.get("Alive")}


def device_of(node_ids: Iterable[str], *, gpu: bool, requested: str | None,
              nodes: dict[str, str] | None = None) -> str:
    """The device a stage ran on: "CPU" when it used no GPU; else the type of the nodes
    that held it when they share one, the type it asked for, or "GPU"."""
    if not gpu:
        return "CPU"
    nodes = node_devices() if nodes is None else nodes
    found = {nodes[n] for n in node_ids if n in nodes} - {"CPU"}
    if len(found) == 1:
        return found.pop()
    return requested or "GPU"


def serve_replica_nodes(app: str) -> list[str]:
    """Ids of the nodes that hold the running replicas of a Ray Serve app."""
    from ray.util import placement_group_table

    prefix = f"{SERVE_REPLICA_PREFIX}{app}#"
    return sorted({node for pg in placement_group_table().values()
                   if pg.get("name", "").startswith(prefix) and pg.get("state") == "CREATED"
                   for node in pg.get("bundles_to_node_id", {}).values()})
