"""In-memory stand-ins for kafka-python's KafkaConsumer and transactional KafkaProducer, for unit
tests of consumer loops.

The consumer honours what the loops rely on: poll returns only un-paused partitions, seek moves
the position, commit records the positions, and max_records bounds a poll; end offsets, positions
and seek to beginning are what a sink's rehydration uses. It has no group offsets, so a stream
consumer starting on it starts from the beginning.

The producer records each committed transaction (its records, and its offsets with their
metadata), refuses overlapping transactions, and can be told to fail ``commit_transaction``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
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
    timestamp: int = -1  # ms, as kafka-python's records carry it


class FakeConsumer:
    def __init__(self) -> None:
        self.logs: dict[FakeTopicPartition, list[FakeRecord]] = defaultdict(list)
        self.positions: dict[FakeTopicPartition, int] = defaultdict(int)
        self.committed_positions: dict[FakeTopicPartition, int] = {}
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
        self.committed_positions = dict(self.positions)

    def end_offsets(self, tps: list[FakeTopicPartition]) -> dict[FakeTopicPartition, int]:
        return {tp: len(self.logs[tp]) for tp in tps}

    def position(self, tp: FakeTopicPartition) -> int:
        return self.positions[tp]

    def seek_to_beginning(self, *tps: FakeTopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = 0

    def assign(self, tps: list[Any]) -> None:
        for tp in tps:
            self.logs.setdefault(FakeTopicPartition(tp.topic, tp.partition), [])

    def committed(self, tp: Any, metadata: bool = False) -> None:
        return None  # no group offsets: a stream consumer starts from the beginning

    def group_metadata(self) -> str:
        return "fake-group-metadata"

    def close(self) -> None:
        pass


@dataclass
class Transaction:
    records: list[tuple[str, int | None, bytes | None, bytes]] = field(default_factory=list)
    # source partition -> (next offset, metadata)
    offsets: dict[int, tuple[int, str]] = field(default_factory=dict)


class FakeProducer:
    def __init__(self) -> None:
        self.transactions: list[Transaction] = []  # committed, in order
        self.open: Transaction | None = None
        self.fail_commit: Exception | None = None

    def init_transactions(self) -> None:
        pass

    def begin_transaction(self) -> None:
        if self.open is not None:
            raise AssertionError("a transaction began while another was open")
        self.open = Transaction()

    def send(
        self,
        topic: str,
        key: bytes | None = None,
        value: bytes = b"",
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        assert self.open is not None, "send outside a transaction"
        self.open.records.append((topic, partition, key, value))

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], group: Any) -> None:
        assert self.open is not None and group is not None
        self.open.offsets = {tp.partition: (m.offset, m.metadata) for tp, m in offsets.items()}

    def commit_transaction(self) -> None:
        if self.fail_commit is not None:
            raise self.fail_commit
        assert self.open is not None
        self.transactions.append(self.open)
        self.open = None

    def close(self) -> None:
        pass
