"""The hand-off of accepted events to the offline writer (``actors.offline_feed``): a batch too
large for one Kafka record is split in partition order with nothing lost, and a value Arrow
cannot hold in its column is stored as documented instead of failing the consumer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from actors.offline_feed import MAX_RECORD_BYTES, FeedEncoder, decode, feed_schema
from actors.processor import RawRecord
from actors.records import AcceptedEvents
from features.demo import card_transactions_catalog

SOURCE = card_transactions_catalog().source("card_tx")
FIELDS = tuple(SOURCE.fields)


def _events(n: int, pad: int = 0) -> list[dict[str, object]]:
    return [
        {
            "event_id": f"e{i}" + "x" * pad,
            "seq": i,
            "event_type": "card_tx",
            "user_id": f"u{i % 7}",
            "merchant_id": "m1",
            "amount": 0.5 + i,
            "currency": "EUR",
            "event_time_ms": 1_000 + i,
        }
        for i in range(n)
    ]


def _records(n: int) -> list[RawRecord]:
    return [RawRecord(100 + i, None, b"", 7_000 + i) for i in range(n)]


def test_a_large_batch_is_split_under_the_record_limit_in_partition_order() -> None:
    events = _events(3_000, pad=300)
    accepted = AcceptedEvents.of_events(range(3_000), events, FIELDS)
    values = FeedEncoder(SOURCE).encode(5, _records(3_000), accepted)
    assert len(values) > 1
    assert all(len(v) <= MAX_RECORD_BYTES for v in values)
    rows = [row for v in values for row in decode(v).to_pylist()]
    assert [r["seq"] for r in rows] == list(range(3_000))
    assert {r["_partition"] for r in rows} == {5}
    assert [r["_offset"] for r in rows] == list(range(100, 3_100))
    assert [r["_kafka_timestamp_ms"] for r in rows] == list(range(7_000, 10_000))
    assert decode(values[0]).schema == feed_schema(SOURCE)


def test_only_the_kept_rows_are_handed_on_and_none_is_nothing() -> None:
    events = _events(4)
    keep = np.array([True, False, True, False])
    accepted = AcceptedEvents(np.arange(4), {f: [e[f] for e in events] for f in FIELDS}, keep)
    (value,) = FeedEncoder(SOURCE).encode(0, _records(4), accepted)
    assert [r["seq"] for r in decode(value).to_pylist()] == [0, 2]
    nothing = AcceptedEvents(accepted.positions, accepted.columns, np.zeros(4, np.bool_))
    assert FeedEncoder(SOURCE).encode(0, _records(4), nothing) == []


def test_values_arrow_cannot_hold_as_they_are_are_stored_as_documented() -> None:
    events = _events(3)
    events[0]["seq"] = 2**64 - 1  # valid JSON, no int64
    events[1]["amount"] = 2**53 + 1  # an int amount beyond a double's exact integers
    accepted = AcceptedEvents.of_events(range(3), events, FIELDS)
    (value,) = FeedEncoder(SOURCE).encode(0, _records(3), accepted)
    rows = decode(value).to_pylist()
    assert [r["seq"] for r in rows] == [None, 1, 2]
    assert rows[1]["amount"] == float(2**53 + 1)
    assert decode(value).column("amount").type == pa.float64()
