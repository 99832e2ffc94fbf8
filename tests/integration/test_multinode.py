"""Two Ray nodes on one machine (the head and ``ray-worker-1``), the pipeline spread over both, and
the worker node's raylet SIGKILLed mid-stream: the actors it ran come back on the head, and every
region's Redis and DynamoDB equal the oracle (0 missing, 0 counted twice), every refused event
dead-lettered exactly once.

The kill is marked ``heavy`` (``make heavy``). CI's quick case runs on the same two-node stack:
the pipeline's actors spread over both nodes, the supervisor on the head.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import ray

from chaos import verify
from chaos.oracle import LedgerEntry, accepted_events
from cluster import pipeline as pipeline_job
from cluster.isolated import isolated_settings
from cluster.process import wait_until
from cluster.services.ray_worker import NODE_LABEL, RayWorkerService
from cluster.stack import Stack
from features.demo import SOURCE, card_transactions_catalog
from tests.integration.conftest import running_stack
from tests.integration.test_pipeline import _produce

pytestmark = pytest.mark.integration
CATALOG = card_transactions_catalog()
WORKER = "ray-worker-1"
HEAD = "head"
BATCH = 400  # events per produced batch; a batch about every second while streaming


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("multinode")
    settings = isolated_settings(state_dir, with_ray=True)
    ray_settings = settings.ray.model_copy(update={"worker_nodes": 1})
    with running_stack(state_dir, settings.model_copy(update={"ray": ray_settings})) as stack:
        yield stack


_PIPELINE = ("fl-consumer-", "fl-sink-", "fl-offline", "fl-supervisor")


def _placement(stack: Stack) -> dict[str, tuple[str, int]]:
    """``{actor name: (node, pid)}`` of the pipeline's live actors (consumers, sinks, offline
    writer, supervisor), the node being its ``freshline-node`` label (``head`` for the head),
    from Ray's own state API."""
    from ray.util.state import list_actors, list_nodes

    address = stack.settings.ray.dashboard_url
    nodes = {
        n.node_id: (HEAD if n.is_head_node else n.labels.get(NODE_LABEL, n.node_id))
        for n in list_nodes(address=address, limit=1000)
    }
    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=10_000)
    return {
        str(a.name): (nodes.get(str(a.node_id), str(a.node_id)), int(a.pid or 0))
        for a in actors
        if (a.name or "").startswith(_PIPELINE)
    }


class _Stream:
    """Produces batches of the test's events until stopped; the acknowledged ledger is kept."""

    def __init__(self, bootstrap: str) -> None:
        self.ledger: list[LedgerEntry] = []
        self.batches = 0
        self._bootstrap = bootstrap
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def __enter__(self) -> _Stream:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.wait(1.0) and self.batches < 200:
            self.ledger += _produce(
                self._bootstrap, BATCH, seed=100 + self.batches, start_seq=BATCH * self.batches
            )
            self.batches += 1

    def wait_for(self, batches: int) -> None:
        assert wait_until(lambda: self.batches >= batches, 300, 0.5), "the stream stalled"


def _supervisor_status() -> dict[str, Any]:
    supervisor = ray.get_actor("fl-supervisor", namespace="freshline")
    return cast(dict[str, Any], ray.get(supervisor.status.remote(), timeout=120))


def _exited(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def _events_in(pid: int) -> int:
    """Events taken so far by the consumer running in ``pid``."""
    consumers = _supervisor_status()["consumers"]
    return sum(c["events_in"] for c in consumers if c["pid"] == pid)


def _healthy_worker(stack: Stack) -> RayWorkerService:
    """The stack's second Ray node, checked healthy before the pipeline is placed on it."""
    worker = stack.service(WORKER)
    assert isinstance(worker, RayWorkerService)
    assert worker.status().state == "healthy"
    return worker


def test_the_pipeline_spreads_over_both_nodes_and_its_supervisor_stays_on_the_head(
    two_nodes: Stack,
) -> None:
    settings = two_nodes.settings
    _healthy_worker(two_nodes)
    pipeline_job.up(settings, consumers=2)
    try:
        placed = _placement(two_nodes)
        consumers = {node for name, (node, _) in placed.items() if name.startswith("fl-consumer-")}
        assert consumers == {HEAD, WORKER}, f"two consumers, one per node (SPREAD): {placed}"
        assert placed["fl-supervisor"][0] == HEAD, "the supervisor stays with its driver"
        assert {node for node, _ in placed.values()} == {HEAD, WORKER}
    finally:
        pipeline_job.down(settings)


@pytest.mark.heavy
def test_a_worker_nodes_raylet_killed_mid_stream_loses_and_doubles_nothing(
    two_nodes: Stack,
) -> None:
    settings = two_nodes.settings
    worker = _healthy_worker(two_nodes)
    pipeline_job.up(settings, consumers=2)
    ray.init(address=settings.ray.address, namespace="freshline", log_to_driver=False)
    try:
        before = _placement(two_nodes)
        on_worker = {name for name, (node, _) in before.items() if node == WORKER}
        consumers_there = sorted(n for n in on_worker if n.startswith("fl-consumer-"))
        assert consumers_there, f"no consumer was placed on {WORKER}: {before}"
        assert before["fl-supervisor"][0] == HEAD, "the supervisor stays with its driver"
        victim = consumers_there[0]
        with _Stream(settings.kafka.bootstrap) as stream:
            stream.wait_for(2)
            assert wait_until(lambda: _events_in(before[victim][1]) > 0, 120, 0.5)
            raylet = worker.raylet_pid()
            assert raylet is not None
            os.kill(raylet, signal.SIGKILL)
            assert wait_until(lambda: worker.status().state == "down", 120, 0.5), (
                "ray start --block exits once its raylet is gone"
            )

            def back_on_the_head() -> bool:
                now = _placement(two_nodes)
                return all(now.get(name, ("", 0))[0] == HEAD for name in on_worker)

            assert wait_until(back_on_the_head, 300, 2.0), _placement(two_nodes)
            after = _placement(two_nodes)
            killed = stream.batches
            stream.wait_for(killed + 3)  # the restarted actors take a live stream, not a backlog
        assert set(after) == set(before), "the same actors, no more and no fewer"
        for name in on_worker:
            old_pid = before[name][1]
            assert after[name][1] != old_pid, f"{name} runs in a new process"
            assert wait_until(partial(_exited, old_pid), 60), f"{name}'s old process exited"
        _assert_every_region_equals_the_oracle(two_nodes, stream.ledger)
    finally:
        ray.shutdown()
        pipeline_job.down(settings)


def _assert_every_region_equals_the_oracle(stack: Stack, ledger: list[LedgerEntry]) -> None:
    bootstrap = stack.settings.kafka.bootstrap
    acknowledged = {(e.partition, e.offset) for e in ledger}
    assert not verify.lost_acknowledged(bootstrap, acknowledged)
    # The topic is this stack's own: everything in it is this test's stream.
    held = verify.topic_ledger(bootstrap)
    assert {(e.partition, e.offset) for e in held} == acknowledged
    accepted = accepted_events(held, CATALOG, SOURCE)
    assert 0 < len(accepted) < len(held)
    problems = verify.wait_for_oracle(stack.settings, stack.secrets, accepted, timeout_s=300)
    assert not problems, f"{len(problems)} mismatches after the node died, e.g. {problems[:5]}"
    letters = verify.dead_letters(bootstrap)
    assert len(letters) == len(held) - len(accepted), "each refused event dead-lettered once"
    assert {h["reason"] for h in letters} <= {"late", "bad_json"}
