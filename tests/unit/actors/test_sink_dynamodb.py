"""A region's DynamoDB that comes back empty under a running sink: the unchanged ``SinkWorker``
with the real ``DynamoTileWriter``, on moto's DynamoDB in this process. Serving never reads the
partial table as complete, and the sink replays the changelog into it and marks it ready."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from actors.changelog import ChangelogRecord, encode
from actors.sink import SinkWorker
from regions.aws import LOCAL_CREDENTIALS
from regions.config import default_topology
from regions.dynamodb_reader import DynamoTileReader
from regions.dynamodb_store import (
    STORE_READY,
    DynamoTileWriter,
    create_online_table,
)
from regions.exceptions import StoreNotReady
from regions.tiles import TileWrite
from serve_apps.fallback import DynamoStore
from tests.doubles.kafka import FakeConsumer

TOPIC = "fl.tiles.changelog"
REGION = default_topology().get("eu-west")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def moto() -> Iterator[tuple[Any, str]]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client(
            "dynamodb",
            region_name="eu-west-1",
            **LOCAL_CREDENTIALS,
        )
        table = f"online_{uuid.uuid4().hex[:8]}"
        create_online_table(client, table)
        yield client, table


def _append(consumer: FakeConsumer, start: int, n: int) -> None:
    """Records ``start .. start + n``; record i rewrites tile ``i % 9`` with version ``i + 1``,
    each tile on one partition (as in the pipeline: a field's versions are one partition's)."""
    for i in range(start, start + n):
        write = TileWrite(f"fl:t:v:v1:e{i % 9}", "f", b"%d" % i, i + 1, 3_600_000)
        key, value = encode(ChangelogRecord(write, event_time_ms=1_000 + i))
        consumer.append(TOPIC, (i % 9) % 2, key, value)


def _latest(n: int) -> dict[str, dict[str, bytes]]:
    """What records ``0 .. n`` leave: each tile's last write."""
    return {f"fl:t:v:v1:e{i % 9}": {"f": b"%d" % i} for i in range(n)}


def _serve(client: Any, table: str, keys: list[str]) -> dict[str, dict[str, bytes]]:
    reader = DynamoTileReader(REGION, table, lambda _: client, consistent=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        store = DynamoStore(reader, "dynamodb-eu-west", Clock(), pool)
        return asyncio.run(store.get_all(keys, 5.0))


def _steps(worker: SinkWorker, clock: Clock, n: int, *, advance: float) -> None:
    for _ in range(n):
        clock.t += advance
        worker.step()


def test_a_table_back_empty_is_never_served_partial_and_is_rehydrated(
    moto: tuple[Any, str],
) -> None:
    client, table = moto
    keys = [f"fl:t:v:v1:e{i}" for i in range(9)]
    consumer, clock = FakeConsumer(), Clock()
    _append(consumer, 0, 60)
    writer = DynamoTileWriter(REGION, table, lambda _: client, seeding=False)
    worker = SinkWorker(consumer, writer, max_records=25, monotonic=clock)
    _steps(worker, clock, 10, advance=1.0)  # a new table: rehydrated from the start, then ready
    assert worker.stats.store_state == "ready" and worker.stats.rehydrations == 1
    assert _serve(client, table, keys) == _latest(60)

    client.delete_table(TableName=table)  # the endpoint restarted: the stack recreates the table
    create_online_table(client, table)
    _append(consumer, 60, 4)  # tiles e6, e7, e8, e0 change
    _steps(worker, clock, 1, advance=0.0)  # before the next check: the batch lands, unguarded
    assert sum(1 for _ in client.scan(TableName=table)["Items"]) == 4  # the partial table
    with pytest.raises(StoreNotReady):
        _serve(client, table, keys)

    _steps(worker, clock, 10, advance=1.0)
    assert worker.stats.store_state == "ready" and worker.stats.rehydrations == 2
    assert writer.store_state() == STORE_READY
    assert _serve(client, table, keys) == _latest(64)
