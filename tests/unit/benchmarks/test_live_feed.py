"""The serving benchmark's ``changed_share``: how live the data its reads met was."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.live_feed import ChangeLog, changed_share, user_id
from features.keys import OnlineKey
from regions.tiles import TileWrite


def _write(user: int) -> TileWrite:
    key = OnlineKey("acme", "bench_user", 1, user_id(user)).encode()
    return TileWrite(key, "b_p0", b"block", 1, 1_000)


def _log(tmp_path: Path, writes: list[tuple[float, int]]) -> Path:
    log = ChangeLog([], [])
    for at, user in writes:
        log.record(at, [_write(user)])
    path = tmp_path / "feed.npz"
    log.save(path, events_per_s=42.0)
    return path


def test_a_read_counts_as_changed_only_when_its_entity_was_written_since_its_previous_read(
    tmp_path: Path,
) -> None:
    path = _log(tmp_path, [(10.0, 1), (20.0, 1), (12.0, 2)])
    reads = [
        (5.0, [1]),  # user 1's first read: nothing to compare with, not counted
        (15.0, [1]),  # written at 10: changed
        (16.0, [1]),  # nothing since 15
        (25.0, [1, 2]),  # user 1 written at 20: changed; user 2's first read, not counted
        (26.0, [2]),  # user 2 written at 12, before its previous read at 25: unchanged
    ]
    share, feed = changed_share(path, reads)
    assert share == pytest.approx(2 / 4, abs=1e-4)
    assert feed == {"events_per_s": 42.0}


def test_reads_are_taken_in_send_order_whatever_order_they_were_answered_in(
    tmp_path: Path,
) -> None:
    path = _log(tmp_path, [(10.0, 3)])
    answered = [(15.0, [3]), (5.0, [3])]  # the later send answered first
    share, _ = changed_share(path, answered)
    assert share == 1.0


def test_no_repeated_read_gives_no_share_rather_than_zero(tmp_path: Path) -> None:
    path = _log(tmp_path, [(10.0, 1)])
    share, _ = changed_share(path, [(5.0, [1]), (6.0, [2])])
    assert math.isnan(share)  # nothing was compared, which 0.0 would hide
