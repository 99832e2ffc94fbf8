"""The Redis Cluster profile on a real private stack: each region's Redis is three masters
(``FRESHLINE_REDIS_SHARDS=3``), the pipeline runs as a real Ray job against them, and every value
read back equals the oracle (chaos/oracle.py). One master SIGKILLed mid-stream and restarted
empty loses only its own buckets: reads of entities on the other masters are served from Redis
throughout, only the lost buckets are rehydrated, and the values equal the oracle afterwards.
The pipeline runs the scale-out shape: two sink shards per store, which both replay their
partitions into the lost buckets before those are ready again (regions/rehydration.py), and two
offline writers sharing the Iceberg tables, which hold every accepted event exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from pydantic import ValidationError
from redis.crc import key_slot

from chaos import faults, verify
from cluster import pipeline as pipeline_job
from cluster.isolated import isolated_settings
from cluster.process import port_is_free
from cluster.services.redis import RedisService
from cluster.services.redis_cluster import slot_range
from cluster.settings import REDIS_BUS_OFFSET, StackSettings
from cluster.stack import Stack
from features.demo import card_transactions_catalog
from features.keys import DEFAULT_TENANT, OnlineKey
from regions.config import RegionTopology
from regions.redis_layout import CLUSTER
from regions.redis_store import RedisRole, redis_client
from regions.resilience import Deadline
from tests.integration.chains import region_chain
from tests.integration.conftest import running_stack
from tests.integration.offline_path import raw_rows_once_written
from tests.integration.test_pipeline import _produce

pytestmark = pytest.mark.integration
CATALOG = card_transactions_catalog()
SHARDS = 3
REGION = "eu-west"
SINK_SHARDS = 2
OFFLINE_WRITERS = 2
VICTIM = 2  # node index: not node 0, the node clients are given to find the others
_PORTS = range(31000, 31900 - REDIS_BUS_OFFSET)


def with_redis_shards(settings: StackSettings, shards: int) -> StackSettings:
    """``settings`` with each region's Redis a cluster of ``shards`` masters on runs of free
    ports (node n at ``base + n``, its bus at ``base + n + 100``) no other port uses."""
    rng = random.Random()
    while True:
        bases = rng.sample(_PORTS, len(settings.topology.regions))
        wanted = [
            b + n + off for b in bases for n in range(shards) for off in (0, REDIS_BUS_OFFSET)
        ]
        if not all(port_is_free("127.0.0.1", p) for p in wanted):
            continue
        regions = [
            r.model_copy(update={"redis_port": base, "redis_shards": shards})
            for r, base in zip(settings.topology.regions, bases, strict=True)
        ]
        try:
            topology = RegionTopology(regions=tuple(regions))
            return StackSettings.model_validate({**settings.model_dump(), "topology": topology})
        except ValidationError:
            continue  # two runs overlap, or one takes a port of another service


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("redis-cluster")
    settings = with_redis_shards(isolated_settings(state_dir, with_ray=True), SHARDS)
    with running_stack(state_dir, settings) as stack:
        pipeline_job.up(
            stack.settings,
            consumers=2,
            sink_shards=SINK_SHARDS,
            offline_writers=OFFLINE_WRITERS,
        )
        try:
            yield stack
        finally:
            pipeline_job.down(stack.settings)


def _key(user: str) -> str:
    view = CATALOG.view("user_spend")
    max_id = CATALOG.entity(view.entity).max_id_bytes
    return OnlineKey(DEFAULT_TENANT, view.name, view.version, user).encode(max_id_bytes=max_id)


def _node_of_bucket(bucket: int) -> int:
    slot = key_slot(CLUSTER.marker_key(bucket).encode())
    return max(n for n in range(SHARDS) if slot_range(n, SHARDS)[0] <= slot)


def _node_of(user: str) -> int:
    return _node_of_bucket(CLUSTER.bucket_of(_key(user)))


def _serving_read(stack: Stack, users: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """One read through eu-west's real fallback chain: (store that answered, steps tried)."""

    async def read() -> tuple[str, list[tuple[str, str]]]:
        chain = region_chain(stack, REGION)  # inside the loop: its Redis client is bound to it
        result = await chain.read([_key(u) for u in users], Deadline(20.0, time.monotonic))
        return result.store, result.tried

    return asyncio.run(read())


def _sinks(stack: Stack) -> list[dict[str, Any]]:
    """The region's Redis sink shards' statuses, by shard."""
    status = pipeline_job.status(stack.settings)
    assert status is not None, "the pipeline is running"
    mine = (s for s in status["sinks"] if (s["region"], s["store"]) == (REGION, "redis"))
    return sorted(mine, key=lambda s: int(s["shard"]))


