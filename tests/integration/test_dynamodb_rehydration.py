"""A region's DynamoDB endpoint that restarts empty is rehydrated from the changelog; serving never
reads it as complete in between.

The pipeline runs as a real Ray job on the session stack. eu-west's moto is SIGKILLed and started
again by its service (``chaos.faults``), which recreates the table empty and without a marker,
while the sink's committed offsets say it applied everything. A few of the region's tiles are put
back directly, as a sink batch landing before the sink's marker check would, so the table holds a
partial state. The pipeline runs two sink shards per store, so the table is complete again only
once both replayed their changelog partitions (regions/rehydration.py). The eu-west DynamoDB
sinks' processes are held with SIGSTOP across the restart, so that partial window lasts as long
as the test looks, whatever the machine's speed. Values are judged against the oracle
(chaos/oracle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chaos import faults, verify
from cluster import pipeline as pipeline_job
from cluster.stack import Stack
from features.demo import card_transactions_catalog
from features.keys import OnlineKey
from regions.aws import dynamodb_client
from regions.dynamodb_store import MARKER_PK, MARKER_SK
from regions.resilience import Deadline
from serve_apps.fallback import FallbackChain
from tests.integration.chains import region_chain
from tests.integration.test_pipeline import _produce

pytestmark = pytest.mark.integration
CATALOG = card_transactions_catalog()
REGION, OTHER = "eu-west", "us-east"
DYNAMO_SINK = (REGION, "dynamodb")
LOCAL_DYNAMO = f"dynamodb-{REGION}"
SINK_SHARDS = 2


@pytest.fixture(scope="module")
def pipeline(stack: Stack) -> Iterator[Stack]:
    pipeline_job.up(stack.settings, consumers=2, sink_shards=SINK_SHARDS)
    yield stack
    pipeline_job.down(stack.settings)


def _wait_for_sinks(
    stack: Stack, done: Callable[[dict[str, Any]], bool], timeout_s: float = 180
) -> list[dict[str, Any]]:
    """Poll the eu-west DynamoDB sink shards' statuses (by shard) until ``done`` holds for each;
    a status call that fails (an actor being restarted by Ray) is tried again."""
    deadline = time.monotonic() + timeout_s
    sinks: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            status = pipeline_job.status(stack.settings)
            assert status is not None, "the pipeline is running"
            sinks = sorted(
                (s for s in status["sinks"] if (s["region"], s["store"]) == DYNAMO_SINK),
                key=lambda s: int(s["shard"]),
            )
            if len(sinks) == SINK_SHARDS and all(done(s) for s in sinks):
                return sinks
        time.sleep(1)
    raise AssertionError(f"the eu-west DynamoDB sinks never got there: {sinks}")


def _keys(tenant: str, users: list[str]) -> list[str]:
    view = CATALOG.view("user_spend")
    max_id = CATALOG.entity(view.entity).max_id_bytes
    return [
        OnlineKey(tenant, view.name, view.version, u).encode(max_id_bytes=max_id) for u in users
    ]


def _reads_with_local_redis_down(
    stack: Stack, runner: asyncio.Runner, chain: FallbackChain, keys: list[str], until: str
) -> list[dict[str, str]]:
    """Reads through the chain while eu-west's Redis hangs, until the local DynamoDB step's
    outcome is ``until`` (at most 5: under load a step may miss its budget and fall further)."""
    reads = []
    with faults.stopped(stack.service(f"redis-{REGION}")):
        for _ in range(5):
            result = runner.run(chain.read(keys, Deadline(20.0, time.monotonic)))
            reads.append(dict(result.tried) | {"answered": result.store})
            if reads[-1].get(LOCAL_DYNAMO) == until:
                break
    return reads


def _put_back_some_tiles(stack: Stack, keys: list[str]) -> int:
    """Copy a few keys' items from us-east's table into eu-west's: a partial table, as left by
    sink batches that landed after the restart and before the sink noticed the loss."""
    other = stack.settings.topology.get(OTHER)
    region = stack.settings.topology.get(REGION)
    source, target = dynamodb_client(other), dynamodb_client(region)
    copied = 0
    for key in keys:
        items = source.query(
            TableName=other.dynamodb_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": key}},
        )["Items"]
        for item in items:
            target.put_item(TableName=region.dynamodb_table, Item=item)
            copied += 1
    return copied


def _marker(stack: Stack) -> dict[str, Any] | None:
    region = stack.settings.topology.get(REGION)
    reply = dynamodb_client(region).get_item(
        TableName=region.dynamodb_table,
        Key={"pk": {"S": MARKER_PK}, "sk": {"S": MARKER_SK}},
        ConsistentRead=True,
    )
    item: dict[str, Any] | None = reply.get("Item")
    return item


def test_a_dynamodb_endpoint_back_empty_is_never_served_partial_and_is_rehydrated_to_the_oracle(
    pipeline: Stack,
) -> None:
    bootstrap = pipeline.settings.kafka.bootstrap
    _produce(bootstrap, 1_000, seed=47, start_seq=70_000)
    accepted = verify.accepted_in_topic(bootstrap)  # earlier tests' events count in the windows
    users = sorted({e["user_id"] for e in accepted})[:20]
    keys = _keys(pipeline.settings.tenant, users)
    targets = [DYNAMO_SINK, (OTHER, "dynamodb")]
    problems = verify.wait_for_oracle(
        pipeline.settings, pipeline.secrets, accepted, timeout_s=240, targets=targets
    )
    assert not problems, problems[:5]
    before = _wait_for_sinks(pipeline, lambda s: s["store_state"] == "ready")
    # Each shard applies its own half of the changelog partitions.
    assert [s["assigned_partitions"] for s in before] == [4, 4], before
    moto = pipeline.service(LOCAL_DYNAMO)

    with asyncio.Runner() as runner:
        for sink in before:  # hold the sinks: nothing rehydrates meanwhile
            os.kill(sink["pid"], signal.SIGSTOP)
        try:
            faults.kill(moto)
            faults.restart(moto)  # the stack recreates the table: empty, without a marker
            assert _marker(pipeline) is None
            assert _put_back_some_tiles(pipeline, keys[:5]) > 0
            chain = region_chain(pipeline, REGION)
            reads = _reads_with_local_redis_down(pipeline, runner, chain, keys, "StoreNotReady")
        finally:
            for sink in before:
                os.kill(sink["pid"], signal.SIGCONT)
        # The partial table answered, but said it is not complete: it never served.
        assert reads[-1][LOCAL_DYNAMO] == "StoreNotReady", reads
        assert all(r["answered"] != LOCAL_DYNAMO for r in reads), reads

        earlier = {s["shard"]: s for s in before}
        sinks = _wait_for_sinks(
            pipeline,
            lambda s: (
                s["store_state"] == "ready"
                and (
                    s["pid"] != earlier[s["shard"]]["pid"]
                    or s["rehydrations"] > earlier[s["shard"]]["rehydrations"]
                )
            ),
        )
        # Rehydrated from the changelog alone: every value equals the oracle again...
        problems = verify.mismatches(pipeline.settings, pipeline.secrets, accepted, [DYNAMO_SINK])
        assert not problems, f"{len(problems)} mismatches, e.g. {problems[:5]}"
        marker = _marker(pipeline)
        assert marker is not None and marker["state"]["S"] == "ready", (marker, sinks)
        assert "pending" not in marker, "a finished rehydration waits for no shard"
        # ...and with its Redis down the region reads its own DynamoDB again.
        reads = _reads_with_local_redis_down(pipeline, runner, chain, keys, "ok")
        assert reads[-1]["answered"] == LOCAL_DYNAMO, reads
