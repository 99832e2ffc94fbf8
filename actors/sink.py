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

Rehydration (a store that can say whether it is complete: Redis and DynamoDB, each with a marker
``fl:meta:epoch``, see ``regions.redis_store`` and ``regions.dynamodb_store``): a store on a
replaced node, a lost disk or a restarted moto comes back *empty*, while this sink's committed
offsets say it applied everything. The sink checks the marker when it starts and every
``check_interval_s``. Redis's guarded writes are also refused atomically when the marker is
missing; DynamoDB's cannot be (BatchWriteItem has no condition), so a batch may land in the emptied
table before the next check, which is harmless: readers see no marker, and the replay covers it.
Then:
1. mark the store ``rehydrating`` (readers go to the next store of the chain; writes are accepted);
2. note the end offsets of the assignment and seek to the beginning of the compacted changelog,
   which holds the latest absolute, versioned state of every tile (replay is safe: idempotent);
3. apply and commit as usual; once every partition's position reached the noted end offsets,
   mark the store ``ready`` again, only if the marker is still the one step 1 set (a store emptied
   again in between starts over instead of being declared complete).
``stats.store_state`` (``ready``, ``rehydrating``, ``unknown``, ``n/a``) and ``stats.rehydrations``
show it in the sink actor's ``status()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from actors.changelog import ChangelogDecodeError, decode, is_restore_state
from features.errors import BackpressureError, TransportError
from regions.exceptions import StoreNotReady
from regions.resilience import ExponentialBackoff
from regions.tiles import TileWrite

READY, REHYDRATING, UNKNOWN, NOT_APPLICABLE = "ready", "rehydrating", "unknown", "n/a"


class StoreWriter(Protocol):
    def apply(self, batch: Sequence[TileWrite]) -> object: ...


@runtime_checkable
class Rehydratable(Protocol):
    """A store that records whether it holds the complete state (both tile writers)."""

    def store_state(self) -> bytes | None: ...
    def begin_rehydration(self) -> None: ...
    def mark_ready(self) -> bool: ...


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
        self._store = writer if isinstance(writer, Rehydratable) else None
        self._check_interval_s = check_interval_s
        self._next_check = 0.0  # check before the first batch
        self._lost = False  # the store lost its data; rehydrate once partitions are assigned
        self._targets: dict[Any, int] | None = None  # end offsets to reach while rehydrating
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
        records = [r for batch in polled.values() for r in batch]
        if not records:
            self._maybe_finish_rehydration()
            return 0
        writes, event_times = self._decode(records)
        try:
            if writes:
                self._writer.apply(writes)
        except StoreNotReady:
            self._lost = True  # refused atomically: nothing of the batch was written
            return 0
        except (TransportError, BackpressureError) as exc:
            self._back_off(polled, exc)
            return 0
        self._consumer.commit()
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
            state = self._store.store_state()
        except TransportError as exc:
            self.stats.last_error = type(exc).__name__
            return
        rehydrating = self._targets is not None
        if state is None or (state != b"ready" and not rehydrating):
            self._lost = True  # emptied, or a rehydration a previous incarnation did not finish
        elif not rehydrating:
            self.stats.store_state = READY

    def _start_rehydration(self) -> None:
        store = self._store
        assigned = list(self._consumer.assignment())
        if store is None or not assigned:
            return  # the group has not assigned partitions yet
        try:
            store.begin_rehydration()
        except TransportError as exc:
            self.stats.last_error = type(exc).__name__
            return
        self._targets = dict(self._consumer.end_offsets(assigned))
        self._consumer.seek_to_beginning(*assigned)
        self._lost = False
        self.stats.store_state = REHYDRATING
        self.stats.rehydrations += 1

    def _maybe_finish_rehydration(self) -> None:
        targets = self._targets
        if targets is None or self._store is None:
            return
        if any(self._consumer.position(tp) < end for tp, end in targets.items()):
            return
        try:
            ready = self._store.mark_ready()
        except TransportError as exc:
            self.stats.last_error = type(exc).__name__
            return
        self._targets = None
        if ready:
            self.stats.store_state = READY
        else:
            self._lost = True  # emptied again while we replayed: start over

    def _decode(self, records: list[Any]) -> tuple[list[TileWrite], list[int]]:
        writes, event_times = [], []
        for record in records:
            try:
                decoded = decode(record.key, record.value)
            except ChangelogDecodeError:
                # Only Freshline writes this topic; count and skip rather than wedge the region.
                self.stats.undecodable += 1
                continue
            if is_restore_state(decoded.write.field):
                continue  # held events: the processor's restore state, never read from a store
            writes.append(decoded.write)
            event_times.append(decoded.event_time_ms)
        return writes, event_times

    def _back_off(self, polled: dict[Any, list[Any]], exc: Exception) -> None:
        for tp, batch in polled.items():
            self._consumer.seek(tp, batch[0].offset)
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
