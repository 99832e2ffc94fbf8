"""A read-only tail of the events topic for people: rates, partitions and the busiest entities.

It is what ``freshline demo`` shows until the feature pipeline and serving are deployed, and it is
deliberately independent of them: a plain consumer with no group, so it never moves any offsets.
An event stamped after the wall clock when it arrives is counted but does not move an entity's
newest event time: the pipeline holds such events until their time comes, and an age computed from
one would be negative.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson


@dataclass
class EntityFlow:
    events: int = 0
    last_event_time_ms: int = 0


@dataclass
class FlowSnapshot:
    consumed: int
    consumed_per_s: float
    unparseable: int
    per_partition: dict[int, int]
    top_entities: list[tuple[str, EntityFlow]]
    newest_event_time_ms: int


@dataclass
class _FlowState:
    consumed: int = 0
    unparseable: int = 0
    per_partition: Counter[int] = field(default_factory=Counter)
    entities: dict[str, EntityFlow] = field(default_factory=dict)
    newest_event_time_ms: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))


class EventFlowTail:
    """Tails ``topic`` from its current end in a daemon thread; ``snapshot()`` is thread-safe."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        entity_field: str = "user_id",
        now: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._bootstrap, self._topic, self._entity_field, self._now = (
            bootstrap,
            topic,
            entity_field,
            now,
        )
        self._wall_ms = wall_ms
        self._state = _FlowState()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flow-tail", daemon=True)

    def start(self) -> EventFlowTail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def snapshot(self, top: int = 10) -> FlowSnapshot:
        with self._lock:
            s = self._state
            ranked = sorted(s.entities.items(), key=lambda kv: kv[1].events, reverse=True)[:top]
            return FlowSnapshot(
                consumed=s.consumed,
                consumed_per_s=_rate(s.recent),
                unparseable=s.unparseable,
                per_partition=dict(s.per_partition),
                top_entities=[(k, EntityFlow(**vars(v))) for k, v in ranked],
                newest_event_time_ms=s.newest_event_time_ms,
            )

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        partitions = consumer.partitions_for_topic(self._topic) or set()
        consumer.assign([TopicPartition(self._topic, p) for p in partitions])
        consumer.seek_to_end()
        try:
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=200, max_records=5000)
                for records in batches.values():
                    self._absorb(records)
        finally:
            consumer.close()

    def _absorb(self, records: list) -> None:  # type: ignore[type-arg]
        with self._lock:
            s = self._state
            now_ms = self._wall_ms()  # once per batch: a poll spans milliseconds
            for record in records:
                s.consumed += 1
                s.per_partition[record.partition] += 1
                self._absorb_one(s, record.value, now_ms)
            s.recent.append((self._now(), s.consumed))

    def _absorb_one(self, s: _FlowState, raw: bytes, now_ms: int) -> None:
        try:
            event = orjson.loads(raw)
            entity = str(event[self._entity_field])
            event_time = int(event["event_time_ms"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            s.unparseable += 1
            return
        flow = s.entities.setdefault(entity, EntityFlow())
        flow.events += 1
        if event_time > now_ms:
            return  # future-stamped: held by the pipeline, not yet the newest (module docstring)
        flow.last_event_time_ms = max(flow.last_event_time_ms, event_time)
        s.newest_event_time_ms = max(s.newest_event_time_ms, event_time)


def _rate(samples: deque[tuple[float, int]]) -> float:
    if len(samples) < 2:
        return 0.0
    (t0, c0), (t1, c1) = samples[0], samples[-1]
    return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
