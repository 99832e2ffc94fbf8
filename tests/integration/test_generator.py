"""The generator against a real broker: what the ledger says was written is what is read back."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.events.ledger import read_ledger
from cluster.events.runner import run_generator
from cluster.events.synth import MALFORMED_KINDS, EventKind, GeneratorConfig

pytestmark = pytest.mark.integration

N = 2_000
SCHEMA: dict[str, type] = {
    "event_id": str,
    "seq": int,
    "event_type": str,
    "user_id": str,
    "merchant_id": str,
    "amount": float,
    "currency": str,
    "event_time_ms": int,
}


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every record of every partition, from the earliest offset up to the end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))
        ]
        assert len(partitions) == 8
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, "timed out reading the topic back"
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def well_typed(obj: dict[str, Any]) -> bool:
    for name, kind in SCHEMA.items():
        value = obj.get(name)
        ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
        if value is None or isinstance(value, bool) or not ok:
            return False
    return True


def test_produced_events_are_read_back_as_the_ledger_says(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory(partitions=8)
    config = GeneratorConfig(
        run_id="itest",
        seed=11,
        max_events=N,
        rate_per_s=4_000.0,
        out_of_order_share=0.05,
        late_share=0.02,
        late_warmup_events=100,
        malformed_share=0.07,
    )
    ledger_path = tmp_path / "ledger.jsonl"
    report = run_generator(config, kafka_bootstrap, topic, ledger_path)
    assert (report.sent, report.acked, report.failed) == (N, N, 0)

    ledger = read_ledger(ledger_path)
    records = read_topic(kafka_bootstrap, topic)
    assert len(records) == len(ledger) == N
    assert sorted(r.seq for r in ledger) == list(range(N))

    # The ledger's partition and offset point at exactly the records read.
    read_at = {(r.partition, r.offset): r for r in records}
    assert set(read_at) == {(e.partition, e.offset) for e in ledger}
    kinds = Counter(e.kind for e in ledger)
    assert dict(kinds) == report.counts_by_kind
    for entry in ledger:
        record = read_at[(entry.partition, entry.offset)]
        assert record.key == entry.user_id.encode("utf-8")
        if entry.kind is EventKind.BAD_JSON:
            with pytest.raises(ValueError):
                json.loads(record.value)
            continue
        obj = json.loads(record.value)  # accepts the NaN / Infinity literals of non_finite
        if isinstance(obj.get("user_id"), str):
            assert record.key == obj["user_id"].encode("utf-8")
        if isinstance(obj.get("event_id"), str):
            assert obj["event_id"] == entry.event_id
        if entry.ingestible:
            assert well_typed(obj) and obj["event_type"] == "card_tx"
            assert math.isfinite(obj["amount"]) and obj["amount"] > 0
            assert obj["event_time_ms"] == entry.event_time_ms and obj["seq"] == entry.seq
            assert len(record.value) <= 4096
        elif entry.kind is EventKind.OVERSIZED:
            assert len(record.value) > 4096

    # Malformed and late events are present where asked, every malformed kind among them.
    assert set(MALFORMED_KINDS) <= set(kinds)
    assert kinds[EventKind.LATE] > 0 and kinds[EventKind.OUT_OF_ORDER] > 0

    # One key, one partition; within a partition the offsets follow the send order.
    partition_of: dict[str, int] = {}
    last_seq: dict[int, int] = {}
    for entry in sorted(ledger, key=lambda e: (e.partition, e.offset)):
        assert partition_of.setdefault(entry.user_id, entry.partition) == entry.partition
        assert entry.seq > last_seq.get(entry.partition, -1)
        last_seq[entry.partition] = entry.seq
