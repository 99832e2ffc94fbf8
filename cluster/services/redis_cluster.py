"""A region's local Redis Cluster (``redis_shards`` > 1): what each node is told, and forming the
cluster once every node runs.

Every node is a master (no replicas: a lost master's buckets are rebuilt from the changelog, see
``regions.redis_layout``) and owns an equal contiguous slot range, node n (0-based) the n-th.
Nodes keep ``nodes.conf`` in their own folder, so a node restarted after a crash, empty or not,
rejoins with its slots; only ``stack down --purge`` forgets the cluster.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from cluster.settings import REDIS_BUS_OFFSET
from features.errors import StackError

FORM_TIMEOUT_S = 30.0


def slot_range(node: int, nodes: int) -> tuple[int, int]:
    """The first and last slot node ``node`` (0-based) of ``nodes`` owns."""
    return (
        node * REDIS_CLUSTER_HASH_SLOTS // nodes,
        (node + 1) * REDIS_CLUSTER_HASH_SLOTS // nodes - 1,
    )


def node_config(port: int) -> list[str]:
    """The cluster lines of one node's ``redis.conf``."""
    return [
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        f"cluster-port {port + REDIS_BUS_OFFSET}",
        # A dead master is marked failed within 2 s (no replica takes over: none exists).
        "cluster-node-timeout 2000",
        # The other masters keep serving their slots while one is down: that is the point of
        # per-shard readiness. Reads of a down master's slots fail fast instead.
        "cluster-require-full-coverage no",
    ]


# What redis-py's cluster client asks a node when it connects: the slot map.
READER_CLUSTER_COMMANDS = "+cluster|slots +cluster|shards +cluster|nodes +cluster|info"


def _info(client: Any) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _formed(clients: Sequence[Any]) -> bool:
    infos = [_info(c) for c in clients]
    return all(
        i.get("cluster_state") == "ok"
        and int(i.get("cluster_known_nodes", 0)) == len(clients)
        and int(i.get("cluster_slots_assigned", 0)) == REDIS_CLUSTER_HASH_SLOTS
        for i in infos
    )


def form(clients: Sequence[Any], host: str, ports: Sequence[int]) -> None:
    """Make the running nodes (admin clients, node 0 first, at ``ports``) one cluster: give each
    node without slots its range, introduce every node to node 0, and wait until every node sees
    all nodes and all slots. Idempotent: a formed cluster is left alone."""
    if _formed(clients):
        return
    for n, client in enumerate(clients):
        if int(_info(client).get("cluster_slots_assigned", 0)) == 0:
            first, last = slot_range(n, len(clients))
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
    bus = ports[0] + REDIS_BUS_OFFSET
    for client in clients[1:]:
        client.execute_command("CLUSTER", "MEET", host, ports[0], bus)
    deadline = time.monotonic() + FORM_TIMEOUT_S
    while not _formed(clients):
        if time.monotonic() > deadline:
            raise StackError(f"the Redis Cluster on {host}:{ports[0]} did not form in time")
        time.sleep(0.1)
