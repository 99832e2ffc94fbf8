"""The offline writer: accepted raw events and tile snapshots appended to Iceberg, exactly once.

Exactly-once rests on one invariant: **the Kafka position of each table lives in that table's own
snapshot summary**, written by the same Iceberg commit that appends the rows. Each commit carries,
for every partition the table has ever covered, ``freshline.offsets.<topic>.<partition>`` = the next
offset to read (cumulative, not just this batch). A restarted writer reads the current snapshot and
seeks there; Kafka group offsets are never read. A crash before the Iceberg commit loses nothing
(the range is read again); a crash after it skips the range (the rows are in the table). There is
no third state.

Raw events come from the offline topic, never from the source: the consumers hand on each poll
batch's accepted events as Arrow IPC in the transaction that folds them into tiles
(``actors.offline_feed``), so the offline topic read ``read_committed`` holds exactly the events
the stream accepted, each once. The writer neither parses nor validates them: it adds the derived
columns (``_event_time``, ``_event_date``, ``_ingested_at_ms``) and appends.

Several writers (``PipelineConfig.offline_writers``) share both tables, writer ``i`` of ``n``
reading the partitions ``p % n == i`` of both topics. Every commit still carries the position of
every partition: a writer's own from its base and its batch, the others' as its base has them.
Commits are never rebased by pyiceberg (``actors.offline_tables.UPKEEP_PROPERTIES``), so a commit
on a stale base raises ``StaleCommit`` and lands nothing. The writer then reads the head: if its
own partitions' positions there are the ones it based on, another shard committed meanwhile, and
it commits again on the head (at most ``COMMIT_ATTEMPTS`` times). If they moved, a second writer
of its own partitions committed (a zombie, or the successor of a writer Ray restarted): it raises,
exits, and resumes from the head's position.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors import changelog, offline_feed
from actors.offline_tables import TILE_SCHEMA, OfflineTable, StaleCommit, raw_schema
from features import demo
from features.catalog import EventSource
from features.shards import Shard


class WriterFenced(StaleCommit):
    """Another writer committed this writer's own partitions: it must restart from the head."""


OFFSET_PREFIX = "freshline.offsets."
# Commits of one batch before giving up: each attempt after the first follows another shard's
# commit, so more than a few in a row means the table is contended beyond what this design plans.
COMMIT_ATTEMPTS = 8


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
    """What one table's latest commit says: the next offset per partition of its topic."""

    offsets: dict[int, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, topic: str, props: dict[str, str]) -> _Position:
        prefix = f"{OFFSET_PREFIX}{topic}."
        return cls(
            {int(k[len(prefix) :]): int(v) for k, v in props.items() if k.startswith(prefix)}
        )

    def properties(self, topic: str) -> dict[str, str]:
        return {f"{OFFSET_PREFIX}{topic}.{p}": str(o) for p, o in sorted(self.offsets.items())}


class _RawBatch:
    """Handed-on batches (``actors.offline_feed``) waiting for one Iceberg commit."""

    def __init__(self, source: EventSource) -> None:
        self._source = source
        self._parts: list[pa.Table] = []
        self._ingested_at: list[int] = []
        self.rows = self.records = 0

    def add(self, record: Record, now_ms: int) -> None:
        part = offline_feed.decode(record.value)
        self._parts.append(part)
        self._ingested_at.append(now_ms)
        self.rows += part.num_rows
        self.records += 1

    def table(self) -> pa.Table:
        """The rows in ``raw_schema``: declared fields by name (a field the writing catalog did
        not declare is null), the event time as a UTC timestamp and its date, the lineage."""
        schema = raw_schema(self._source)
        got = pa.concat_tables(self._parts, promote_options="default")
        millis = got.column(self._source.event_time_field).cast(pa.int64())
        event_time = pc.multiply(millis, 1000).cast(pa.timestamp("us", tz="UTC"))
        derived = {
            "_event_time": event_time,
            "_event_date": event_time.cast(pa.date32()),
            "_ingested_at_ms": pa.array(
                np.repeat(self._ingested_at, [p.num_rows for p in self._parts]), pa.int64()
            ),
        }
        columns = [derived.get(f.name) or _declared(got, f) for f in schema]
        return pa.Table.from_arrays(columns, schema=schema)


class _TileBatch:
    """Changelog records waiting for one Iceberg commit, one row each."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self.rows = self.records = 0

    def add(self, record: Record, now_ms: int) -> None:
        rec = changelog.decode(record.key or b"", record.value)
        w = rec.write
        self._rows.append(
            {
                "key": w.key,
                "field": w.field,
                "version": w.version,
                "event_time_ms": rec.event_time_ms,
                "ttl_ms": w.ttl_ms,
                "deleted": w.value is None,
                "payload": w.value,
                "_partition": record.partition,
                "_offset": record.offset,
                "_ingested_at_ms": now_ms,
            }
        )
        self.rows = self.records = len(self._rows)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self._rows, schema=TILE_SCHEMA)


class OfflineWriterConfig(BaseModel):
    """Everything the offline writer actor needs; the job builds it from PipelineConfig."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    offline_topic: str
    changelog_topic: str
    # Rows (events or tile records) that make a table's batch due before its interval.
    batch_records: int = Field(default=5_000, ge=1)
    batch_interval_ms: int = Field(default=2_000, ge=10)
    bootstrap: str = ""
    source: str = demo.SOURCE
    iceberg_catalog_uri: str = ""
    iceberg_warehouse: str = ""
    namespace: str = "freshline"
    # This writer is shard ``shard`` of ``shards``: it reads its share of each topic's partitions.
    shard: int = Field(default=0, ge=0)
    shards: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _shard_in_range(self) -> Self:
        self.part()  # raises ValueError naming the shard
        return self

    def part(self) -> Shard:
        return Shard(self.shard, self.shards)


