"""The offline writer: accepted raw events and tile snapshots appended to Iceberg, exactly once.

Exactly-once rests on one invariant: **the Kafka position of each table lives in that table's own
snapshot summary**, written by the same Iceberg commit that appends the rows. Each commit carries,
for every partition the table has ever covered, ``freshline.offsets.<topic>.<partition>`` = the next
offset to read (cumulative, not just this batch), plus the source partitions' watermark state. A
restarted writer reads the current snapshot and seeks there; Kafka group offsets are never read.
A crash before the Iceberg commit loses nothing (the range is read again); a crash after it
skips the range (the rows are in the table). There is no third state.

Raw events are re-judged here with the stream's own rules (``features.validation`` then
``features.watermark``, per partition in offset order). ``now`` for the future-skew check is the
record's Kafka timestamp, so the decision is a function of the log alone (the oracle uses the same
reference); the stream uses its wall clock moments later, which differs only for events within
milliseconds of the skew limit.

One writer per table: Iceberg's optimistic commit would reject a concurrent writer's stale base.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from actors import changelog
from actors.offline_tables import TILE_SCHEMA, OfflineTable, raw_schema
from features import demo
from features.catalog import EventSource
from features.errors import EventRejected
from features.validation import EventValidator
from features.watermark import WatermarkPolicy, WatermarkState

OFFSET_PREFIX = "freshline.offsets."
WATERMARK_PREFIX = "freshline.watermark."


class Record(NamedTuple):
    """One Kafka record as the writer needs it (kafka-python's ConsumerRecord has these fields)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes


@dataclass
class _Position:
    """What one table's latest commit says: next offset and watermark per partition."""

    offsets: dict[int, int] = field(default_factory=dict)
    watermarks: dict[int, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, topic: str, props: dict[str, str]) -> _Position:
        pos = cls()
        prefix = f"{OFFSET_PREFIX}{topic}."
        for k, v in props.items():
            if k.startswith(prefix):
                pos.offsets[int(k[len(prefix) :])] = int(v)
            elif k.startswith(WATERMARK_PREFIX):
                pos.watermarks[int(k[len(WATERMARK_PREFIX) :])] = int(v)
        return pos

    def properties(self, topic: str) -> dict[str, str]:
        props = {f"{OFFSET_PREFIX}{topic}.{p}": str(o) for p, o in sorted(self.offsets.items())}
        props.update({f"{WATERMARK_PREFIX}{p}": str(w) for p, w in self.watermarks.items()})
        return props


class _RawJudge:
    """Re-applies validation and per-partition lateness; state is only the watermarks."""

    def __init__(self, source: EventSource, entity_keys: Sequence[str]) -> None:
        self._source = source
        self._now = 0
        self._validator = EventValidator(source, entity_keys, lambda: self._now)
        self._policy = WatermarkPolicy(source.out_of_orderness_ms, source.allowed_lateness_ms)
        self.watermarks: dict[int, WatermarkState] = {}

    def accept(self, record: Record) -> dict[str, Any] | None:
        self._now = record.timestamp
        try:
            event = self._validator.validate(record.value)
        except EventRejected:
            return None
        state = self.watermarks.setdefault(record.partition, WatermarkState())
        return event if self._policy.observe(state, event[self._source.event_time_field]) else None


class _Batch:
    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows: list[dict[str, Any]] = []
        self.records = 0

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=self.schema)


