"""What a partition processor reads and returns per batch, shared by its two batch paths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from actors.dlq import DeadLetter
from features.errors import RejectReason


class RawRecord(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int = -1  # the record's Kafka timestamp (ms); -1 when it has none


class SourceRecord(Protocol):
    """What ``process`` reads of a record: a :class:`RawRecord` or kafka-python's own record."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def timestamp(self) -> int: ...


@dataclass(frozen=True, eq=False)
class AcceptedEvents:
    """A batch's accepted events as columns, for the offline hand-off (``actors.offline_feed``).

    Row ``i`` of ``columns`` (every field the validator read, declared ones included) is the
    event of ``records[positions[i]]``; ``keep`` (None: every row) says which rows were accepted,
    the others being late. Rows are in partition order. The two batch paths hold the same events
    in different shapes, so it compares by identity; compare what ``actors.offline_feed`` encodes
    from it instead."""

    positions: npt.NDArray[np.intp]
    columns: Mapping[str, Sequence[Any]]
    keep: npt.NDArray[np.bool_] | None = None

    @classmethod
    def of_events(
        cls, positions: Sequence[int], events: Sequence[Mapping[str, Any]], fields: Sequence[str]
    ) -> AcceptedEvents:
        """From event dicts (the per-event path): one list per field."""
        columns = {name: [event[name] for event in events] for name in fields}
        return cls(np.asarray(positions, dtype=np.intp), columns)


@dataclass
class BatchOutcome:
    dead_letters: list[DeadLetter]
    accepted: int
    rejected_by_reason: dict[RejectReason, int]
    accepted_events: AcceptedEvents = field(compare=False)
