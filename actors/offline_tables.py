"""The two offline Iceberg tables: explicit schemas, idempotent creation, commit properties.

``raw_events``: the source's declared fields, typed (undeclared extras are not stored), then
``_event_time`` (timestamp, UTC), ``_event_date`` (the partition column), and the Kafka lineage
``_partition``, ``_offset``, ``_kafka_timestamp_ms``, ``_ingested_at_ms``.
``tile_snapshots``: one row per tile changelog record (a tile field's absolute value at a version).

Table upkeep, because a stream commits every couple of seconds: every Iceberg commit rewrites the
table's metadata file, which lists every snapshot the table still has. Kept forever, snapshots
make each commit cost more than the one before (``benchmarks/offline_commits.py`` measures it),
so a writer that commits that often would fall behind for good. :class:`IcebergTable`
therefore expires all but the newest ``keep_snapshots`` snapshots every ``expire_every`` commits
(exactly-once needs only the current one: the position is in its summary), merges small manifests
(``commit.manifest-merge.enabled``), and lets Iceberg delete metadata files past
``write.metadata.previous-versions-max``.
Expired snapshots' manifest lists stay on disk as orphans (pyiceberg 0.12 has no orphan-file
removal); they are small, one per commit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa

from features.catalog import EventSource, FieldType
from features.errors import TransportError

log = logging.getLogger(__name__)

RAW_TABLE = "raw_events"
TILE_TABLE = "tile_snapshots"

_ARROW_TYPES: dict[FieldType, pa.DataType] = {
    FieldType.STRING: pa.string(),
    FieldType.INT: pa.int64(),
    FieldType.FLOAT: pa.float64(),
    FieldType.BOOL: pa.bool_(),
}


class OfflineTable(Protocol):
    """An append-only table whose commits carry string properties atomically with the rows."""

    def committed(self) -> dict[str, str]: ...

    def append(self, rows: pa.Table, properties: dict[str, str]) -> None: ...


def declared_fields(source: EventSource) -> list[pa.Field]:
    """The source's declared fields, typed, nullable (a value Arrow cannot hold is stored null,
    ``actors.offline_feed``); undeclared extras are not stored."""
    return [pa.field(name, _ARROW_TYPES[kind]) for name, kind in source.fields.items()]


def raw_schema(source: EventSource) -> pa.Schema:
    """Declared fields typed, then the event time and the Kafka lineage."""
    return pa.schema(
        [
            *declared_fields(source),
            pa.field("_event_time", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("_event_date", pa.date32(), nullable=False),
            pa.field("_partition", pa.int32(), nullable=False),
            pa.field("_offset", pa.int64(), nullable=False),
            pa.field("_kafka_timestamp_ms", pa.int64(), nullable=False),
            pa.field("_ingested_at_ms", pa.int64(), nullable=False),
        ]
    )


TILE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("field", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("event_time_ms", pa.int64(), nullable=False),
        pa.field("ttl_ms", pa.int64(), nullable=False),
        pa.field("deleted", pa.bool_(), nullable=False),
        pa.field("payload", pa.binary()),
        pa.field("_partition", pa.int32(), nullable=False),
        pa.field("_offset", pa.int64(), nullable=False),
        pa.field("_ingested_at_ms", pa.int64(), nullable=False),
    ]
)


# Table properties set on open (idempotent): bounded metadata on disk, merged manifests, and no
# commit retries. pyiceberg (0.12) retries a commit whose base went stale by rebasing it on the
# new head with the properties it was given: a second writer of a table (a zombie of the one
# Ray restarted) would then append rows the other had committed, under offsets older than the
# head's. Refused instead, the stale writer fails and restarts from the head's position.
UPKEEP_PROPERTIES = {
    "commit.manifest-merge.enabled": "true",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    "commit.retry.num-retries": "0",
}


class StaleCommit(TransportError):
    """Another writer committed to the table since this one read it: this append did not land.
    The writer must restart from the table's committed position (``actors.offline``)."""


