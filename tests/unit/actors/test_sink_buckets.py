"""Per-bucket rehydration: a store whose completeness is recorded per bucket (a Redis Cluster)
replays the changelog into the buckets that lost their data, and only into them."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from actors.changelog import ChangelogRecord, encode
from actors.sink import SinkWorker
from regions.exceptions import StoreNotReady
from regions.tiles import TileWrite
from tests.doubles.kafka import FakeConsumer
from tests.unit.actors.test_sink import Clock, _fill

BUCKETS = 4


class BucketedStore:
    """Keeps the latest write per (key, field) and a marker per bucket (``fl:k<n>`` lives in
    bucket n % 4); refuses the writes of a bucket without a marker, applying the others, like
    the guarded Redis writer on a cluster."""

    def __init__(self) -> None:
        self.markers: dict[int, bytes | None] = dict.fromkeys(range(BUCKETS), b"ready")
        self.data: dict[tuple[str, str], TileWrite] = {}
        self.applied_to: list[int] = []  # the bucket of every write applied, in order

    def bucket_of(self, key: str) -> int:
        return int(key.removeprefix("fl:k")) % BUCKETS

    def apply(self, batch: Sequence[TileWrite]) -> None:
        refused = False
        for w in batch:
            bucket = self.bucket_of(w.key)
            if self.markers[bucket] is None:
                refused = True
                continue
            old = self.data.get((w.key, w.field))
            if old is None or w.version > old.version:
                self.data[(w.key, w.field)] = w
            self.applied_to.append(bucket)
        if refused:
            raise StoreNotReady("a bucket's marker is missing")

    def shard_states(self) -> Mapping[int, bytes | None]:
        return dict(self.markers)

    def begin_rehydration(self, buckets: Collection[int]) -> None:
        for bucket in buckets:
            self.markers[bucket] = b"rehydrating"

    def mark_ready(self, buckets: Collection[int]) -> bool:
        ok = all(self.markers[b] in (b"rehydrating", b"ready") for b in buckets)
        for bucket in buckets:
            if self.markers[bucket] is not None:
                self.markers[bucket] = b"ready"
        return ok

    def lose_bucket(self, bucket: int) -> None:
        self.data = {k: w for k, w in self.data.items() if self.bucket_of(k[0]) != bucket}
        self.markers[bucket] = None


def _drain(worker: SinkWorker, clock: Clock, steps: int = 60) -> None:
    for _ in range(steps):
        clock.t += 1.0
        worker.step()


def test_a_bucket_back_empty_is_replayed_alone_and_the_others_stay_ready() -> None:
    consumer, store, clock = FakeConsumer(), BucketedStore(), Clock()
    _fill(consumer, 100)
    worker = SinkWorker(consumer, store, max_records=30, monotonic=clock)
    _drain(worker, clock)
    expected = dict(store.data)
    store.lose_bucket(1)
    store.applied_to.clear()
    _drain(worker, clock)
    assert store.data == expected
    assert store.markers == dict.fromkeys(range(BUCKETS), b"ready")
    assert worker.stats.rehydrations == 1 and worker.stats.store_state == "ready"
    assert set(store.applied_to) == {1}, "the complete buckets were not written again"


def test_writes_arriving_after_the_loss_reach_every_bucket_and_nothing_is_lost() -> None:
    consumer, store, clock = FakeConsumer(), BucketedStore(), Clock()
    _fill(consumer, 40)
    worker = SinkWorker(consumer, store, max_records=30, monotonic=clock, check_interval_s=1e9)
    worker.step()  # the first 30 records
    store.lose_bucket(2)  # between checks: only the guarded write notices
    for i in range(40, 80):  # more records, beyond what the sink had applied
        write = TileWrite(f"fl:k{i % 7}", f"f{i}", str(i).encode(), i + 1, 60_000)
        key, value = encode(ChangelogRecord(write, event_time_ms=1_000 + i))
        consumer.append("fl.tiles.changelog", i % 2, key, value)
    for _ in range(20):
        worker.step()
    assert len(store.data) == 80
    assert worker.stats.rehydrations == 1
    assert store.markers == dict.fromkeys(range(BUCKETS), b"ready")