def _wait_for_sinks(
    stack: Stack, rehydrations: Sequence[int], timeout_s: float = 120
) -> list[dict[str, Any]]:
    """Until every shard is ready, each having rehydrated at least ``rehydrations[shard]``
    times."""
    deadline = time.monotonic() + timeout_s
    sinks = _sinks(stack)
    while not (
        len(sinks) == SINK_SHARDS
        and all(
            s["store_state"] == "ready" and s["rehydrations"] >= n
            for s, n in zip(sinks, rehydrations, strict=True)
        )
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"the {REGION} Redis sinks never became ready: {sinks}")
        time.sleep(1)
        sinks = _sinks(stack)
    return sinks


class _MarkerWatch:
    """Samples every bucket marker of the region's cluster until stopped; keeps the buckets ever
    seen other than ``ready`` (missing or rehydrating)."""

    def __init__(self, stack: Stack) -> None:
        region = stack.settings.topology.get(REGION)
        self._client = redis_client(region, RedisRole.ADMIN, stack.settings.redis, stack.secrets)
        self.incomplete: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _MarkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for bucket in CLUSTER.all_buckets:
                with contextlib.suppress(Exception):  # the victim's are unsampled while down
                    if self._client.get(CLUSTER.marker_key(bucket)) != b"ready":
                        self.incomplete.add(bucket)


def test_each_region_runs_three_masters_with_equal_slot_ranges(pipeline: Stack) -> None:
    nodes = [s for s in pipeline.status() if s.kind == "redis"]
    assert [s.name for s in nodes] == [
        f"redis-{r}-{n}" for r in pipeline.settings.topology.names for n in (1, 2, 3)
    ]
    assert all(s.healthy for s in nodes)
    region = pipeline.settings.topology.get(REGION)
    admin = redis_client(region, RedisRole.ADMIN, pipeline.settings.redis, pipeline.secrets)
    try:
        masters = {tuple(v) for v in admin.cluster_slots()}
    finally:
        admin.close()
    assert masters == {slot_range(n, SHARDS) for n in range(SHARDS)}


def test_pipeline_values_on_the_cluster_equal_the_oracle_and_one_empty_master_rehydrates_alone(
    pipeline: Stack,
) -> None:
    bootstrap = pipeline.settings.kafka.bootstrap
    _produce(bootstrap, 1_500, seed=41, start_seq=0)
    accepted = verify.accepted_in_topic(bootstrap)
    problems = verify.wait_for_oracle(pipeline.settings, pipeline.secrets, accepted, timeout_s=150)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:5]}"
    before = _wait_for_sinks(pipeline, rehydrations=[0] * SINK_SHARDS)
    assert [s["assigned_partitions"] for s in before] == [4, 4], "each shard its own half"
    users = sorted({e["user_id"] for e in accepted})
    on_victim = [u for u in users if _node_of(u) == VICTIM][:10]
    elsewhere = [u for u in users if _node_of(u) != VICTIM][:10]
    assert on_victim and elsewhere
    assert _serving_read(pipeline, users[:20])[0] == f"redis-{REGION}"

    victim = pipeline.service(f"redis-{REGION}-{VICTIM + 1}")
    assert isinstance(victim, RedisService)
    with _MarkerWatch(pipeline) as watch:
        faults.kill(victim)
        shutil.rmtree(victim.home / "appendonlydir")  # back on an empty disk; nodes.conf stays
        _produce(bootstrap, 500, seed=42, start_seq=10_000)  # mid-stream, while it is down
        # The other masters answer reads of their entities from Redis the whole time...
        assert _serving_read(pipeline, elsewhere)[0] == f"redis-{REGION}"
        # ...and reads touching the dead master fall through to the region's DynamoDB.
        assert _serving_read(pipeline, on_victim)[1][0][0] == f"redis-{REGION}"
        assert _serving_read(pipeline, on_victim)[0] != f"redis-{REGION}"
        faults.restart(victim)
        # Both shards replayed their partitions into the lost buckets.
        _wait_for_sinks(pipeline, rehydrations=[s["rehydrations"] + 1 for s in before])
        assert _serving_read(pipeline, elsewhere)[0] == f"redis-{REGION}"
    victim_buckets = {b for b in CLUSTER.all_buckets if _node_of_bucket(b) == VICTIM}
    assert watch.incomplete, "the restarted master's buckets were seen without their markers"
    assert watch.incomplete <= victim_buckets, "only the emptied master's buckets rehydrated"

    accepted = verify.accepted_in_topic(bootstrap)
    problems = verify.wait_for_oracle(pipeline.settings, pipeline.secrets, accepted, timeout_s=90)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:5]}"
    assert _serving_read(pipeline, on_victim) == (f"redis-{REGION}", [(f"redis-{REGION}", "ok")])


def test_two_offline_writers_hold_every_accepted_event_exactly_once(pipeline: Stack) -> None:
    status = pipeline_job.status(pipeline.settings)
    assert status is not None and [w["shard"] for w in status["offline"]] == [0, 1]
    accepted = verify.accepted_in_topic(pipeline.settings.kafka.bootstrap)
    expected = sorted((e["_partition"], e["_offset"]) for e in accepted)
    rows = raw_rows_once_written(pipeline.settings, len(expected))
    assert rows == expected, f"{len(rows)} offline rows for {len(expected)} accepted events"
