"""Fakes for the generator's unit tests: a clock that only moves when slept, a Kafka producer."""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cluster.events.runner import Clock

START_MS = 1_764_000_000_000


class FakeClock:
    """Monotonic seconds from 0; ``now_ms`` follows it. ``sleep`` advances time, never blocks."""

    def __init__(self, start_ms: int = START_MS) -> None:
        self.t = 0.0
        self.start_ms = start_ms
        self.sleeps: list[float] = []

    def now_ms(self) -> int:
        return self.start_ms + int(self.t * 1000)

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.t += seconds

    def clock(self) -> Clock:
        return Clock(now_ms=self.now_ms, monotonic=self.monotonic, sleep=self.sleep)


class StepClock:
    """An epoch-ms clock that moves ``step_ms`` per reading and remembers every reading."""

    def __init__(self, start_ms: int = START_MS, step_ms: int = 1) -> None:
        self.next = start_ms
        self.step_ms = step_ms
        self.readings: list[int] = []

    def __call__(self) -> int:
        value = self.next
        self.next += self.step_ms
        self.readings.append(value)
        return value


class FakeMetadata(NamedTuple):
    topic: str
    partition: int
    offset: int


@dataclass
class FakeFuture:
    is_done: bool = False
    value: Any = None
    exception: BaseException | None = None


@dataclass
class FakeKafkaProducer:
    """Assigns partitions by a hash of the key and offsets per partition, like a broker would.

    ``fail`` decides per message whether the broker answers with an error, ``refuse`` whether
    ``send`` itself raises. With ``ack_on_flush`` futures complete only on ``flush``;
    ``never_ack`` leaves them pending forever (a dead broker)."""

    partitions: int = 8
    fail: Callable[[bytes], BaseException | None] = lambda value: None
    refuse: Callable[[bytes], BaseException | None] = lambda value: None
    ack_on_flush: bool = False
    never_ack: bool = False
    on_send: Callable[[bytes, bytes], None] | None = None
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    pending: list[tuple[FakeFuture, str, bytes, bytes]] = field(default_factory=list)
    flushes: list[float | None] = field(default_factory=list)
    closed: bool = False

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> FakeFuture:
        assert not self.closed
        assert value is not None and key is not None
        refused = self.refuse(value)
        if refused is not None:
            raise refused
        if self.on_send is not None:
            self.on_send(key, value)
        self.sent.append((topic, key, value))
        future = FakeFuture()
        if self.ack_on_flush or self.never_ack:
            self.pending.append((future, topic, key, value))
        else:
            self._complete(future, topic, key, value)
        return future

    def flush(self, timeout: float | None = None) -> None:
        self.flushes.append(timeout)
        if self.never_ack:
            raise TimeoutError("Timeout waiting for future")
        for future, topic, key, value in self.pending:
            self._complete(future, topic, key, value)
        self.pending.clear()

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    def partition_of(self, key: bytes) -> int:
        return zlib.crc32(key) % self.partitions

    def _complete(self, future: FakeFuture, topic: str, key: bytes, value: bytes) -> None:
        error = self.fail(value)
        future.is_done = True
        if error is not None:
            future.exception = error
            return
        partition = self.partition_of(key)
        future.value = FakeMetadata(topic, partition, self.offsets[partition])
        self.offsets[partition] += 1