class OfflineWriterConfig(BaseModel):
    """Everything the offline writer actor needs; the job builds it from PipelineConfig."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_topic: str
    changelog_topic: str
    batch_records: int = Field(default=5_000, ge=1)
    batch_interval_ms: int = Field(default=2_000, ge=10)
    bootstrap: str = ""
    source: str = demo.SOURCE
    iceberg_catalog_uri: str = ""
    iceberg_warehouse: str = ""
    namespace: str = "freshline"


class OfflineWriter:
    """Reads both topics and appends to both tables. Not thread-safe; one actor owns it.

    Invariants: a row is appended at most once per (topic, partition, offset), because the
    position moves only inside the commit that appends; ``step`` never commits an empty range
    unless offsets advanced (rejected-only batches still move the position).
    """

    def __init__(
        self,
        config: OfflineWriterConfig,
        source: EventSource,
        entity_keys: Sequence[str],
        *,
        raw_table: OfflineTable,
        tile_table: OfflineTable,
        consumer: Any,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._config = config
        self._source = source
        self._judge = _RawJudge(source, entity_keys)
        self._tables = {config.source_topic: raw_table, config.changelog_topic: tile_table}
        self.consumer = consumer
        self._now_ms = now_ms
        self._positions: dict[str, _Position] = {}
        self._batches = {
            config.source_topic: _Batch(raw_schema(source)),
            config.changelog_topic: _Batch(TILE_SCHEMA),
        }
        self._pending: dict[str, dict[int, int]] = {t: {} for t in self._tables}
        self._last_flush = now_ms()
        self.rows_written = {t: 0 for t in self._tables}

    def start(self, partitions: Mapping[str, Iterable[int]]) -> None:
        """Assigns partitions and seeks each to the position its table last committed."""
        from kafka import TopicPartition

        tps = [TopicPartition(t, p) for t, ps in partitions.items() for p in ps]
        self.consumer.assign(tps)
        for topic, table in self._tables.items():
            pos = _Position.parse(topic, table.committed())
            self._positions[topic] = pos
            if topic == self._config.source_topic:
                self._judge.watermarks = {p: WatermarkState(w) for p, w in pos.watermarks.items()}
        for tp in tps:
            offset = self._positions[tp.topic].offsets.get(tp.partition)
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)

    def step(self, timeout_ms: int = 200) -> int:
        """Polls once, buffers, and flushes each table when its batch is full or old enough."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=1_000)
        count = 0
        for records in polled.values():
            for r in records:
                self.add(Record(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value))
                count += 1
        self.maybe_flush()
        return count

    def add(self, record: Record) -> None:
        batch = self._batches[record.topic]
        row = self._row(record)
        if row is not None:
            batch.rows.append(row)
        batch.records += 1
        self._pending[record.topic][record.partition] = record.offset + 1

    def maybe_flush(self) -> None:
        now = self._now_ms()
        due = now - self._last_flush >= self._config.batch_interval_ms
        for topic, batch in self._batches.items():
            if batch.records and (due or batch.records >= self._config.batch_records):
                self.flush(topic)
        if due:
            self._last_flush = now

    def flush(self, topic: str) -> None:
        """One Iceberg commit: the rows and the new cumulative position, atomically."""
        batch = self._batches[topic]
        if not batch.records:
            return  # nothing consumed: an empty snapshot would only bloat the table history
        pos = self._positions.setdefault(topic, _Position())
        offsets = {**pos.offsets, **self._pending[topic]}
        watermarks = dict(pos.watermarks)
        if topic == self._config.source_topic:
            watermarks = {p: s.max_event_time_ms for p, s in self._judge.watermarks.items()}
        new = _Position(offsets, watermarks)
        self._tables[topic].append(batch.table(), new.properties(topic))
        self._positions[topic] = new
        self.rows_written[topic] += len(batch.rows)
        self._batches[topic] = _Batch(batch.schema)
        self._pending[topic] = {}

    def positions(self) -> dict[str, dict[int, int]]:
        return {t: dict(p.offsets) for t, p in self._positions.items()}

    def _row(self, record: Record) -> dict[str, Any] | None:
        if record.topic == self._config.source_topic:
            event = self._judge.accept(record)
            if event is None:
                return None
            row = {name: event.get(name) for name in self._source.fields}
            row["_kafka_timestamp_ms"] = record.timestamp
            event_time = _utc(event[self._source.event_time_field])
            row.update(_event_time=event_time, _event_date=event_time.date())
        else:
            row = self._tile_row(record)
        row.update(_partition=record.partition, _offset=record.offset)
        row["_ingested_at_ms"] = self._now_ms()
        return row

    @staticmethod
    def _tile_row(record: Record) -> dict[str, Any]:
        rec = changelog.decode(record.key or b"", record.value)
        w = rec.write
        return {
            "key": w.key,
            "field": w.field,
            "version": w.version,
            "event_time_ms": rec.event_time_ms,
            "ttl_ms": w.ttl_ms,
            "deleted": w.value is None,
            "payload": w.value,
        }


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
