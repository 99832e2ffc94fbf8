"""The stream consumer's commit protocol on test doubles: one transaction holds a commit's tiles,
dead letters and source offsets (with the watermark), nothing is committed before the interval,
close commits the rest, a failed commit stops the loop instead of being skipped, and a commit stuck
in the Kafka client past its deadline is reported overdue."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from actors.config import CHANGELOG_TOPIC, DLQ_TOPIC, OFFLINE_TOPIC
from actors.consumer import (
    TRANSACTION_TIMEOUT_MS,
    CommitStalled,
    ConsumerConfig,
    StreamConsumer,
)
from actors.offline_feed import decode
from features.demo import SOURCE, TOPIC, card_transactions_catalog
from features.watermark import WatermarkState
from tests.doubles.kafka import FakeConsumer, FakeProducer

CATALOG = card_transactions_catalog()
T0 = 1_764_000_000_000
CHANGELOG, DLQ, OFFLINE = CHANGELOG_TOPIC, DLQ_TOPIC, OFFLINE_TOPIC


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _event(seq: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"c-{seq}",
            "seq": seq,
            "event_type": "card_tx",
            "user_id": f"u_{seq % 3:06d}",
            "merchant_id": "m_00001",
            "amount": 10.0 + seq,
            "currency": "USD",
            "event_time_ms": T0 + seq * 1_000,
        }
    )


def _started(
    kafka: FakeConsumer, producer: FakeProducer, clock: Clock, **settings: Any
) -> StreamConsumer:
    # A fixed 250 ms unless a test asks for the adaptive range (features.commit_pacing).
    fixed = {"commit_interval_ms": 250, "commit_interval_min_ms": 250} | settings
    config = ConsumerConfig(bootstrap="fake:9092", source=SOURCE, **fixed)
    consumer = StreamConsumer(
        config,
        CATALOG,
        [0],
        now_ms=lambda: T0 + 60_000,
        monotonic=clock,
        clients=lambda _config, _transactional_id: (producer, kafka),
    )
    consumer.start()
    return consumer


def _append(kafka: FakeConsumer, seqs: range, *, malformed: bool = False) -> None:
    for seq in seqs:
        kafka.append(TOPIC, 0, b"u", b"{oops" if malformed else _event(seq))


def test_one_transaction_holds_the_tiles_the_dead_letters_and_the_offsets() -> None:
    kafka, producer, clock = FakeConsumer(), FakeProducer(), Clock()
    consumer = _started(kafka, producer, clock)
    _append(kafka, range(10))
    _append(kafka, range(10, 12), malformed=True)
    clock.t += 1  # past the commit interval
    assert consumer.step(poll_timeout_ms=0) == 12
    (txn,) = producer.transactions
    topics = [topic for topic, *_ in txn.records]
    assert topics.count(DLQ) == 2 and topics.count(CHANGELOG) == consumer.stats.changelog_records
    assert all(partition == 0 for topic, partition, *_ in txn.records if topic == CHANGELOG)
    offset, metadata = txn.offsets[0]
    assert offset == 12  # the next source offset to read after a restart
    # The watermark a restart restores: the newest valid event's time (seq 9), not a bad one's.
    restored = WatermarkState.from_dict(orjson.loads(metadata))
    assert restored.max_event_time_ms == T0 + 9_000
    assert consumer.stats.commits == 1 and len(consumer.stats.commit_ms) == 1
    assert {len(samples) for samples in consumer.stats.commit_phase_ms.values()} == {1}


def test_the_accepted_events_are_handed_on_once_in_the_transaction_that_folds_them() -> None:
    kafka, producer, clock = FakeConsumer(), FakeProducer(), Clock()
    consumer = _started(kafka, producer, clock, offline_topic=OFFLINE)
    _append(kafka, range(3))
    _append(kafka, range(3, 4), malformed=True)
    _append(kafka, range(4, 6))
    clock.t += 1
    consumer.step(poll_timeout_ms=0)
    _append(kafka, range(6, 8))
    clock.t += 1
    consumer.step(poll_timeout_ms=0)
    handed = [
        [(r["seq"], r["_partition"], r["_offset"]) for r in decode(value).to_pylist()]
        for t in producer.transactions
        for topic, partition, _key, value in t.records
        if topic == OFFLINE and partition == 0
    ]
    assert handed == [
        [(0, 0, 0), (1, 0, 1), (2, 0, 2), (4, 0, 4), (5, 0, 5)],
        [(6, 0, 6), (7, 0, 7)],
    ]


def test_without_an_offline_topic_nothing_is_handed_on() -> None:
    kafka, producer, clock = FakeConsumer(), FakeProducer(), Clock()
    consumer = _started(kafka, producer, clock)
    _append(kafka, range(3))
    clock.t += 1
    consumer.step(poll_timeout_ms=0)
    (txn,) = producer.transactions
    assert {topic for topic, *_ in txn.records} == {CHANGELOG}


def test_nothing_is_committed_within_the_interval_and_close_commits_the_rest() -> None:
    kafka, producer, clock = FakeConsumer(), FakeProducer(), Clock()
    consumer = _started(kafka, producer, clock)
    _append(kafka, range(4))
    clock.t += 1
    consumer.step(poll_timeout_ms=0)
    _append(kafka, range(4, 6))
    clock.t += 0.1  # within the 250 ms interval: folded, not committed
    consumer.step(poll_timeout_ms=0)
    assert [t.offsets[0][0] for t in producer.transactions] == [4]
    consumer.close()
    assert [t.offsets[0][0] for t in producer.transactions] == [4, 6]


def test_the_interval_doubles_while_polls_come_back_full_and_shortens_on_a_trickle() -> None:
    """A full poll (500 here, FakeConsumer's batch) means records were waiting: each commit then
    doubles the interval up to the maximum; a commit whose window polled a trickle (< 100 events)
    brings it down to the minimum, and events are then committed 100 ms apart."""
    kafka, producer, clock = FakeConsumer(), FakeProducer(), Clock()
    consumer = _started(kafka, producer, clock, max_poll_records=500, commit_interval_min_ms=100)
    _append(kafka, range(3_000))
    intervals = []
    for _ in range(6):  # 500 records a step, 300 ms apart
        clock.t += 0.3
        consumer.step(poll_timeout_ms=0)
        intervals.append(consumer.stats.commit_interval_ms)
    assert intervals == [500, 500, 1_000, 1_000, 1_000, 1_000]
    assert consumer.stats.commits == 2
    clock.t += 1.0
    consumer.step(poll_timeout_ms=0)  # the backlog's last full polls are committed
    assert consumer.stats.commits == 3 and consumer.stats.commit_interval_ms == 1_000
    _append(kafka, range(3_000, 3_003))
    clock.t += 1.0
    consumer.step(poll_timeout_ms=0)  # a trickle: 100 ms from now on
    assert consumer.stats.commits == 4 and consumer.stats.commit_interval_ms == 100
    _append(kafka, range(3_003, 3_005))
    clock.t += 0.05
    consumer.step(poll_timeout_ms=0)
    assert consumer.stats.commits == 4, "within 100 ms"
    clock.t += 0.06
    consumer.step(poll_timeout_ms=0)
    assert consumer.stats.commits == 5
    assert producer.transactions[-1].offsets[0][0] == 3_005


def test_a_failed_commit_raises_from_step() -> None:
    """The actor's loop dies on it and Ray restarts the actor from the last committed state."""
    kafka, producer, clock = FakeConsumer(), FakeProducer(), Clock()
    consumer = _started(kafka, producer, clock)
    producer.fail_commit = RuntimeError("ProducerFencedError")
    _append(kafka, range(3))
    clock.t += 1
    with pytest.raises(RuntimeError, match="ProducerFencedError"):
        consumer.step(poll_timeout_ms=0)
    assert producer.transactions == [] and consumer.stats.commits == 0


class _StuckOffsetsProducer(FakeProducer):
    """Step 4 hangs the way kafka-python's does when its sender dropped the request (a broker
    restart): the call never returns. Here it lets the clock run past the deadline and records
    what a watchdog reading the consumer from another thread would see meanwhile."""

    def __init__(self, clock: Clock, running_for_s: float) -> None:
        super().__init__()
        self.clock, self.running_for_s = clock, running_for_s
        self.consumer: StreamConsumer | None = None
        self.seen: tuple[float | None, CommitStalled | None] | None = None

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], group: Any) -> None:
        super().send_offsets_to_transaction(offsets, group)
        self.clock.t += self.running_for_s
        assert self.consumer is not None
        self.seen = (self.consumer.commit_running_s(), self.consumer.overdue_commit())


