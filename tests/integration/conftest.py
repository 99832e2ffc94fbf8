"""One real stack per test session, on free ports and in a temporary state dir.

It runs beside a developer's own stack (`make demo`) without touching it, and is stopped and purged
at the end of the session; the last check fails the run if any process it started is still alive.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.process import port_is_free
from cluster.settings import KafkaSettings, RaySettings, StackSettings
from cluster.stack import Stack
from regions.config import default_topology

# Below the kernel's ephemeral range (32768+), which outgoing connections draw from, and above
# Ray's worker ports (20000-29999): a port picked here cannot be taken by a client socket between
# the moment it is chosen and the moment the service binds it.
_TEST_PORTS = range(30000, 32768)


def free_ports(count: int) -> list[int]:
    rng = random.Random()
    ports: set[int] = set()
    while len(ports) < count:
        port = rng.choice(_TEST_PORTS)
        if port_is_free("127.0.0.1", port):
            ports.add(port)
    return sorted(ports)


def isolated_settings(state_dir: Path, *, with_ray: bool) -> StackSettings:
    """Settings of a stack that shares nothing with the default one but the jar cache."""
    p = free_ports(12)
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
        with_ray=with_ray,
    )


def stack_env(settings: StackSettings) -> dict[str, str]:
    """The environment that makes the CLI or a Ray client address this stack."""
    return {**os.environ, **settings.to_env(), **settings.ray.client_env()}


@contextlib.contextmanager
def running_stack(state_dir: Path) -> Iterator[Stack]:
    """A private stack with Ray, up for the block, then stopped and purged; the exit fails if
    any process it started is still alive."""
    settings = isolated_settings(state_dir, with_ray=True)
    # Tests call ray.init in this process; it must use the same auth mode as the head.
    os.environ.update(settings.ray.client_env())
    running = Stack.build(settings, environ={})
    try:
        running.up()
        yield running
    finally:
        running.down(purge=True)
        leftovers = [s.name for s in running.services if s.status().pid is not None]
        assert not leftovers, f"processes left running after the stack: {leftovers}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    return stack.settings.kafka.bootstrap


@pytest.fixture(scope="session")
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """``topic_factory(partitions=8)`` creates a fresh, uniquely named topic; returns its name."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="freshline-tests")

    def create(partitions: int = 8, compacted: bool = False) -> str:
        name = f"test.{uuid.uuid4().hex[:12]}"
        configs = {"cleanup.policy": "compact"} if compacted else {}
        admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=configs)], wait_for_metadata=True
        )
        return name

    yield create
    admin.close()
