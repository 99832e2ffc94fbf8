"""The sink commits only what the store acknowledged, backs off by pausing, and loses nothing."""

from __future__ import annotations

from collections.abc import Sequence

from actors.changelog import ChangelogRecord, encode
from actors.sink import SinkWorker
from features.errors import StoreTimeout
from regions.resilience import ExponentialBackoff
from regions.tiles import TileWrite
from tests.doubles.kafka import FakeConsumer, FakeTopicPartition

TOPIC = "fl.tiles.changelog"


class FlakyStore:
    """Fails while ``down`` is set; otherwise keeps the latest write per (key, field)."""

    def __init__(self) -> None:
        self.down = False
        self.data: dict[tuple[str, str], TileWrite] = {}
        self.calls = 0

    def apply(self, batch: Sequence[TileWrite]) -> None:
        self.calls += 1
        if self.down:
            raise StoreTimeout("paused")
        for w in batch:
            self.data[(w.key, w.field)] = w


def _fill(consumer: FakeConsumer, n: int) -> None:
    for i in range(n):
        write = TileWrite(f"fl:k{i % 7}", f"f{i}", str(i).encode(), i + 1, 60_000)
        key, value = encode(ChangelogRecord(write, event_time_ms=1_000 + i))
        consumer.append(TOPIC, i % 2, key, value)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_applies_and_commits_after_the_store_acknowledges() -> None:
    consumer, store = FakeConsumer(), FlakyStore()
    _fill(consumer, 100)
    worker = SinkWorker(consumer, store, max_records=30, wall_ms=lambda: 2_000)
    while worker.step():
        pass
    assert len(store.data) == 100
    assert sum(consumer.committed.values()) == 100
    assert worker.stats.applied_records == 100
    assert sorted(worker.stats.take_freshness())[0] == 2_000 - 1_099


def test_a_failing_store_pauses_seeks_back_and_nothing_is_lost_or_committed_early() -> None:
    consumer, store, clock = FakeConsumer(), FlakyStore(), Clock()
    _fill(consumer, 60)
    backoff = ExponentialBackoff(base_s=1.0, cap_s=1.0, jitter=lambda: 1.0)
    worker = SinkWorker(consumer, store, max_records=25, backoff=backoff, monotonic=clock)
    store.down = True
    assert worker.step() == 0
    assert worker.stats.paused and consumer.paused()
    assert consumer.committed == {}, "nothing may be committed while the store has not acknowledged"
    calls = store.calls
    assert worker.step() == 0 and store.calls == calls, "paused partitions are not re-applied early"
    store.down = False
    clock.t = 5.0
    while worker.step():
        pass
    assert len(store.data) == 60
    assert not worker.stats.paused
    assert consumer.committed == {
        FakeTopicPartition(TOPIC, 0): 30,
        FakeTopicPartition(TOPIC, 1): 30,
    }


def test_undecodable_records_are_counted_and_skipped() -> None:
    consumer, store = FakeConsumer(), FlakyStore()
    consumer.append(TOPIC, 0, b"garbage", b"x")
    _fill(consumer, 3)
    worker = SinkWorker(consumer, store)
    while worker.step():
        pass
    assert worker.stats.undecodable == 1
    assert len(store.data) == 3
