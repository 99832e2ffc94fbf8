"""Several offline writers share the Iceberg tables, each over its own partitions (real pyiceberg
on a local SQL catalog): every accepted event lands once, every commit carries every partition's
position, and a second writer of the same partitions is fenced, not merged."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from actors.offline import OFFSET_PREFIX, Record, WriterFenced
from actors.offline_tables import OfflineTable
from tests.unit.actors.test_offline import (
    CL,
    OFF,
    _drain,
    _handed_on,
    _oracle,
    _rows,
    _writer,
)


def _positions(catalog: SqlCatalog, table: str) -> dict[str, str]:
    head = catalog.load_table(("freshline", table)).current_snapshot()
    assert head is not None and head.summary is not None
    props = head.summary.additional_properties
    return {k: v for k, v in props.items() if k.startswith(OFFSET_PREFIX)}


def _every_event_once_under_every_position(
    catalog: SqlCatalog, log: list[Record]
) -> Counter[tuple[int, int]]:
    """Asserts the raw table holds every accepted event once and its head carries the position
    of every offline-topic partition, whichever writer read it; returns the row counts."""
    counts = Counter((r["_partition"], r["_offset"]) for r in _rows(catalog, "raw_events"))
    assert set(counts) == {(e["_partition"], e["_offset"]) for e in _oracle()}
    assert max(counts.values()) == 1
    ends = Counter(r.partition for r in log if r.topic == OFF)
    assert _positions(catalog, "raw_events") == {
        f"{OFFSET_PREFIX}{OFF}.{p}": str(n) for p, n in ends.items()
    }, "the head carries every writer's partitions"
    return counts


def test_two_writers_land_every_event_once_and_each_commit_keeps_the_others_positions(
    catalog: SqlCatalog,
) -> None:
    log = _handed_on(2)
    first, second = (_writer(catalog, log, shard=(i, 2)) for i in range(2))
    _drain(first)  # the second writer's base is now stale: its commits go on the first's head
    _drain(second)
    counts = _every_event_once_under_every_position(catalog, log)
    assert _positions(catalog, "tile_snapshots") == {f"{OFFSET_PREFIX}{CL}.0": "4"}
    assert second.commit_retries == first.commit_retries == 0, "each starts from the head"
    # Restarted, both resume at the head's positions and add nothing.
    for i in range(2):
        _drain(_writer(catalog, log, shard=(i, 2)))
    again = Counter((r["_partition"], r["_offset"]) for r in _rows(catalog, "raw_events"))
    assert again == counts


class _RaceBeforeAppend:
    """A table whose first append is preceded by ``race()``: another writer's commit landing
    between this writer's read of the head and its own commit."""

    def __init__(self, table: OfflineTable, race: Callable[[], None]) -> None:
        self._table, self._race = table, race

    def committed(self) -> dict[str, str]:
        return self._table.committed()

    def append(self, rows: pa.Table, properties: dict[str, str]) -> None:
        race, self._race = self._race, lambda: None
        race()
        self._table.append(rows, properties)


def test_a_commit_that_loses_a_race_is_written_again_on_the_winners_head(
    catalog: SqlCatalog,
) -> None:
    log = _handed_on(2)
    first, second = (_writer(catalog, log, shard=(i, 2)) for i in range(2))
    for _ in range(3):
        second.step()
    first._tables[OFF] = _RaceBeforeAppend(first._tables[OFF], lambda: second.flush(OFF))
    _drain(first)
    _drain(second)
    assert first.commit_retries == 1, "its first commit lost the race and was written again"
    _every_event_once_under_every_position(catalog, log)


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


def test_writers_flush_out_of_phase_so_their_commits_do_not_collide(catalog: SqlCatalog) -> None:
    """With a 1,000 ms interval, writer 1 of 2 is due 500 ms after writer 0: started together,
    their timed flushes fall half an interval apart instead of racing each other."""
    log = _handed_on(2)
    clock = {"ms": 0}
    writers = [
        _writer(catalog, log, 10**6, (i, 2), interval_ms=1_000, now_ms=lambda: clock["ms"])
        for i in range(2)
    ]
    first, second = writers
    for writer in writers:
        writer.step()  # each buffers a record, t = 0: nobody is due
    clock["ms"] = 500
    first.maybe_flush()
    second.maybe_flush()
    assert first.rows_written[OFF] == 0, "writer 0 is not due yet"
    assert second.rows_written[OFF] > 0, "writer 1 is due half an interval in"
    clock["ms"] = 1_000
    first.maybe_flush()
    assert first.rows_written[OFF] > 0 and first.commit_retries == 0
