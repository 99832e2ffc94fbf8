"""The memoised Iceberg transaction: the metadata it answers is always the staged state's, and an
append through it lands exactly what pyiceberg's own append lands (real pyiceberg, SQL catalog)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from actors.iceberg_tx import MemoTransaction
from actors.offline_tables import TILE_SCHEMA, IcebergTable, StaleCommit


def _tiles(first: int, count: int = 3) -> pa.Table:
    rows = [
        {"key": f"k{i}", "field": "f", "version": i, "event_time_ms": i, "ttl_ms": 1}
        | {"deleted": False, "payload": b"x", "_partition": i % 2, "_offset": i}
        | {"_ingested_at_ms": 1}
        for i in range(first, first + count)
    ]
    return pa.Table.from_pylist(rows, schema=TILE_SCHEMA)


def _table(catalog: SqlCatalog, name: str) -> Table:
    catalog.create_namespace_if_not_exists("freshline")
    return catalog.create_table_if_not_exists(("freshline", name), schema=TILE_SCHEMA)


def test_metadata_follows_every_staged_update_and_every_commit(catalog: SqlCatalog) -> None:
    table = _table(catalog, "tiles")
    tx = MemoTransaction(table)
    first = tx.table_metadata
    assert tx.table_metadata is first, "an unchanged state is computed once"
    tx.set_properties({"a": "1"})
    staged = tx.table_metadata
    assert staged.properties["a"] == "1" and "a" not in first.properties
    tx.set_properties({"b": "2"})
    assert tx.table_metadata.properties["a"] == "1"
    assert tx.table_metadata.properties["b"] == "2"
    tx.commit_transaction()
    assert table.properties["b"] == "2"

    # The same transaction object after the table moved on: the memo follows the new metadata.
    before = MemoTransaction(table)
    seen = before.table_metadata.current_snapshot_id
    table.append(_tiles(0))
    assert seen is None
    assert before.table_metadata.current_snapshot_id == table.metadata.current_snapshot_id


def test_an_append_through_it_lands_what_pyicebergs_own_append_lands(catalog: SqlCatalog) -> None:
    ours = IcebergTable(catalog, "freshline", "ours", TILE_SCHEMA, keep_snapshots=3)
    theirs = _table(catalog, "theirs")
    for n in range(6):
        position = {"freshline.offsets.t.0": str(n + 1), "freshline.offsets.t.1": str(2 * n)}
        ours.append(_tiles(3 * n), position)
        theirs.append(_tiles(3 * n), snapshot_properties=position)
    reread = catalog.load_table(("freshline", "ours"))
    assert (
        reread.scan()
        .to_arrow()
        .sort_by("_offset")
        .equals(theirs.scan().to_arrow().sort_by("_offset"))
    )
    committed = ours.committed()
    assert committed["freshline.offsets.t.0"] == "6" and committed["freshline.offsets.t.1"] == "10"
    summary = reread.current_snapshot().summary  # type: ignore[union-attr]
    assert summary is not None and summary["added-records"] == "3"
    assert summary["total-records"] == "18"


def test_a_stale_base_is_still_refused(catalog: SqlCatalog) -> None:
    """The memo must not hide a concurrent commit: the stale writer's append lands nothing."""
    writer = IcebergTable(catalog, "freshline", "tiles", TILE_SCHEMA)
    zombie = IcebergTable(catalog, "freshline", "tiles", TILE_SCHEMA)
    writer.append(_tiles(0), {"freshline.offsets.t.0": "3"})
    with pytest.raises(StaleCommit):
        zombie.append(_tiles(0), {"freshline.offsets.t.0": "3"})
    assert len(catalog.load_table(("freshline", "tiles")).scan().to_arrow()) == 3
