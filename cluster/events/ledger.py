"""The ledger: an append-only JSON-lines file of every event the broker acknowledged.

One JSON object per line, written in produce order as acknowledgements are drained::

    {"topic": "fl.card_tx", "partition": 3, "offset": 41, "event_id": "demo-97", "seq": 97,
     "kind": "valid", "detail": "", "user_id": "u_000123", "merchant_id": "m_00042",
     "amount": 12.5, "event_time_ms": 1764000000000}

Why JSON lines rather than Parquet: the ledger is the oracle of chaos drills, where the generator
may be killed mid-run. Every drained batch is flushed with one write, so a killed generator leaves
all its flushed lines readable and at most one torn last line, which the reader skips; a Parquet
file without its footer is unreadable as a whole. Lines can also be tailed and grepped during a
drill. The cost (a couple of hundred bytes an event, one orjson encode) is small at demo rates.

The amount, ids and event time are the event as drawn, before any corruption (see ``synth``); a
malformed event's wire bytes are not repeated here, ``kind`` and ``detail`` describe them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

import orjson

from cluster.events.exceptions import LedgerCorrupt
from cluster.events.synth import INGESTIBLE_KINDS, EventKind, SyntheticEvent


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    topic: str
    partition: int
    offset: int
    event_id: str
    seq: int
    kind: EventKind
    detail: str
    user_id: str
    merchant_id: str
    amount: float
    event_time_ms: int

    @classmethod
    def acknowledged(
        cls, event: SyntheticEvent, topic: str, partition: int, offset: int
    ) -> LedgerRecord:
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            event_id=event.event_id,
            seq=event.seq,
            kind=event.kind,
            detail=event.detail,
            user_id=event.user_id,
            merchant_id=event.merchant_id,
            amount=event.amount,
            event_time_ms=event.event_time_ms,
        )

    @property
    def ingestible(self) -> bool:
        return self.kind in INGESTIBLE_KINDS

    def to_line(self) -> bytes:
        # Explicit rather than dataclasses.asdict, which deep-copies every field, once per event.
        return (
            orjson.dumps(
                {
                    "topic": self.topic,
                    "partition": self.partition,
                    "offset": self.offset,
                    "event_id": self.event_id,
                    "seq": self.seq,
                    "kind": self.kind.value,
                    "detail": self.detail,
                    "user_id": self.user_id,
                    "merchant_id": self.merchant_id,
                    "amount": self.amount,
                    "event_time_ms": self.event_time_ms,
                }
            )
            + b"\n"
        )


class LedgerWriter:
    """Appends records to one file. Never rewrites a line; a file may hold several runs."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        self._file = file
        self.path = path

    @classmethod
    def open(cls, path: Path | str) -> LedgerWriter:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path.open("ab"), path)

    def append_many(self, records: Iterable[LedgerRecord]) -> None:
        """Write the records and flush them to the OS in one call (one torn line at most)."""
        lines = [r.to_line() for r in records]
        if lines:
            self._file.write(b"".join(lines))
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            if self.path.is_file():  # not /dev/null or a pipe, where fsync fails
                os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def iter_ledger(path: Path | str) -> Iterator[LedgerRecord]:
    """Records in file order. A torn last line (no newline, not JSON) is skipped; any other bad
    line raises :class:`LedgerCorrupt`."""
    path = Path(path)
    with path.open("rb") as file:
        lines = file.read().split(b"\n")
    # After a final newline split() leaves b""; otherwise the last element is a possibly torn line.
    *complete, tail = lines
    for line_no, line in enumerate(complete, start=1):
        if line.strip():
            yield _parse(path, line_no, line)
    if tail.strip():
        try:
            yield _parse(path, len(complete) + 1, tail)
        except LedgerCorrupt:
            return


def read_ledger(path: Path | str) -> list[LedgerRecord]:
    return list(iter_ledger(path))


def _parse(path: Path, line_no: int, line: bytes) -> LedgerRecord:
    try:
        data = orjson.loads(line)
        return LedgerRecord(**{**data, "kind": EventKind(data["kind"])})
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise LedgerCorrupt(path, line_no, f"not a ledger record: {exc}") from None
