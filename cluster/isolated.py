"""Settings of a private stack on free ports, beside a developer's own one (tests, benchmarks).

Such a stack shares nothing with the default one but the jar cache: its own state dir, its own
ports, its own Redis and DynamoDB endpoints.
"""

from __future__ import annotations

import random
from pathlib import Path

from cluster.process import port_is_free
from cluster.settings import FrontDoorSettings, KafkaSettings, RaySettings, StackSettings
from regions.config import default_topology

# Below the kernel's ephemeral range (32768+), which outgoing connections draw from, and above
# Ray's worker ports (20000-29999): a port picked here cannot be taken by a client socket between
# the moment it is chosen and the moment the service binds it.
_ISOLATED_PORTS = range(30000, 32768)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports of :data:`_ISOLATED_PORTS` that nothing listens on now."""
    rng = random.Random()  # noqa: S311 - spreads port picks, guards nothing
    ports: set[int] = set()
    while len(ports) < count:
        port = rng.choice(_ISOLATED_PORTS)
        if port_is_free("127.0.0.1", port):
            ports.add(port)
    return sorted(ports)


def isolated_settings(state_dir: Path, *, with_ray: bool) -> StackSettings:
    """Settings of a stack that shares nothing with the default one but the jar cache."""
    p = free_ports(14)
    return StackSettings(
        state_dir=state_dir,
        kafka=KafkaSettings(port=p[0], controller_port=p[1]),
        ray=RaySettings(
            port=p[2],
            dashboard_port=p[3],
            client_server_port=p[4],
            serve_port=p[5],
            metrics_export_port=p[10],
            dashboard_agent_port=p[11],
            num_cpus=4,
        ),
        topology=default_topology(redis_ports=(p[6], p[7]), dynamodb_ports=(p[8], p[9])),
        front_door=FrontDoorSettings(ports=(p[12], p[13])),
        with_ray=with_ray,
    )
