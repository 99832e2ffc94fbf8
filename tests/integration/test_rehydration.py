"""A region's Redis that comes back empty is rehydrated from the changelog; serving never reads it
as complete in between.

The pipeline runs as a real Ray job on the session stack. The eu-west Redis is emptied with
FLUSHALL (what a replaced node or a lost disk looks like) and its writes are then held with
``CLIENT PAUSE ... WRITE``, so the "empty" window lasts as long as the test looks, whatever the
machine's speed. Values are judged against the oracle (chaos/oracle.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chaos import verify
from cluster import pipeline as pipeline_job
from cluster.stack import Stack
from features.demo import card_transactions_catalog
from features.keys import OnlineKey
from regions.resilience import Deadline
from tests.integration.chains import region_chain
from tests.integration.test_pipeline import _produce

pytestmark = pytest.mark.integration
CATALOG = card_transactions_catalog()
REGION = "eu-west"
REDIS_SINK = (REGION, "redis")


@pytest.fixture(scope="module")
def pipeline(stack: Stack) -> Iterator[Stack]:
    pipeline_job.up(stack.settings, consumers=2)
    yield stack
    pipeline_job.down(stack.settings)


def _sink_status(stack: Stack) -> dict[str, Any]:
    status = pipeline_job.status(stack.settings)
    assert status is not None, "the pipeline is running"
    return next(s for s in status["sinks"] if (s["region"], s["store"]) == REDIS_SINK)


def _wait_for_sink(stack: Stack, *, rehydrations: int, timeout_s: float = 180) -> dict[str, Any]:
    """Poll until the eu-west Redis sink reports ``ready`` after ``rehydrations`` replays."""
    deadline = time.monotonic() + timeout_s
    sink = _sink_status(stack)
    while time.monotonic() < deadline:
        if sink["store_state"] == "ready" and sink["rehydrations"] >= rehydrations:
            return sink
        time.sleep(1)
        sink = _sink_status(stack)
    raise AssertionError(f"the eu-west Redis sink never became ready: {sink}")


def _serving_read(stack: Stack, users: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """One read through eu-west's real fallback chain: (store that answered, steps tried)."""
    view = CATALOG.view("user_spend")
    max_id = CATALOG.entity(view.entity).max_id_bytes
    keys = [
        OnlineKey(stack.settings.tenant, view.name, view.version, u).encode(max_id_bytes=max_id)
        for u in users
    ]

    async def read() -> tuple[str, list[tuple[str, str]]]:
        chain = region_chain(stack, REGION)  # inside the loop: its Redis client is bound to it
        result = await chain.read(keys, Deadline(20.0, time.monotonic))
        return result.store, result.tried

    return asyncio.run(read())


def test_an_emptied_redis_is_rehydrated_to_the_oracle_and_serving_reads_dynamodb_meanwhile(
    pipeline: Stack,
) -> None:
    bootstrap = pipeline.settings.kafka.bootstrap
    _produce(bootstrap, 1_500, seed=31, start_seq=50_000)
    accepted = verify.accepted_in_topic(bootstrap)  # earlier tests' events count in the windows
    users = sorted({e["user_id"] for e in accepted})[:20]
    assert not verify.wait_for_oracle(pipeline.settings, pipeline.secrets, accepted, timeout_s=240)
    before = _wait_for_sink(pipeline, rehydrations=0)
    assert _serving_read(pipeline, users)[0] == "redis-eu-west"

    admin = pipeline.service("redis-eu-west").admin_client()
    try:
        admin.flushall()
        admin.execute_command("CLIENT", "PAUSE", "120000", "WRITE")  # hold the empty state
        assert admin.dbsize() == 0
        # The empty Redis answers, but says it is not complete: it never serves, and the region's
        # DynamoDB does (a read it does not answer in time under load falls further; try again).
        served = []
        for _ in range(5):
            store, tried = _serving_read(pipeline, users)
            assert tried[0] == ("redis-eu-west", "StoreNotReady")
            served.append(store)
            if store == "dynamodb-eu-west":
                break
        assert served[-1] == "dynamodb-eu-west", served
        assert not verify.mismatches(
            pipeline.settings, pipeline.secrets, accepted, [(REGION, "dynamodb")]
        )
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()

    sink = _wait_for_sink(pipeline, rehydrations=before["rehydrations"] + 1)
    assert sink["rehydrations"] == before["rehydrations"] + 1
    # Rehydrated from the changelog alone: every value equals the oracle again...
    problems = verify.mismatches(pipeline.settings, pipeline.secrets, accepted, [REDIS_SINK])
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:5]}"
    # ...and the region is back on local reads.
    assert _serving_read(pipeline, users) == ("redis-eu-west", [("redis-eu-west", "ok")])
