"""An in-memory stand-in for kafka-python's KafkaConsumer, for unit tests of consumer loops.

It honours what the loops rely on: poll returns only un-paused partitions, seek moves the
position, commit records the positions, and max_records bounds a poll; end offsets, positions and
seek to beginning are what a sink's rehydration uses.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple


class FakeTopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True)
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class FakeConsumer:
    def __init__(self) -> None:
        self.logs: dict[FakeTopicPartition, list[FakeRecord]] = defaultdict(list)
        self.positions: dict[FakeTopicPartition, int] = defaultdict(int)
        self.committed: dict[FakeTopicPartition, int] = {}
        self._paused: set[FakeTopicPartition] = set()
        self.polls = 0

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes) -> FakeRecord:
        tp = FakeTopicPartition(topic, partition)
        record = FakeRecord(topic, partition, len(self.logs[tp]), key, value)
        self.logs[tp].append(record)
        return record

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[Any, list[FakeRecord]]:
        self.polls += 1
        out: dict[Any, list[FakeRecord]] = {}
        budget = max_records
        for tp, log in self.logs.items():
            if tp in self._paused or budget == 0:
                continue
            batch = log[self.positions[tp] : self.positions[tp] + budget]
            if batch:
                out[tp] = batch
                self.positions[tp] += len(batch)
                budget -= len(batch)
        return out

    def seek(self, tp: FakeTopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def pause(self, *tps: FakeTopicPartition) -> None:
        self._paused.update(tps)

    def resume(self, *tps: FakeTopicPartition) -> None:
        self._paused.difference_update(tps)

    def assignment(self) -> set[FakeTopicPartition]:
        return set(self.logs)

    def paused(self) -> set[FakeTopicPartition]:
        return set(self._paused)

    def commit(self) -> None:
        self.committed = dict(self.positions)

    def end_offsets(self, tps: list[FakeTopicPartition]) -> dict[FakeTopicPartition, int]:
        return {tp: len(self.logs[tp]) for tp in tps}

    def position(self, tp: FakeTopicPartition) -> int:
        return self.positions[tp]

    def seek_to_beginning(self, *tps: FakeTopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = 0
