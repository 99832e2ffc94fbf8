"""The sink commits only what the store acknowledged, backs off by pausing, and loses nothing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from actors.changelog import ChangelogRecord, encode
from actors.processor import pending_field
from actors.sink import SinkWorker
from features.errors import StoreTimeout
from regions.exceptions import StoreNotReady
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
    assert sum(consumer.committed_positions.values()) == 100
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
    assert consumer.committed_positions == {}, "nothing committed before the store acknowledged"
    calls = store.calls
    assert worker.step() == 0 and store.calls == calls, "paused partitions are not re-applied early"
    store.down = False
    clock.t = 5.0
    while worker.step():
        pass
    assert len(store.data) == 60
    assert not worker.stats.paused
    assert consumer.committed_positions == {
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


# --- rehydration of a store that came back empty ---------------------------------------------


class MarkedStore:
    """A version-guarded store with a completeness marker, refusing writes without it like the
    guarded Redis writer; ``lose_everything`` is a node coming back on an empty disk."""

    def __init__(self, marker: bytes | None = b"ready") -> None:
        self.marker = marker
        self.data: dict[tuple[str, str], TileWrite] = {}
        self.markers_seen: list[bytes | None] = []

    def apply(self, batch: Sequence[TileWrite]) -> None:
        if self.marker is None:
            raise StoreNotReady("marker missing")
        for w in batch:
            old = self.data.get((w.key, w.field))
            if old is None or w.version > old.version:
                self.data[(w.key, w.field)] = w
        self.markers_seen.append(self.marker)

    def shard_state(self) -> bytes | None:
        return self.marker

    def begin_rehydration(self) -> None:
        self.marker = b"rehydrating"

    def mark_ready(self) -> bool:
        if self.marker not in (b"rehydrating", b"ready"):
            return False
        self.marker = b"ready"
        return True

    def lose_everything(self) -> None:
        self.data.clear()
        self.marker = None


def _drain(worker: SinkWorker, clock: Clock, steps: int = 50) -> None:
    for _ in range(steps):
        clock.t += 1.0  # past the check interval: every step re-checks the marker
        worker.step()


def test_a_store_back_empty_is_replayed_from_the_start_then_marked_ready() -> None:
    consumer, store, clock = FakeConsumer(), MarkedStore(), Clock()
    _fill(consumer, 100)
    worker = SinkWorker(consumer, store, max_records=30, monotonic=clock)
    _drain(worker, clock)
    expected = dict(store.data)
    assert worker.stats.store_state == "ready" and worker.stats.rehydrations == 0
    assert sum(consumer.committed_positions.values()) == 100  # offsets say: everything applied

    store.lose_everything()
    _drain(worker, clock)
    assert store.data == expected
    assert store.marker == b"ready"
    assert worker.stats.store_state == "ready" and worker.stats.rehydrations == 1
    # Every replayed batch went in while readers were told the store is incomplete.
    assert store.markers_seen[-4:] == [b"rehydrating"] * 4


def test_a_batch_refused_by_an_emptied_store_is_replayed_not_lost() -> None:
    consumer, store, clock = FakeConsumer(), MarkedStore(), Clock()
    _fill(consumer, 40)
    worker = SinkWorker(consumer, store, max_records=30, monotonic=clock, check_interval_s=1e9)
    worker.step()  # first check and first 30 records
    store.lose_everything()  # between two checks: only the guarded write can notice
    for _ in range(10):
        worker.step()
    assert len(store.data) == 40
    assert worker.stats.rehydrations == 1 and store.marker == b"ready"


def test_a_new_store_and_an_unfinished_rehydration_both_start_from_the_beginning() -> None:
    consumer, clock = FakeConsumer(), Clock()
    _fill(consumer, 50)
    new = MarkedStore(marker=None)
    worker = SinkWorker(consumer, new, max_records=20, monotonic=clock)
    _drain(worker, clock)
    assert len(new.data) == 50 and new.marker == b"ready"
    # A sink that died mid-replay left "rehydrating": its successor replays everything again.
    half = MarkedStore(marker=b"rehydrating")
    successor = SinkWorker(FakeConsumer(), half, monotonic=clock)
    successor._consumer.logs.update(consumer.logs)  # same topic, committed offsets at the end
    for tp, log in consumer.logs.items():
        successor._consumer.positions[tp] = len(log)
    _drain(successor, clock)
    assert len(half.data) == 50 and half.marker == b"ready"


def test_emptied_again_during_the_replay_is_never_declared_ready() -> None:
    consumer, store, clock = FakeConsumer(), MarkedStore(marker=None), Clock()
    _fill(consumer, 60)
    worker = SinkWorker(consumer, store, max_records=20, monotonic=clock, check_interval_s=1e9)
    worker.step()  # notices the missing marker, starts the replay
    worker.step()  # first 20 records
    store.lose_everything()
    for _ in range(20):
        worker.step()
    assert len(store.data) == 60 and store.marker == b"ready"
    assert worker.stats.rehydrations == 2


def test_a_store_without_a_marker_is_never_rehydrated() -> None:
    consumer, store = FakeConsumer(), FlakyStore()
    _fill(consumer, 10)
    worker = SinkWorker(consumer, store)
    while worker.step():
        pass
    assert worker.stats.store_state == "n/a" and worker.stats.rehydrations == 0


def test_a_batch_interval_gathers_what_arrives_meanwhile_into_one_batch() -> None:
    """A DynamoDB sink applies at most one batch per interval; the records that arrived while
    it waited are polled together, and nothing is lost or reordered by the wait."""
    consumer, store, clock = FakeConsumer(), FlakyStore(), Clock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.t += seconds

    worker = SinkWorker(consumer, store, monotonic=clock, min_batch_interval_s=1.0, sleep=sleep)
    _fill(consumer, 10)
    assert worker.step() == 10 and slept == []  # the first batch goes at once
    for chunk in range(4):  # four consumer commits' worth within the interval
        clock.t += 0.1
        write = TileWrite("fl:hot", "f0", f"v{chunk}".encode(), 100 + chunk, 60_000)
        key, value = encode(ChangelogRecord(write, event_time_ms=2_000 + chunk))
        consumer.append(TOPIC, 0, key, value)
    assert worker.step() == 4
    assert slept == [pytest.approx(0.6)]  # waited out the rest of the interval, once
    assert store.calls == 2
    assert store.data[("fl:hot", "f0")].value == b"v3"  # the newest version won
    assert sum(consumer.committed_positions.values()) == 14


def test_no_batch_interval_while_rehydrating() -> None:
    """A store that came back empty is replayed as fast as it takes, not one batch a second."""
    consumer, store, clock = FakeConsumer(), MarkedStore(), Clock()
    _fill(consumer, 40)
    slept_while: list[str] = []

    def sleep(seconds: float) -> None:
        slept_while.append(worker.stats.store_state)
        clock.t += seconds

    worker = SinkWorker(
        consumer, store, max_records=10, monotonic=clock, min_batch_interval_s=1.0, sleep=sleep
    )
    store.marker = None  # emptied: the first step starts a rehydration
    worker.step()
    assert worker.stats.store_state == "rehydrating"
    for _ in range(5):
        worker.step()
    assert worker.stats.store_state == "ready" and worker.stats.rehydrations == 1
    assert len(store.data) == 40
    assert "rehydrating" not in slept_while


def test_a_sink_behind_reads_on_without_waiting_for_its_batch_interval() -> None:
    """Full batches mean a backlog: waiting after each would cap the sink at max_records per
    interval, below the rate it has to keep up with."""
    consumer, store, clock = FakeConsumer(), FlakyStore(), Clock()
    slept: list[float] = []
    worker = SinkWorker(
        consumer,
        store,
        max_records=10,
        monotonic=clock,
        min_batch_interval_s=1.0,
        sleep=slept.append,
    )
    _fill(consumer, 35)
    assert [worker.step() for _ in range(4)] == [10, 10, 10, 5]
    assert slept == []  # three full batches, then the partial one
    _fill(consumer, 1)
    worker.step()
    assert slept == [pytest.approx(1.0)]  # caught up: the interval applies again


def test_held_events_are_restore_state_and_never_reach_the_store() -> None:
    consumer, store = FakeConsumer(), FlakyStore()
    block = TileWrite("fl:default:user_spend:v1:u_1", "b_p0", b"block", 7, 60_000)
    held = TileWrite("fl:default:user_spend:v1:u_1", pending_field(0), b"[]", 7, 60_000)
    for write in (block, held):
        key, value = encode(ChangelogRecord(write, event_time_ms=1_000))
        consumer.append(TOPIC, 0, key, value)
    worker = SinkWorker(consumer, store, wall_ms=lambda: 2_000)
    while worker.step():
        pass
    assert set(store.data) == {(block.key, block.field)}
    assert sum(consumer.committed_positions.values()) == 2, "the held record is read past"
