"""One real stack per test session, on free ports and in a temporary state dir.

It runs beside a developer's own stack (`make demo`) without touching it, and is stopped and purged
at the end of the session; the last check fails the run if any process it started is still alive.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.isolated import isolated_settings
from cluster.settings import StackSettings
from cluster.settings_env import settings_to_env
from cluster.stack import Stack

TEST_SERVE_DRAIN_S = 3


def stack_env(settings: StackSettings) -> dict[str, str]:
    """The environment that makes the CLI or a Ray client address this stack."""
    return {**os.environ, **settings_to_env(settings), **settings.ray.client_env()}


@contextlib.contextmanager
def running_stack(state_dir: Path, settings: StackSettings | None = None) -> Iterator[Stack]:
    """A private stack (with Ray unless ``settings`` say otherwise), up for the block, then
    stopped and purged; the exit fails if any process it started is still alive."""
    settings = settings or isolated_settings(state_dir, with_ray=True)
    if settings.ray.serve_drain_s is None:
        # A throwaway stack has no load balancer to wait for: Serve's 30 s drain would make each
        # module that shuts Serve down wait half a minute (HAProxy retries refused connections).
        ray = settings.ray.model_copy(update={"serve_drain_s": TEST_SERVE_DRAIN_S})
        settings = settings.model_copy(update={"ray": ray})
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
    # A tenant other than the default: every test on this stack then proves that the tenant is
    # configuration, followed by the pipeline, the sinks, serving, the CLI and the validator.
    settings = isolated_settings(tmp_path_factory.mktemp("stack"), with_ray=True, tenant="itest")
    with running_stack(settings.state_dir, settings) as running:
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
