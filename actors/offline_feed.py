"""Accepted events handed from a stream consumer to the offline writer, once, as Arrow IPC.

A consumer has parsed and validated every event of a poll batch; the events it accepted (valid and
not late: the decision that folds them into tiles, held future events included) it hands on as
columns. Each poll batch of one source partition becomes one or more records of the offline topic,
in the partition numbered like the source partition, produced in the same Kafka transaction as the
batch's tiles and source offsets (``StreamConsumer.commit``). Read ``read_committed``, the topic
therefore holds exactly the accepted events, each once, in partition order, and the writer
(``actors.offline``) appends them to Iceberg without parsing or validating them again.

A record's value is one Arrow IPC stream: the schema, then one record batch with
:func:`feed_schema`'s columns (the source's declared fields typed as in ``raw_events``, then the
raw event's ``_partition``, ``_offset`` and ``_kafka_timestamp_ms``). A batch is split into records
of at most :data:`MAX_RECORD_BYTES`, under the broker's and the producer's 1 MiB message limit.

A value Arrow cannot hold in its column is stored null, never refused (the event is valid and is
in the tiles): an ``int`` field beyond int64 (JSON allows any integer). A ``float`` field holds
``float(value)``, as the aggregators read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from actors.offline_tables import declared_fields
from actors.records import AcceptedEvents, SourceRecord
from features.catalog import EventSource

MAX_RECORD_BYTES = 512 * 1024
_INT64 = (-(2**63), 2**63 - 1)
LINEAGE = (
    pa.field("_partition", pa.int32(), nullable=False),
    pa.field("_offset", pa.int64(), nullable=False),
    pa.field("_kafka_timestamp_ms", pa.int64(), nullable=False),
)


def feed_schema(source: EventSource) -> pa.Schema:
    return pa.schema([*declared_fields(source), *LINEAGE])


class FeedEncoder:
    """Turns one batch's :class:`AcceptedEvents` into offline-topic record values. Stateless
    apart from its schema; never raises for events the validator accepted."""

    def __init__(self, source: EventSource) -> None:
        self.schema = feed_schema(source)
        self._declared = declared_fields(source)

    def encode(
        self, partition: int, records: Sequence[SourceRecord], accepted: AcceptedEvents
    ) -> list[bytes]:
        """The record values for one batch of ``partition``; none when it accepted nothing."""
        positions = accepted.positions
        if not len(positions) or (accepted.keep is not None and not accepted.keep.any()):
            return []
        offsets = np.fromiter((records[i].offset for i in positions), np.int64, len(positions))
        stamps = np.fromiter((records[i].timestamp for i in positions), np.int64, len(positions))
        columns = [_column(accepted.columns[f.name], f.type) for f in self._declared]
        lineage = [pa.array(np.full(len(positions), partition, np.int32)), offsets, stamps]
        batch = pa.RecordBatch.from_arrays([*columns, *lineage], schema=self.schema)
        if accepted.keep is not None:
            batch = batch.filter(pa.array(accepted.keep))
        parts = max(1, -(-batch.nbytes // MAX_RECORD_BYTES))
        size = -(-batch.num_rows // parts)
        return [v for at in range(0, batch.num_rows, size) for v in _split(batch.slice(at, size))]


def decode(value: bytes) -> pa.Table:
    """One record's rows (``feed_schema`` of the catalog that wrote it)."""
    return pa.ipc.open_stream(value).read_all()


def _split(batch: pa.RecordBatch) -> list[bytes]:
    """IPC values of at most ``MAX_RECORD_BYTES`` each (halving a batch whose rows are uneven)."""
    value = _ipc(batch)
    if len(value) <= MAX_RECORD_BYTES or batch.num_rows == 1:
        return [value]
    half = batch.num_rows // 2
    return _split(batch.slice(0, half)) + _split(batch.slice(half))


def _ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def _column(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, OverflowError):  # a float beyond 2**53 held as an int, an int64
        return pa.array([_fit(v, kind) for v in values], type=kind)  # overflow: rare, per value


def _fit(value: Any, kind: pa.DataType) -> Any:
    if pa.types.is_floating(kind):
        return float(value)
    if pa.types.is_integer(kind) and not _INT64[0] <= value <= _INT64[1]:
        return None
    return value
