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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.changelog import ChangelogDecodeError, decode
from features.errors import BackpressureError, TransportError
from regions.resilience import ExponentialBackoff
from regions.tiles import TileWrite


class StoreWriter(Protocol):
    def apply(self, batch: Sequence[TileWrite]) -> object: ...


@dataclass
class SinkStats:
    applied_records: int = 0
    batches: int = 0
    store_failures: int = 0
    undecodable: int = 0
    paused: bool = False
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

    def step(self, poll_timeout_ms: int = 200) -> int:
        """One poll-apply-commit cycle; returns how many records were applied."""
        self._maybe_resume()
        polled = self._consumer.poll(timeout_ms=poll_timeout_ms, max_records=self._max_records)
        records = [r for batch in polled.values() for r in batch]
        if not records:
            return 0
        writes, event_times = self._decode(records)
        try:
            if writes:
                self._writer.apply(writes)
        except (TransportError, BackpressureError) as exc:
            self._back_off(polled, exc)
            return 0
        self._consumer.commit()
        self._record_success(len(writes), event_times)
        return len(writes)

    def lag(self) -> int:
        """Changelog records not yet applied by this sink (over its current assignment)."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return 0
        ends = self._consumer.end_offsets(assigned)
        return sum(max(0, ends[tp] - self._consumer.position(tp)) for tp in assigned)

    def _decode(self, records: list[Any]) -> tuple[list[TileWrite], list[int]]:
        writes, event_times = [], []
        for record in records:
            try:
                decoded = decode(record.key, record.value)
            except ChangelogDecodeError:
                # Only Freshline writes this topic; count and skip rather than wedge the region.
                self.stats.undecodable += 1
                continue
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