class IcebergTable:
    """``OfflineTable`` on a pyiceberg table; created idempotently with an explicit schema.

    Invariant: after any append the table holds its current snapshot and at most
    ``keep_snapshots + expire_every - 1`` older ones (module docstring)."""

    def __init__(
        self,
        catalog: Any,
        namespace: str,
        name: str,
        schema: pa.Schema,
        partition_by: str = "",
        *,
        keep_snapshots: int = 20,
        expire_every: int = 10,
    ) -> None:
        if keep_snapshots < 1 or expire_every < 1:
            raise ValueError("keep_snapshots and expire_every must be at least 1")
        catalog.create_namespace_if_not_exists(namespace)
        self._table = catalog.create_table_if_not_exists((namespace, name), schema=schema)
        self._keep = keep_snapshots
        self._expire_every = expire_every
        self._appends = 0
        missing = {k: v for k, v in UPKEEP_PROPERTIES.items() if self._table.properties.get(k) != v}
        if missing:
            with self._table.transaction() as tx:
                tx.set_properties(missing)
        if partition_by and self._table.spec().is_unpartitioned():
            from pyiceberg.transforms import IdentityTransform

            # Identity on a date column, not DayTransform on the timestamp: writing through a
            # DayTransform needs the optional pyiceberg-core wheel. Create-then-evolve is
            # idempotent: a crash in between leaves an empty table that the next start partitions.
            with self._table.update_spec() as spec:
                spec.add_field(partition_by, IdentityTransform(), partition_by.strip("_"))

    def committed(self) -> dict[str, str]:
        self._table.refresh()
        snapshot = self._table.current_snapshot()
        if snapshot is None or snapshot.summary is None:
            return {}
        return dict(snapshot.summary.additional_properties)

    def append(self, rows: pa.Table, properties: dict[str, str]) -> None:
        """Commit ``rows`` and ``properties`` atomically on the snapshot this handle last saw;
        ``StaleCommit`` (nothing committed) when another writer moved the table since."""
        from pyiceberg.exceptions import CommitFailedException

        from actors.iceberg_tx import MemoTransaction

        try:
            with MemoTransaction(self._table) as tx:
                tx.append(rows, snapshot_properties=properties)
        except CommitFailedException as exc:
            raise StaleCommit(f"{self._table.name()}: another writer committed first") from exc
        self._appends += 1
        if self._appends % self._expire_every == 0:
            try:
                self.expire_old_snapshots()
            except Exception as exc:  # upkeep only: the rows and position are committed
                # Failing here would restart the writer over an append that succeeded; the
                # next round expires what this one left.
                log.warning("snapshot expiry failed (%s); retried later", type(exc).__name__)

    def expire_old_snapshots(self) -> int:
        """Expires every snapshot but the newest ``keep_snapshots`` (never the current one);
        returns how many. A separate commit: a crash before it only leaves them for next time."""
        current = self._table.current_snapshot()
        snapshots = self._table.metadata.snapshots  # in commit order
        old = [
            s.snapshot_id
            for s in snapshots[: max(0, len(snapshots) - self._keep)]
            if current is None or s.snapshot_id != current.snapshot_id
        ]
        if old:
            from actors.iceberg_tx import expire_snapshots

            expire_snapshots(self._table, old)
        return len(old)

    def snapshot_count(self) -> int:
        return len(self._table.metadata.snapshots)

    def accepted(
        self,
        partition: int,
        upto_offset: int,
        columns: Sequence[str],
        *,
        time_field: str,
        since_ms: int | None = None,
    ) -> pa.Table:
        """The raw events of one source partition with ``_offset <= upto_offset`` (and, when
        ``since_ms`` is given, ``time_field >= since_ms``, whole days before it never opened),
        ``columns`` and ``_offset``, in offset order: what a backfill folds
        (``actors.backfill``)."""
        row_filter = f"_partition == {int(partition)} and _offset <= {int(upto_offset)}"
        if since_ms is not None:
            first_day = datetime.fromtimestamp(since_ms / 1000, tz=UTC).date().isoformat()
            row_filter += f" and _event_date >= '{first_day}' and {time_field} >= {int(since_ms)}"
        selected = tuple(dict.fromkeys((*columns, time_field, "_offset")))
        self._table.refresh()
        if self._table.current_snapshot() is None:
            return raw_like(self._table.schema().as_arrow(), selected)
        rows = self._table.scan(row_filter=row_filter, selected_fields=selected).to_arrow()
        return rows.sort_by("_offset")

    def scan(self) -> pa.Table:
        self._table.refresh()
        return self._table.scan().to_arrow()


def raw_like(schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    """An empty table of ``columns`` typed as in ``schema``."""
    return schema.empty_table().select(list(dict.fromkeys(columns)))


def open_tables(
    uri: str, warehouse: str, namespace: str, source: EventSource
) -> tuple[IcebergTable, IcebergTable]:
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("freshline", uri=uri, warehouse=warehouse)
    ns = namespace
    raw = IcebergTable(catalog, ns, RAW_TABLE, raw_schema(source), partition_by="_event_date")
    return raw, IcebergTable(catalog, ns, TILE_TABLE, TILE_SCHEMA)
