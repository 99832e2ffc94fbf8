"""Two sink shards of one store, each with its own changelog partitions, rehydrate it together:
the store is declared complete only once both replayed, and a shard whose part is done neither
replays again nor declares anything while the other still replays."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from actors.changelog import ChangelogRecord, encode
from actors.sink import SinkWorker
from features.shards import Shard
from regions.exceptions import StoreNotReady
from regions.rehydration import READY, REHYDRATING, shard_view
from regions.tiles import TileWrite
from tests.doubles.kafka import FakeConsumer
from tests.unit.actors.test_sink import TOPIC, Clock


class SharedStore:
    """One store with one marker and the rehydration in force, as ``regions.rehydration`` says
    the Redis scripts and the DynamoDB conditional updates keep it."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], TileWrite] = {}
        self.marker: bytes | None = READY
        self.epoch: str | None = None
        self.count: int | None = None
        self.pending: set[int] = set()
        self.declared_ready = 0

    def lose_everything(self) -> None:
        self.data.clear()
        self.marker, self.epoch, self.count, self.pending = None, None, None, set()


class ShardOf:
    """One sink shard's writer of a :class:`SharedStore` (the ``Rehydratable`` protocol)."""

    def __init__(self, store: SharedStore, shard: Shard) -> None:
        self._store, self._shard, self._epoch = store, shard, ""

    def apply(self, batch: Sequence[TileWrite]) -> None:
        if self._store.marker is None:
            raise StoreNotReady("marker missing")
        for w in batch:
            old = self._store.data.get((w.key, w.field))
            if old is None or w.version > old.version:
                self._store.data[(w.key, w.field)] = w

    def shard_state(self) -> bytes | None:
        s = self._store
        return shard_view(s.marker, s.count, self._shard.index in s.pending, self._shard)

    def begin_rehydration(self) -> None:
        s = self._store
        if not (s.marker == REHYDRATING and s.count == self._shard.count):
            s.marker, s.epoch, s.count = REHYDRATING, uuid.uuid4().hex, self._shard.count
            s.pending = set(range(self._shard.count))
        self._epoch = str(s.epoch)

    def mark_ready(self) -> bool:
        s = self._store
        if s.marker == READY:
            return True
        if s.marker != REHYDRATING or s.epoch != self._epoch:
            return False
        s.pending.discard(self._shard.index)
        if not s.pending:
            s.marker, s.declared_ready = READY, s.declared_ready + 1
        return True


def _fill(consumers: list[FakeConsumer], n: int) -> None:
    """Records to partitions 0 and 1, each read by its own shard's consumer."""
    for i in range(n):
        write = TileWrite(f"fl:k{i % 7}", f"f{i % 11}", str(i).encode(), i + 1, 60_000)
        key, value = encode(ChangelogRecord(write, event_time_ms=1_000 + i))
        consumers[i % 2].append(TOPIC, i % 2, key, value)


def _steps(worker: SinkWorker, clock: Clock, n: int = 40) -> None:
    for _ in range(n):
        clock.t += 1.0  # past the check interval: every step re-checks the marker
        worker.step()


def test_shards_rehydrate_together_and_only_the_last_one_out_declares_the_store() -> None:
    store, clock = SharedStore(), Clock()
    consumers = [FakeConsumer(), FakeConsumer()]
    _fill(consumers, 200)
    workers = [
        SinkWorker(c, ShardOf(store, Shard(i, 2)), max_records=30, monotonic=clock)
        for i, c in enumerate(consumers)
    ]
    for worker in workers:
        _steps(worker, clock)
    expected = dict(store.data)
    assert len(expected) == 77 and store.marker == READY
    store.lose_everything()

    first, second = workers
    _steps(first, clock)  # the first replays its partition alone
    assert first.stats.rehydrations == 1, "a part done is not replayed again while it waits"
    assert first.stats.store_state == "rehydrating", "the store is still incomplete"
    assert store.marker == REHYDRATING and store.pending == {1}
    assert store.data != expected, "half the partitions replayed"

    _steps(second, clock)
    assert store.marker == READY and store.declared_ready == 1
    assert store.data == expected, "every tile back, from both shards' partitions"
    _steps(first, clock, 2)
    assert [w.stats.store_state for w in workers] == ["ready", "ready"]
    assert [w.stats.rehydrations for w in workers] == [1, 1]
