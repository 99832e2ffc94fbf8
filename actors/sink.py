"""A region sink: applies the tile changelog to one store of one region.

Each (region, store) pair is its own consumer group, so a slow DynamoDB never sets the pace of
Redis, and a region whose stores are down lags and catches up from its committed offsets without
slowing any other region or the consumer actors.

One step, in order:
1. poll a micro-batch of committed changelog records (``read_committed``: aborted transactions of a
   crashed consumer actor are never applied);
2. apply it to the store in one call (idempotent, version-guarded: a replay changes nothing);
3. commit the offsets, only after the store acknowledged, so a crash replays instead of losing.
When the store fails, the sink seeks back to the batch's first offsets, pauses its partitions
(it keeps polling, so the group stays healthy and memory stays at one batch) and resumes after a
backoff.

Rehydration (a store that can say whether it is complete: Redis and DynamoDB, with markers, see
``regions.redis_store`` and ``regions.dynamodb_store``): a store on a replaced node, a lost disk
or a restarted moto comes back *empty*, while this sink's committed offsets say it applied
everything. Completeness is per *bucket*: DynamoDB and one Redis server are one bucket; a Redis
Cluster has ``regions.redis_layout.CLUSTER_BUCKETS``, so a master that comes back empty loses only
its own buckets' markers. The sink checks the markers when it starts and every
``check_interval_s``. Redis's guarded writes are also refused per bucket when its marker is
missing (the batch is then read again); DynamoDB's cannot be (BatchWriteItem has no condition), so
a batch may land in the emptied table before the next check, which is harmless: readers see no
marker, and the replay covers it. Then, for the lost buckets only:
1. mark them ``rehydrating`` (readers of them go to the next store of the chain; writes are
   accepted), or join the rehydration another shard of this (region, store) began: with
   ``sink_shards`` > 1 each sink replays its own partitions, and a bucket is ready once every
   shard has (``regions.rehydration``);
2. note the end offsets of the assignment and seek to the beginning of the compacted changelog,
   which holds the latest absolute, versioned state of every tile (replay is safe: idempotent);
3. apply and commit as usual, but up to the offsets this sink had already applied, skip the writes
   of buckets that did not lose their data; once every partition's position reached the noted end
   offsets, declare this shard's part done, only if the buckets' rehydration is still the one
   step 1 joined (a bucket emptied again in between starts over instead of being declared
   complete); the last shard out marks a bucket ``ready``.
The complete buckets keep serving throughout; their new writes wait behind the replay.
``stats.store_state`` (``ready``, ``rehydrating``, ``unknown``, ``n/a``) and ``stats.rehydrations``
show it in the sink actor's ``status()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from actors.changelog import ChangelogDecodeError, decode, is_restore_state
from features.errors import BackpressureError, TransportError
from regions.exceptions import StoreNotReady
from regions.rehydration import READY as READY_MARKER
from regions.rehydration import REHYDRATING_ELSEWHERE
from regions.resilience import ExponentialBackoff
from regions.tiles import TileWrite

READY, REHYDRATING, UNKNOWN, NOT_APPLICABLE = "ready", "rehydrating", "unknown", "n/a"
# Bucket states with nothing for this sink to replay.
_PART_DONE = frozenset({READY_MARKER, REHYDRATING_ELSEWHERE})


class StoreWriter(Protocol):
    def apply(self, batch: Sequence[TileWrite]) -> object: ...


@runtime_checkable
class Rehydratable(Protocol):
    """A store that records whether it holds the complete state (the DynamoDB writer)."""

    def shard_state(self) -> bytes | None: ...
    def begin_rehydration(self) -> None: ...
    def mark_ready(self) -> bool: ...


@runtime_checkable
class BucketedStore(Protocol):
    """A store that records completeness per bucket of its keys (the Redis writer)."""

    def shard_states(self) -> Mapping[int, bytes | None]: ...
    def bucket_of(self, key: str) -> int: ...
    def begin_rehydration(self, buckets: Collection[int]) -> None: ...
    def mark_ready(self, buckets: Collection[int]) -> bool: ...


class _WholeStore:
    """A store with one marker, seen as a store of one bucket."""

    def __init__(self, store: Rehydratable) -> None:
        self._store = store

    def shard_states(self) -> Mapping[int, bytes | None]:
        return {0: self._store.shard_state()}

    def bucket_of(self, key: str) -> int:
        return 0

    def begin_rehydration(self, buckets: Collection[int]) -> None:
        self._store.begin_rehydration()

    def mark_ready(self, buckets: Collection[int]) -> bool:
        return self._store.mark_ready()


def _bucketed(writer: object) -> BucketedStore | None:
    if isinstance(writer, BucketedStore):
        return writer
    return _WholeStore(writer) if isinstance(writer, Rehydratable) else None


@dataclass
class SinkStats:
    applied_records: int = 0
    batches: int = 0
    store_failures: int = 0
    undecodable: int = 0
    paused: bool = False
    store_state: str = NOT_APPLICABLE
    rehydrations: int = 0
    assigned_partitions: int = 0  # changelog partitions assigned (every one: see actors.runtime)
    last_error: str = ""
    freshness_ms: list[float] = field(default_factory=list)  # drained by the metrics exporter

    def take_freshness(self) -> list[float]:
        taken, self.freshness_ms = self.freshness_ms, []
        return taken


class SinkWorker:
    """Drives one consumer and one store writer. Not thread-safe: one thread calls ``step``."""

    def __init__(
        self,
        consumer: Any,
        writer: StoreWriter,
        *,
        max_records: int = 5000,
        backoff: ExponentialBackoff | None = None,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
        check_interval_s: float = 1.0,
        min_batch_interval_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._consumer = consumer
        self._writer = writer
        self._max_records = max_records
        self._backoff = backoff or ExponentialBackoff(base_s=0.05, cap_s=2.0)
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._failures_in_a_row = 0
        self._resume_at: float | None = None
        self.stats = SinkStats()
        self._store = _bucketed(writer)
        self._check_interval_s = check_interval_s
        self._next_check = 0.0  # check before the first batch
        self._lost: set[int] = set()  # buckets that lost their data; rehydrate them next step
        self._rehydrating: frozenset[int] = frozenset()
        self._targets: dict[Any, int] | None = None  # end offsets to reach while rehydrating
        # Per partition, the offset below which every record was applied and committed: a
        # rehydration skips those records' writes to the buckets that kept their data.
        self._applied: dict[Any, int] = {}
        self._skip_below: dict[Any, int] = {}
        # A store that is slow per item (DynamoDB) applies at most one batch per interval while
        # it keeps up: what arrives meanwhile is polled as one batch, whose repeated writes of a
        # hot tile coalesce. Behind (a full batch), it reads on without waiting.
        self._min_batch_interval_s = min_batch_interval_s
        self._next_batch_at = 0.0
        self._sleep = sleep
        if self._store is not None:
            self.stats.store_state = UNKNOWN

    def step(self, poll_timeout_ms: int = 200) -> int:
        """One poll-apply-commit cycle; returns how many records were applied."""
        self._maybe_resume()
        self._check_store()
        self._wait_for_batch_interval()
        polled = self._consumer.poll(timeout_ms=poll_timeout_ms, max_records=self._max_records)
        self.stats.assigned_partitions = len(self._consumer.assignment())
        if self._lost:
            self._start_rehydration()  # the polled records are read again from the beginning
            return 0
        records = [(tp, r) for tp, batch in polled.items() for r in batch]
        if not records:
            self._maybe_finish_rehydration()
            return 0
        writes, event_times = self._decode(records)
        try:
            if writes:
                self._writer.apply(writes)
        except StoreNotReady:
            # A bucket lost its data: its writes were refused (the others' applied, idempotent).
            # Read the batch again and look at the markers now to learn which buckets.
            self._seek_back(polled)
            self._next_check = 0.0
            return 0
        except (TransportError, BackpressureError) as exc:
            self._back_off(polled, exc)
            return 0
        self._consumer.commit()
        for tp, batch in polled.items():
            if batch:
                self._applied[tp] = batch[-1].offset + 1
        # A full batch means more is waiting: read on at once, or a sink that may take only
        # max_records per interval would fall behind for good under a higher rate.
        full = len(records) >= self._max_records
        self._next_batch_at = 0.0 if full else self._monotonic() + self._min_batch_interval_s
        self._record_success(len(writes), event_times)
        self._maybe_finish_rehydration()
        return len(writes)

    def _wait_for_batch_interval(self) -> None:
        """Never while rehydrating: a store that lost its data is replayed as fast as it takes."""
        wait = self._next_batch_at - self._monotonic()
        if wait > 0 and self._targets is None and not self._lost:
            self._sleep(wait)

    def _check_store(self) -> None:
        """Every ``check_interval_s``: is the store still complete (or still ours to rehydrate)?
        A store that cannot answer is left to the write path's backoff."""
        if self._store is None or self._lost or self._monotonic() < self._next_check:
            return
        self._next_check = self._monotonic() + self._check_interval_s
        try:
            states = self._store.shard_states()
        except TransportError as exc:
            self.stats.last_error = type(exc).__name__
            return
        # Emptied, or rehydrating with this shard's part to do (begun by another shard, or left
        # by a previous incarnation that did not finish). A part done waits for the other shards.
        self._lost = {
            bucket
            for bucket, state in states.items()
            if state is None or (state not in _PART_DONE and bucket not in self._rehydrating)
        }
        if not self._lost and self._targets is None:
            elsewhere = REHYDRATING_ELSEWHERE in states.values()
            self.stats.store_state = REHYDRATING if elsewhere else READY

    def _start_rehydration(self) -> None:
        """Replay the changelog into the lost buckets (and into any a running rehydration had
        not finished: it starts over with them)."""
        store = self._store
        assigned = list(self._consumer.assignment())
        if store is None or not assigned:
            return  # the group has not assigned partitions yet
        buckets = frozenset(self._lost | self._rehydrating)
        try:
            store.begin_rehydration(buckets)
        except TransportError as exc:
            self.stats.last_error = type(exc).__name__
            return
        self._targets = dict(self._consumer.end_offsets(assigned))
        self._skip_below = dict(self._applied)
        self._consumer.seek_to_beginning(*assigned)
        self._rehydrating, self._lost = buckets, set()
        self.stats.store_state = REHYDRATING
        self.stats.rehydrations += 1

    def _maybe_finish_rehydration(self) -> None:
        targets = self._targets
        if targets is None or self._store is None:
            return
        if any(self._consumer.position(tp) < end for tp, end in targets.items()):
            return
        try:
            ready = self._store.mark_ready(self._rehydrating)
        except TransportError as exc:
            self.stats.last_error = type(exc).__name__
            return
        self._targets, self._skip_below = None, {}
        self._rehydrating = frozenset()
        if ready:
            self.stats.store_state = READY
        else:
            self._next_check = 0.0  # one was emptied again while we replayed: the check finds it

    def _decode(self, records: list[tuple[Any, Any]]) -> tuple[list[TileWrite], list[int]]:
        writes, event_times = [], []
        for tp, record in records:
            try:
                decoded = decode(record.key, record.value)
            except ChangelogDecodeError:
                # Only Freshline writes this topic; count and skip rather than wedge the region.
                self.stats.undecodable += 1
                continue
            if is_restore_state(decoded.write.field):
                continue  # held events: the processor's restore state, never read from a store
            if self._already_applied(tp, record.offset, decoded.write.key):
                continue
            writes.append(decoded.write)
            event_times.append(decoded.event_time_ms)
        return writes, event_times

    def _already_applied(self, tp: Any, offset: int, key: str) -> bool:
        """A replayed record this sink applied before, to a bucket that kept its data."""
        if offset >= self._skip_below.get(tp, 0) or self._store is None:
            return False
        return self._store.bucket_of(key) not in self._rehydrating

    def _seek_back(self, polled: dict[Any, list[Any]]) -> None:
        for tp, batch in polled.items():
            if batch:
                self._consumer.seek(tp, batch[0].offset)

    def _back_off(self, polled: dict[Any, list[Any]], exc: Exception) -> None:
        self._seek_back(polled)
        # Pause everything assigned, not just the failed batch's partitions: the store is down
        # for all of them, and un-paused partitions would keep hammering it.
        self._consumer.pause(*set(self._consumer.assignment()) | set(polled))
        self._failures_in_a_row += 1
        delay = getattr(exc, "retry_after", None) or self._backoff.delay(self._failures_in_a_row)
        self._resume_at = self._monotonic() + delay
        self.stats.store_failures += 1
        self.stats.paused = True
        self.stats.last_error = type(exc).__name__

    def _maybe_resume(self) -> None:
        if self._resume_at is not None and self._monotonic() >= self._resume_at:
            self._consumer.resume(*self._consumer.paused())
            self._resume_at = None
            self.stats.paused = False

    def _record_success(self, count: int, event_times: list[int]) -> None:
        self._failures_in_a_row = 0
        now = self._wall_ms()
        self.stats.applied_records += count
        self.stats.batches += 1
        self.stats.freshness_ms.extend(float(now - t) for t in event_times)
        if len(self.stats.freshness_ms) > 100_000:  # bounded if nobody drains it
            del self.stats.freshness_ms[:50_000]