class OfflineWriter:
    """Reads both topics and appends to both tables. Not thread-safe; one actor owns it.

    Invariants: a row is appended at most once per (topic, partition, offset), because the
    position moves only inside the commit that appends; ``flush`` never commits an empty range.
    """

    def __init__(
        self,
        config: OfflineWriterConfig,
        source: EventSource,
        *,
        raw_table: OfflineTable,
        tile_table: OfflineTable,
        consumer: Any,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self._shard = config.part()
        self._sleep = sleep
        self._mine: dict[str, frozenset[int]] = {}
        self._source = source
        self._tables = {config.offline_topic: raw_table, config.changelog_topic: tile_table}
        self.consumer = consumer
        self._now_ms = now_ms
        self._positions: dict[str, _Position] = {}
        self._batches = {t: self._new_batch(t) for t in self._tables}
        self._pending: dict[str, dict[int, int]] = {t: {} for t in self._tables}
        # Writers started together would flush together and lose most commit races to each
        # other; writer i of n flushes i/n of an interval after writer 0.
        phase = config.batch_interval_ms * config.shard // config.shards
        self._last_flush = now_ms() - phase
        self.rows_written = {t: 0 for t in self._tables}
        self.commit_retries = 0  # commits written again after another writer's won the race

    def _new_batch(self, topic: str) -> _RawBatch | _TileBatch:
        return _RawBatch(self._source) if topic == self._config.offline_topic else _TileBatch()

    def start(self, partitions: Mapping[str, Iterable[int]]) -> None:
        """Assigns partitions and seeks each to the position its table last committed."""
        from kafka import TopicPartition

        self._mine = {t: frozenset(self._shard.partitions(ps)) for t, ps in partitions.items()}
        tps = [TopicPartition(t, p) for t, ps in self._mine.items() for p in sorted(ps)]
        self.consumer.assign(tps)
        for topic, table in self._tables.items():
            self._positions[topic] = _Position.parse(topic, table.committed())
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
        self._batches[record.topic].add(record, self._now_ms())
        self._pending[record.topic][record.partition] = record.offset + 1

    def maybe_flush(self) -> None:
        now = self._now_ms()
        due = now - self._last_flush >= self._config.batch_interval_ms
        for topic, batch in self._batches.items():
            if batch.records and (due or batch.rows >= self._config.batch_records):
                self.flush(topic)
        if due:
            self._last_flush = now

    def flush(self, topic: str) -> None:
        """One Iceberg commit: the rows and the new cumulative position, atomically."""
        batch = self._batches[topic]
        if not batch.records:
            return  # nothing consumed: an empty snapshot would only bloat the table history
        rows = batch.table()
        if self._shard.count > 1:
            # The others commit between this writer's commits: start from the head, so that
            # only a commit landing in the last milliseconds makes this one be written again.
            self._move_to_head(topic)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            base = self._positions.setdefault(topic, _Position())
            new = _Position({**base.offsets, **self._pending[topic]})
            try:
                self._tables[topic].append(rows, new.properties(topic))
                break
            except StaleCommit:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                self._move_to_head(topic)
                self.commit_retries += 1
                self._sleep(random.uniform(0.0, 0.05 * attempt))  # noqa: S311 (jitter)
        self._positions[topic] = new
        self.rows_written[topic] += batch.rows
        self._batches[topic] = self._new_batch(topic)
        self._pending[topic] = {}

    def _move_to_head(self, topic: str) -> None:
        """Base the next commit on the table's head; ``WriterFenced`` when the head moved one of
        this writer's own partitions (another writer of them committed)."""
        base = self._positions.get(topic, _Position())
        head = _Position.parse(topic, self._tables[topic].committed())
        mine = self._mine.get(topic, frozenset())
        moved = sorted(p for p in mine if head.offsets.get(p) != base.offsets.get(p))
        if moved:
            raise WriterFenced(
                f"{topic}: partitions {moved} were committed by another writer; restarting"
            )
        self._positions[topic] = head

    def positions(self) -> dict[str, dict[int, int]]:
        return {t: dict(p.offsets) for t, p in self._positions.items()}


def _declared(rows: pa.Table, column: pa.Field) -> pa.ChunkedArray | pa.Array:
    if column.name in rows.column_names:
        return rows.column(column.name).cast(column.type)
    return pa.nulls(rows.num_rows, column.type)
