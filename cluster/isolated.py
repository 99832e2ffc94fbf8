"""Settings of a private stack on free ports, beside a developer's own one (tests, benchmarks).

Such a stack shares nothing with the default one but the jar cache: its own state dir, its own
ports, its own Redis and DynamoDB endpoints.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Collection
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from cluster.process import port_is_free
from cluster.settings import (
    KAFKA_PORT_STRIDE,
    FrontDoorSettings,
    KafkaSettings,
    RaySettings,
    StackSettings,
)
from features.keys import DEFAULT_TENANT
from regions.config import default_topology

# All below the kernel's ephemeral range (32768+), which outgoing connections draw from, and above
# Ray's worker ports (20000-29999): a port picked here cannot be taken by a client socket between
# the moment it is chosen and the moment the service binds it. 30000-30999 is left to the default
# stack's Serve replicas (Ray's default direct-ingress range, RaySettings.ingress_ports).
_ISOLATED_PORTS = range(31000, 32000)
# Each isolated head's Serve replicas get a block of their own here: Serve hands out the lowest
# free port of its range, so two heads sharing one would each take the port of the other's killed
# replica while the other's ingress still routes to it (requests answered by the wrong stack).
_INGRESS_BLOCKS = range(32000, 32768, 32)
_INGRESS_BLOCK_PORTS = 32


def free_ports(count: int, *, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct ports of :data:`_ISOLATED_PORTS` that nothing listens on now and that
    are not in ``avoid``: the ports of settings already drawn but not started yet, which are free
    now and would otherwise be drawn twice."""
    rng = random.Random()  # noqa: S311 - spreads port picks, guards nothing
    ports: set[int] = set()
    while len(ports) < count:
        port = rng.choice(_ISOLATED_PORTS)
        if port not in avoid and port_is_free("127.0.0.1", port):
            ports.add(port)
    return sorted(ports)


def free_ingress_block() -> tuple[int, int]:
    """A block of :data:`_INGRESS_BLOCKS` (first port, end) where nothing listens now: no other
    isolated head's replicas, which take a block's lowest ports first. Two heads started at the
    same moment may still draw the same block; with 24 blocks that is rare, not impossible."""
    rng = random.Random()  # noqa: S311 - spreads block picks, guards nothing
    blocks = list(_INGRESS_BLOCKS)
    rng.shuffle(blocks)
    for first in blocks:
        end = first + _INGRESS_BLOCK_PORTS
        if all(port_is_free("127.0.0.1", port) for port in range(first, end)):
            return first, end
    return blocks[0], blocks[0] + _INGRESS_BLOCK_PORTS  # every block busy: share one


def isolated_settings(
    state_dir: Path, *, with_ray: bool, tenant: str = DEFAULT_TENANT
) -> StackSettings:
    """Settings of a stack that shares nothing with the default one but the jar cache."""
    p = free_ports(14)
    return StackSettings(
        state_dir=state_dir,
        tenant=tenant,
        kafka=KafkaSettings(port=p[0], controller_port=p[1]),
        ray=RaySettings(
            port=p[2],
            dashboard_port=p[3],
            client_server_port=p[4],
            serve_port=p[5],
            metrics_export_port=p[10],
            dashboard_agent_port=p[11],
            num_cpus=4,
            ingress_ports=free_ingress_block(),
        ),
        topology=default_topology(redis_ports=(p[6], p[7]), dynamodb_ports=(p[8], p[9])),
        front_door=FrontDoorSettings(ports=(p[12], p[13])),
        with_ray=with_ray,
    )


def with_brokers(settings: StackSettings, brokers: Literal[1, 3]) -> StackSettings:
    """``settings`` with a Kafka of ``brokers`` nodes on a run of free ports (node n at
    ``base + 2(n-1)``, its controller one above) that no other port of ``settings`` uses."""
    span = KAFKA_PORT_STRIDE * brokers
    rng = random.Random()  # noqa: S311 - spreads port picks, guards nothing
    while True:
        base = rng.choice(range(_ISOLATED_PORTS.start, _ISOLATED_PORTS.stop - span))
        if not all(port_is_free("127.0.0.1", p) for p in range(base, base + span)):
            continue
        kafka = KafkaSettings(port=base, controller_port=base + 1, brokers=brokers)
        with contextlib.suppress(ValidationError):  # a port another service of settings has
            return StackSettings.model_validate({**settings.model_dump(), "kafka": kafka})
