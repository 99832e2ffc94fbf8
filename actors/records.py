"""What a partition processor reads and returns per batch, shared by its two batch paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from actors.dlq import DeadLetter
from features.errors import RejectReason


class RawRecord(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes


class SourceRecord(Protocol):
    """What ``process`` reads of a record: a :class:`RawRecord` or kafka-python's own record."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


@dataclass
class BatchOutcome:
    dead_letters: list[DeadLetter]
    accepted: int
    rejected_by_reason: dict[RejectReason, int]
