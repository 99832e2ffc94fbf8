"""The replication lag an operator sees counts what a region has not durably applied."""

from __future__ import annotations

from actors.sink_lag import committed_lag


def test_lag_is_end_minus_committed_and_never_negative() -> None:
    ends = {"p0": 100, "p1": 50, "p2": 10}
    committed = {"p0": 90, "p1": 60, "p2": 10}  # p1 ahead of a stale end: 0, not -10
    assert committed_lag(ends, committed, {}) == 10


def test_a_partition_never_committed_counts_from_its_first_retained_offset() -> None:
    # Compaction removed offsets 0-39 of p0: the group has 60 records to apply there, not 100.
    ends, beginnings = {"p0": 100, "p1": 5}, {"p0": 40, "p1": 0}
    assert committed_lag(ends, {"p1": None}, beginnings) == 60 + 5
