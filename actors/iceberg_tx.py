"""An Iceberg transaction that computes its table metadata once per staged state.

pyiceberg 0.12's ``Transaction.table_metadata`` replays the staged updates onto the table's
metadata, ending in a deep copy of the whole metadata (every kept snapshot and its summary), on
every read, and one append reads it about twenty times. That deep copy was most of an offline
commit's CPU (``benchmarks/offline_commits.py`` measures both transactions in one run). The
result depends only on the table's metadata object and the staged-updates tuple, and both are
replaced, never mutated, when they change (``_stage`` rebinds ``_updates`` to a new tuple, a
commit or refresh rebinds ``Table.metadata``), so the memo is keyed on their identities and
invalidates itself. This is the change proposed upstream in apache/iceberg-python#3302 and #3784.

Imported only where a table is written: pyiceberg is heavy to import.
"""

from __future__ import annotations

from pyiceberg.table import Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import TableUpdate, update_table_metadata
from pyiceberg.table.update.snapshot import ExpireSnapshots


class MemoTransaction(Transaction):
    """``Transaction`` whose ``table_metadata`` is computed once per (table metadata, staged
    updates) pair. Everything else, commit and its conflict checks included, is pyiceberg's."""

    def __init__(self, table: Table, autocommit: bool = False) -> None:
        super().__init__(table, autocommit=autocommit)
        self._memo: tuple[TableMetadata, tuple[TableUpdate, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        memo = self._memo
        if memo is None or memo[0] is not base or memo[1] is not updates:
            memo = (base, updates, update_table_metadata(base, updates))
            self._memo = memo
        return memo[2]


def expire_snapshots(table: Table, snapshot_ids: list[int]) -> None:
    """Expire ``snapshot_ids`` in one commit: pyiceberg's ``maintenance.expire_snapshots()``
    builder on a :class:`MemoTransaction` (it reads the metadata twice per snapshot expired)."""
    ExpireSnapshots(transaction=MemoTransaction(table, autocommit=True)).by_ids(
        snapshot_ids
    ).commit()
