"""Several offline writers share the Iceberg tables, each over its own partitions (real pyiceberg
on a local SQL catalog): every accepted event lands once, every commit carries every partition's
position, and a second writer of the same partitions is fenced, not merged."""

from __future__ import annotations

from collections import Counter

import pytest
from pyiceberg.catalog.sql import SqlCatalog

from actors.offline import OFFSET_PREFIX, WriterFenced
from tests.unit.actors.test_offline import (
    CL,
    OFF,
    _drain,
    _handed_on,
    _oracle,
    _rows,
    _writer,
    catalog,
)

__all__ = ["catalog"]  # the fixture, used by name


def _positions(catalog: SqlCatalog, table: str) -> dict[str, str]:
    head = catalog.load_table(("freshline", table)).current_snapshot()
    assert head is not None and head.summary is not None
    props = head.summary.additional_properties
    return {k: v for k, v in props.items() if k.startswith(OFFSET_PREFIX)}


def test_two_writers_land_every_event_once_and_each_commit_keeps_the_others_positions(
    catalog: SqlCatalog,
) -> None:
    log = _handed_on(2)
    first, second = (_writer(catalog, log, shard=(i, 2)) for i in range(2))
    _drain(first)  # the second writer's base is now stale: its commits go on the first's head
    _drain(second)
    counts = Counter((r["_partition"], r["_offset"]) for r in _rows(catalog, "raw_events"))
    assert set(counts) == {(e["_partition"], e["_offset"]) for e in _oracle()}
    assert max(counts.values()) == 1
    ends = Counter(r.partition for r in log if r.topic == OFF)
    assert _positions(catalog, "raw_events") == {
        f"{OFFSET_PREFIX}{OFF}.{p}": str(n) for p, n in ends.items()
    }, "the head carries both writers' partitions"
    assert _positions(catalog, "tile_snapshots") == {f"{OFFSET_PREFIX}{CL}.0": "4"}
    # Restarted, both resume at the head's positions and add nothing.
    for i in range(2):
        _drain(_writer(catalog, log, shard=(i, 2)))
    again = Counter((r["_partition"], r["_offset"]) for r in _rows(catalog, "raw_events"))
    assert again == counts


def test_a_second_writer_of_the_same_partitions_is_fenced_not_merged(catalog: SqlCatalog) -> None:
    log = _handed_on(2)
    zombie, successor = _writer(catalog, log, shard=(0, 2)), _writer(catalog, log, shard=(0, 2))
    _drain(successor)
    with pytest.raises(WriterFenced, match=r"partitions \[0\] were committed by another writer"):
        _drain(zombie)
    counts = Counter((r["_partition"], r["_offset"]) for r in _rows(catalog, "raw_events"))
    assert max(counts.values()) == 1, "no row twice"


def test_a_writer_outside_its_count_is_refused(catalog: SqlCatalog) -> None:
    with pytest.raises(ValueError, match="shard 2 of 2"):
        _writer(catalog, [], shard=(2, 2))