def _stuck(running_for_s: float) -> tuple[StreamConsumer, _StuckOffsetsProducer]:
    kafka, clock = FakeConsumer(), Clock()
    producer = _StuckOffsetsProducer(clock, running_for_s)
    producer.consumer = consumer = _started(kafka, producer, clock)
    _append(kafka, range(3))
    clock.t += 1
    return consumer, producer


def test_a_commit_stuck_past_its_deadline_is_overdue_naming_its_step() -> None:
    """The actor's watchdog exits the process on it: the stuck call cannot be interrupted."""
    consumer, producer = _stuck(running_for_s=TRANSACTION_TIMEOUT_MS / 1000 + 1)
    consumer.step(poll_timeout_ms=0)
    assert producer.seen is not None
    running_s, stalled = producer.seen
    assert running_s is not None and running_s > TRANSACTION_TIMEOUT_MS / 1000
    assert isinstance(stalled, CommitStalled)
    assert stalled.step == "offsets" and stalled.transactional_id == consumer.transactional_id
    assert consumer.commit_running_s() is None and consumer.overdue_commit() is None


def test_a_slow_commit_within_its_deadline_is_not_overdue() -> None:
    consumer, producer = _stuck(running_for_s=TRANSACTION_TIMEOUT_MS / 1000 - 1)
    consumer.step(poll_timeout_ms=0)
    assert producer.seen is not None
    running_s, stalled = producer.seen
    assert running_s is not None and stalled is None
    assert consumer.stats.commits == 1


def test_no_commit_is_running_between_commits_or_after_a_failed_one() -> None:
    kafka, producer, clock = FakeConsumer(), FakeProducer(), Clock()
    consumer = _started(kafka, producer, clock)
    assert consumer.commit_running_s() is None
    clock.t += 3600  # idle for an hour: nothing is overdue
    assert consumer.overdue_commit() is None
    producer.fail_commit = RuntimeError("ProducerFencedError")
    _append(kafka, range(3))
    with pytest.raises(RuntimeError):
        consumer.step(poll_timeout_ms=0)
    clock.t += 3600
    assert consumer.commit_running_s() is None and consumer.overdue_commit() is None
