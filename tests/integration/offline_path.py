"""Raw events into Iceberg the way the pipeline puts them there, without Ray: a real stream
consumer (``actors.consumer``) reads a source topic and hands each batch's accepted events to an
offline topic in its commit transaction; the production offline writer appends them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from actors.consumer import ConsumerConfig, StreamConsumer, kafka_clients
from actors.kafka_io import topic_partitions
from actors.offline import OfflineWriterConfig
from actors.offline_actor import build_writer
from cluster.settings import StackSettings
from features.catalog import Catalog
from features.demo import SOURCE, card_transactions_catalog

# Bounds on loops that wait for the broker: generous, never asserted as a latency.
DEADLINE_S = 120


def catalog_reading(topic: str) -> Catalog:
    """The demo catalog with its source on ``topic``."""
    dumped = card_transactions_catalog().model_dump(mode="json")
    for spec in dumped["sources"]:
        spec["topic"] = topic
    return Catalog.from_dict(dumped)


class OfflinePath:
    """One source topic's consumer group, changelog, dead-letter and offline topics, and the
    writer's config; ``ingest`` may be called again after more events were produced."""

    def __init__(
        self, bootstrap: str, topic_factory: Callable[..., str], source_topic: str, **writer: Any
    ) -> None:
        partitions = _partition_count(bootstrap, source_topic)
        self.catalog = catalog_reading(source_topic)
        self.partitions = list(range(partitions))
        self.consumer_config = ConsumerConfig(
            bootstrap=bootstrap,
            source=SOURCE,
            changelog_topic=topic_factory(partitions=partitions, compacted=True),
            dlq_topic=topic_factory(partitions=1),
            group_id=f"test-offline-{uuid.uuid4().hex[:8]}",
            offline_topic=topic_factory(partitions=partitions),
        )
        self.writer_config = OfflineWriterConfig(
            offline_topic=self.consumer_config.offline_topic or "",
            changelog_topic=writer.pop("changelog_topic", None) or topic_factory(1, True),
            bootstrap=bootstrap,
            **writer,
        )

    def consume(self, clients: Callable[[ConsumerConfig, str], Any] = kafka_clients) -> None:
        """A consumer reads every record of the source topic and commits (``clients``: the
        Kafka clients it uses, so that a test can break one)."""
        consumer = StreamConsumer(
            self.consumer_config, self.catalog, self.partitions, clients=clients
        )
        consumer.start()
        deadline = time.monotonic() + DEADLINE_S
        while any(consumer.refresh_lag().values()) or not consumer.stats.lag:
            assert time.monotonic() < deadline, "the consumer did not reach the topic's end"
            consumer.step()
        consumer.close()

    def write(self) -> None:
        """The production writer, run until it has committed the whole offline topic."""
        topic = self.writer_config.offline_topic
        ends = end_offsets(self.consumer_config.bootstrap, topic)
        writer = build_writer(self.writer_config, card_transactions_catalog())
        writer.start(topic_partitions(writer.consumer, [topic, self.writer_config.changelog_topic]))
        deadline = time.monotonic() + DEADLINE_S
        while any(writer.positions().get(topic, {}).get(p, 0) < end for p, end in ends.items()):
            assert time.monotonic() < deadline, "the offline writer did not catch up"
            writer.step(timeout_ms=100)
            writer.flush(topic)
        writer.consumer.close()

    def ingest(self) -> None:
        self.consume()
        self.write()


def _partition_count(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's last offset holding a record, plus one (a committed transaction's
    marker follows it, so a read_committed reader's position may stop short of the end)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        last: dict[int, int] = {}
        deadline = time.monotonic() + DEADLINE_S
        ends = consumer.end_offsets(tps)
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "timed out reading the offline topic"
            for tp, records in consumer.poll(timeout_ms=500).items():
                last[tp.partition] = records[-1].offset + 1
        return last
    finally:
        consumer.close()


def raw_rows_once_written(settings: StackSettings, expected: int) -> list[tuple[int, int]]:
    """The offline raw table's ``(_partition, _offset)`` rows, sorted, once it holds at least
    ``expected`` of them (or after ``DEADLINE_S``: the caller compares them with the oracle)."""
    from cluster.services.offline import NAMESPACE, iceberg_catalog

    deadline = time.monotonic() + DEADLINE_S
    rows: list[tuple[int, int]] = []
    while time.monotonic() < deadline:
        table = iceberg_catalog(settings).load_table(f"{NAMESPACE}.raw_events")
        data = table.scan(selected_fields=("_partition", "_offset")).to_arrow().to_pydict()
        rows = sorted(zip(data["_partition"], data["_offset"], strict=True))
        if len(rows) >= expected:
            break
        time.sleep(3)
    return rows
