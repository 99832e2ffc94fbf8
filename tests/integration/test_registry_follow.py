"""The running pipeline follows the registry without a restart: a newer applied version rolls its
consumers to the new catalog one at a time, is then published to every region's Redis (which Serve
replicas follow), and the new view is computed from the events that follow; a rollback is one
more version, followed the same way."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import ray
from kafka import KafkaProducer

from cluster import pipeline as pipeline_job
from cluster.registry import apply, make_plan
from cluster.settings import DEFAULT_EVENTS_TOPIC
from cluster.stack import Stack
from regions.redis_store import RedisRole, redis_client
from regions.registry_mirror import registry_key

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "card_transactions"
PROBE_VIEW = """views:
- name: probe_counts
  version: 1
  entity: user
  source: card_tx
  features:
  - name: tx_count_1h
    aggregation: count
    window: 1h
    default: 0
  ttl: 2d
  freshness_target: 10s
"""


def test_the_pipeline_rolls_to_a_newer_registry_version_and_publishes_it(
    stack: Stack, tmp_path: Path
) -> None:
    settings = stack.settings
    bootstrap = settings.kafka.bootstrap
    pipeline_job.up(settings, consumers=2)
    try:
        repo = tmp_path / "repo"
        shutil.copytree(EXAMPLE, repo)
        (repo / "views" / "probe_counts.yaml").write_text(PROBE_VIEW)
        added = apply(bootstrap, settings.tenant, make_plan(bootstrap, settings.tenant, repo))
        assert added is not None
        assert _published_everywhere(stack, added.number)
        status = _supervisor_status(stack)
        assert status["registry_version"] == added.number
        assert all(c["ready"] for c in status["consumers"])
        # The new view is computed from the events after the roll (it starts empty).
        user = f"u_probe_{uuid.uuid4().hex[:8]}"
        _produce(bootstrap, user, count=3)
        assert _view_written(stack, f"fl:{settings.tenant}:probe_counts:v1:{user}")
        back = apply(bootstrap, settings.tenant, make_plan(bootstrap, settings.tenant, EXAMPLE))
        assert back is not None and back.number == added.number + 1
        assert _published_everywhere(stack, back.number)
        assert _supervisor_status(stack)["registry_version"] == back.number
    finally:
        pipeline_job.down(settings)


def _published_everywhere(stack: Stack, number: int) -> bool:
    """Whether every region's Redis holds registry version ``number`` within 5 minutes (a refresh,
    then a restore of each consumer in turn on a loaded 2-core machine)."""
    give_up = time.monotonic() + 300
    while time.monotonic() < give_up:
        if all(_published(stack, region) == number for region in stack.settings.topology):
            return True
        time.sleep(2)
    return False


def _published(stack: Stack, region: Any) -> int:
    client = redis_client(region, RedisRole.READER, stack.settings.redis, stack.secrets)
    try:
        return int(client.hget(registry_key(stack.settings.tenant), "number") or 0)
    finally:
        client.close()


def _supervisor_status(stack: Stack) -> dict[str, Any]:
    ray.init(address=stack.settings.ray.address, namespace="freshline", ignore_reinit_error=True)
    try:
        supervisor = ray.get_actor("fl-supervisor", namespace="freshline")
        status: dict[str, Any] = ray.get(supervisor.status.remote(), timeout=60)
        return status
    finally:
        ray.shutdown()


def _produce(bootstrap: str, user: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    now = time.time_ns() // 1_000_000
    try:
        for seq in range(count):
            event = {
                "event_id": f"{user}-{seq}",
                "seq": seq,
                "event_type": "card_tx",
                "user_id": user,
                "merchant_id": "m_probe",
                "amount": 1.0,
                "currency": "USD",
                "event_time_ms": now + seq,
            }
            producer.send(DEFAULT_EVENTS_TOPIC, key=user.encode(), value=orjson.dumps(event))
        producer.flush(timeout=30)
    finally:
        producer.close()


def _view_written(stack: Stack, key: str) -> bool:
    """Whether ``key`` appears in us-east's Redis within 2 minutes."""
    region = stack.settings.topology.get("us-east")
    client = redis_client(region, RedisRole.READER, stack.settings.redis, stack.secrets)
    give_up = time.monotonic() + 120
    try:
        while time.monotonic() < give_up:
            if client.exists(key):
                return True
            time.sleep(1)
        return False
    finally:
        client.close()
