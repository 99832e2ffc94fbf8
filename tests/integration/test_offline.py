"""The offline path against the real Kafka and the stack's Iceberg catalog (SQLite): raw events
through a real stream consumer, which hands each batch's accepted events on in its commit
transaction, to the offline writer; across a consumer whose commit failed after it produced, and
a writer that died with rows buffered."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import KafkaProducer

from actors import changelog
from actors.consumer import ConsumerConfig, kafka_clients
from actors.kafka_io import topic_partitions
from actors.offline import OfflineWriter
from actors.offline_actor import build_writer
from chaos.oracle import LedgerEntry, accepted_events
from cluster.services.offline import iceberg_catalog
from cluster.stack import Stack
from features.demo import card_transactions_catalog
from regions.tiles import TileWrite
from tests.integration.offline_path import OfflinePath, end_offsets

pytestmark = pytest.mark.integration
CATALOG = card_transactions_catalog()


def _events(n: int, start: int) -> list[bytes]:
    now = int(time.time() * 1000)
    out = []
    for i in range(start, start + n):
        event = {
            "event_id": f"e{i}",
            "seq": i,
            "event_type": "card_tx",
            "user_id": f"u{i % 7}",
            "merchant_id": f"m{i % 3}",
            "amount": 1.0 + i,
            "currency": "EUR",
            "event_time_ms": now - (600_000 if i % 17 == 5 else 0) + i,
        }
        if i % 13 == 3:
            event["amount"] = "oops"
        out.append(b"{not json" if i % 19 == 7 else json.dumps(event).encode())
    return out


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> list[LedgerEntry]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    futures = [
        (producer.send(topic, key=str(i % 5).encode(), value=v), v) for i, v in enumerate(values)
    ]
    producer.flush()
    ledger = [
        LedgerEntry(m.partition, m.offset, v, m.timestamp) for f, v in futures for m in [f.get(30)]
    ]
    producer.close()
    return ledger


def _produce_tiles(bootstrap: str, topic: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(n):
        write = TileWrite(f"k{i}", "sum", None if i % 10 == 9 else b"\x02", i + 1, 60_000)
        key, value = changelog.encode(changelog.ChangelogRecord(write, 1_000 + i))
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


class _CommitFails:
    """The real transactional producer, except that the commit fails once everything was
    produced and flushed: the broker holds an open transaction's records (a crash at step 5)."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def commit_transaction(self) -> None:
        self._producer.flush()
        raise RuntimeError("the consumer dies before its commit")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


def _failing_commit(config: ConsumerConfig, transactional_id: str) -> tuple[Any, Any]:
    producer, consumer = kafka_clients(config, transactional_id)
    return _CommitFails(producer), consumer


def _run(
    writer: OfflineWriter, topics: list[str], until: Callable[[], bool], *, crash: bool = False
) -> None:
    """Steps until ``until()``; then flushes (a clean stop) or just walks away (a crash)."""
    writer.start(topic_partitions(writer.consumer, topics))
    deadline = time.monotonic() + 60
    while not until() and time.monotonic() < deadline:
        writer.step(timeout_ms=100)
    if not crash:
        for topic in topics:
            writer.flush(topic)
    writer.consumer.close()


def _rows(stack: Stack, namespace: str, table: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (
        iceberg_catalog(stack.settings).load_table((namespace, table)).scan().to_arrow().to_pylist()
    )
    return rows


def test_raw_events_and_tiles_land_exactly_once_across_a_restart(
    stack: Stack, kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    source_topic, tile_topic = topic_factory(partitions=3), topic_factory(1, compacted=True)
    namespace = f"t_{uuid.uuid4().hex[:8]}"
    path = OfflinePath(
        kafka_bootstrap,
        topic_factory,
        source_topic,
        changelog_topic=tile_topic,
        batch_records=50,
        batch_interval_ms=200,
        iceberg_catalog_uri=stack.settings.iceberg_catalog_uri,
        iceberg_warehouse=stack.settings.iceberg_warehouse,
        namespace=namespace,
    )
    config = path.writer_config
    offline_topic = config.offline_topic
    topics = [offline_topic, tile_topic]
    ledger = _produce(kafka_bootstrap, source_topic, _events(300, 0))
    _produce_tiles(kafka_bootstrap, tile_topic, 40)
    path.consume()

    # First writer: stops ("dies") after some batches are committed, with rows still buffered and
    # no Kafka offsets committed anywhere.
    first = build_writer(config, CATALOG)
    _run(first, topics, until=lambda: first.rows_written[offline_topic] >= 100, crash=True)

    # More events; a consumer produces their hand-off and dies in its commit, so the offline
    # topic holds records of a transaction that never commits (its successor fences it).
    ledger += _produce(kafka_bootstrap, source_topic, _events(200, 300))
    with pytest.raises(RuntimeError, match="dies before its commit"):
        path.consume(clients=_failing_commit)
    path.consume()

    second = build_writer(config, CATALOG)
    done = {offline_topic: _ends_committed(path), tile_topic: {0: 40}}
    _run(second, topics, until=lambda: second.positions() == done)

    raw = _rows(stack, namespace, "raw_events")
    counts = Counter((r["_partition"], r["_offset"]) for r in raw)
    assert max(counts.values()) == 1, "a range was appended twice"
    want = {(e["_partition"], e["_offset"]): e for e in accepted_events(ledger, CATALOG, "card_tx")}
    assert set(counts) == set(want)
    stamps = {(e.partition, e.offset): e.timestamp_ms for e in ledger}
    for row in raw:
        where = (row["_partition"], row["_offset"])
        event = want[where]
        assert {k: row[k] for k in CATALOG.source("card_tx").fields} == {
            k: event[k] for k in CATALOG.source("card_tx").fields
        }, where
        assert row["_event_time"] == datetime.fromtimestamp(event["event_time_ms"] / 1000, UTC)
        assert row["_kafka_timestamp_ms"] == stamps[where]

    tiles = _rows(stack, namespace, "tile_snapshots")
    assert sorted(t["_offset"] for t in tiles) == list(range(40))
    assert sum(t["deleted"] for t in tiles) == 4

    # A third start over a fully written range appends nothing.
    table = iceberg_catalog(stack.settings).load_table((namespace, "raw_events"))
    before = table.current_snapshot()
    third = build_writer(config, CATALOG)
    stop_at = time.monotonic() + 2
    _run(third, topics, until=lambda: time.monotonic() > stop_at)
    assert third.rows_written[offline_topic] == 0
    table.refresh()
    assert table.current_snapshot().snapshot_id == before.snapshot_id


def _ends_committed(path: OfflinePath) -> dict[int, int]:
    return end_offsets(path.consumer_config.bootstrap, path.writer_config.offline_topic)
