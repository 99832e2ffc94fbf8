"""Raw events for a training set, read from the offline ``raw_events`` Iceberg table.

One scan of one pinned snapshot, pruned three ways: columns (the views' keys, the event time, the
Kafka lineage the merge orders by, and the features' columns), rows (``event_time <= the latest
spine time``, and ``_ingested_at_ms < cutoff`` when a cutoff is given) and partitions (the table
is partitioned by ``_event_date``, so days after the latest spine time are never opened). The
snapshot id is returned so that the same set can be rebuilt from the same rows.

No lower time bound is applied: a ``last`` value, and telling ``stale`` from ``not_found``, need
each entity's whole history up to the spine time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from training.asof import OFFSET, PARTITION
from training.exceptions import TrainingError

INGESTED_AT = "_ingested_at_ms"
EVENT_DATE = "_event_date"


@dataclass(frozen=True)
class EventsRead:
    """The rows read and where from: ``snapshot_id`` is None only for a table never written."""

    table: pa.Table
    snapshot_id: int | None
    table_name: str


def event_columns(
    key_columns: Sequence[str], time_column: str, value_columns: Sequence[str]
) -> tuple[str, ...]:
    """The columns a training set reads, each once, in a stable order."""
    wanted = [*key_columns, time_column, PARTITION, OFFSET, *value_columns]
    return tuple(dict.fromkeys(wanted))


def read_events(
    table: Any,
    columns: Sequence[str],
    *,
    time_column: str,
    until_ms: int,
    ingested_before_ms: int | None = None,
    snapshot_id: int | None = None,
) -> EventsRead:
    """Rows of ``table`` (a pyiceberg Table) with ``time_column <= until_ms`` (and ingested
    before the cutoff), as of ``snapshot_id`` (default: the current snapshot)."""
    table.refresh()
    snapshot = (
        table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    )
    if snapshot_id is not None and snapshot is None:
        raise TrainingError(f"table {table.name()} has no snapshot {snapshot_id}")
    name = ".".join(table.name())
    if snapshot is None:
        schema = table.schema().as_arrow()
        return EventsRead(schema.empty_table().select(list(columns)), None, name)
    last_day = datetime.fromtimestamp(until_ms / 1000, tz=UTC).date().isoformat()
    # pyiceberg's filter syntax; the names are catalog field names (no quoting needed).
    row_filter = f"{EVENT_DATE} <= '{last_day}' and {time_column} <= {int(until_ms)}"
    if ingested_before_ms is not None:
        row_filter += f" and {INGESTED_AT} < {int(ingested_before_ms)}"
    scan = table.scan(
        row_filter=row_filter, selected_fields=tuple(columns), snapshot_id=snapshot.snapshot_id
    )
    return EventsRead(scan.to_arrow(), snapshot.snapshot_id, name)
