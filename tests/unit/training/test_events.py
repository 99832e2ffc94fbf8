"""The Iceberg read: pinned to a snapshot, pruned by columns, event time and ingestion cutoff."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from actors.offline_tables import RAW_TABLE, IcebergTable, raw_schema
from features.demo import SOURCE, card_transactions_catalog
from features.tiles import DAY_MS
from training.events import event_columns, read_events
from training.exceptions import TrainingError

SOURCE_SPEC = card_transactions_catalog().source(SOURCE)
T0 = 1_764_806_400_000  # a UTC midnight
COLUMNS = event_columns(["user_id"], "event_time_ms", ["amount", "amount"])


def _rows(times: list[int], ingested: list[int]) -> pa.Table:
    n = len(times)
    return pa.table(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "seq": list(range(n)),
            "event_type": ["card_tx"] * n,
            "user_id": ["u1"] * n,
            "merchant_id": ["m1"] * n,
            "amount": [float(i) for i in range(n)],
            "currency": ["EUR"] * n,
            "event_time_ms": times,
            "_event_time": pa.array([t * 1000 for t in times]).cast(pa.timestamp("us", tz="UTC")),
            "_event_date": pa.array([t // DAY_MS for t in times], pa.int32()).cast(pa.date32()),
            "_partition": pa.array([0] * n, pa.int32()),
            "_offset": list(range(n)),
            "_kafka_timestamp_ms": times,
            "_ingested_at_ms": ingested,
        }
    ).cast(raw_schema(SOURCE_SPEC))


@pytest.fixture
def table(tmp_path: Path) -> object:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}")
    IcebergTable(catalog, "ns", RAW_TABLE, raw_schema(SOURCE_SPEC), "_event_date")
    return catalog.load_table(("ns", RAW_TABLE))


def test_columns_are_pruned_and_named_once() -> None:
    assert COLUMNS == ("user_id", "event_time_ms", "_partition", "_offset", "amount")


def test_a_table_never_written_reads_as_no_events(table: object) -> None:
    read = read_events(table, COLUMNS, time_column="event_time_ms", until_ms=T0)
    assert (read.table.num_rows, read.snapshot_id) == (0, None)
    assert read.table.column_names == list(COLUMNS)


def test_rows_after_the_spine_or_the_cutoff_are_not_read(table: object) -> None:
    rows = _rows([T0, T0 + 5, T0 + DAY_MS + 1], [T0 + 10, T0 + 99, T0 + DAY_MS + 2])
    table.append(rows)  # type: ignore[attr-defined]
    read = read_events(table, COLUMNS, time_column="event_time_ms", until_ms=T0 + DAY_MS)
    assert read.table["event_time_ms"].to_pylist() == [T0, T0 + 5]
    assert sorted(read.table.column_names) == sorted(COLUMNS)
    cut = read_events(
        table,
        COLUMNS,
        time_column="event_time_ms",
        until_ms=T0 + DAY_MS,
        ingested_before_ms=T0 + 99,
    )
    assert cut.table["event_time_ms"].to_pylist() == [T0]


def test_a_snapshot_id_reads_the_table_as_it_was(table: object) -> None:
    table.append(_rows([T0], [T0]))  # type: ignore[attr-defined]
    first = read_events(table, COLUMNS, time_column="event_time_ms", until_ms=T0 + 1)
    table.append(_rows([T0 + 1], [T0 + 1]))  # type: ignore[attr-defined]
    again = read_events(
        table, COLUMNS, time_column="event_time_ms", until_ms=T0 + 1, snapshot_id=first.snapshot_id
    )
    now = read_events(table, COLUMNS, time_column="event_time_ms", until_ms=T0 + 1)
    assert again.table.num_rows == 1 and now.table.num_rows == 2
    assert now.snapshot_id != first.snapshot_id
    with pytest.raises(TrainingError):
        read_events(table, COLUMNS, time_column="event_time_ms", until_ms=T0, snapshot_id=42)
