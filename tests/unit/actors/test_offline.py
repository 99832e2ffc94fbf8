from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from actors import changelog
from actors.offline import (
    OfflineWriter,
    OfflineWriterConfig,
    Record,
)
from actors.offline_tables import TILE_SCHEMA, IcebergTable, raw_schema
from chaos.oracle import LedgerEntry, accepted_events
from features.demo import card_transactions_catalog
from regions.tiles import TileWrite

SRC, CL = "fl.card_tx", "fl.tiles.changelog"
CATALOG = card_transactions_catalog()
SOURCE = CATALOG.source("card_tx")
KEYS = ["user_id", "merchant_id"]


class FakeConsumer:
    """A log per (topic, partition); poll returns what lies past the seek position."""

    def __init__(self, log: list[Record]) -> None:
        self.log = log
        self.pos: dict[tuple[str, int], int] = {}

    def assign(self, tps: list[Any]) -> None:
        self.pos = {(tp.topic, tp.partition): 0 for tp in tps}

    def seek_to_beginning(self, tp: Any) -> None:
        self.pos[(tp.topic, tp.partition)] = 0

    def seek(self, tp: Any, offset: int) -> None:
        self.pos[(tp.topic, tp.partition)] = offset

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Record]]:
        out: dict[Any, list[Record]] = {}
        for r in self.log:
            tp = (r.topic, r.partition)
            if len(out.get(tp, [])) < 3 and r.offset == self.pos[tp]:
                out.setdefault(tp, []).append(r)
                self.pos[tp] += 1
        return out


def _event(seq: int, t: int, **over: Any) -> bytes:
    e = {
        "event_id": f"e{seq}",
        "seq": seq,
        "event_type": "card_tx",
        "user_id": f"u{seq % 3}",
        "merchant_id": "m1",
        "amount": 1.5,
        "currency": "EUR",
        "event_time_ms": t,
    }
    return json.dumps({**e, **over}).encode()


def _log() -> list[Record]:
    now = 10_000_000
    values = {
        0: [
            _event(0, now),
            _event(1, now + 1000),
            b"{bad",
            _event(3, now - 60_000),
            _event(4, now),
        ],
        1: [_event(5, now), _event(6, now, amount="x"), _event(7, now + 10_000_000)],
    }
    log = [Record(SRC, p, o, now, None, v) for p, vs in values.items() for o, v in enumerate(vs)]
    for o in range(4):
        w = TileWrite(f"k{o}", "count", None if o == 3 else b"\x01", o + 1, 60_000)
        key, value = changelog.encode(changelog.ChangelogRecord(w, now + o))
        log.append(Record(CL, 0, o, now, key, value))
    return log


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    (tmp_path / "wh").mkdir()
    return SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/wh")


def _writer(catalog: SqlCatalog, log: list[Record], batch: int = 2) -> OfflineWriter:
    raw = IcebergTable(catalog, "freshline", "raw_events", raw_schema(SOURCE), "_event_date")
    tiles = IcebergTable(catalog, "freshline", "tile_snapshots", TILE_SCHEMA)
    config = OfflineWriterConfig(
        source_topic=SRC, changelog_topic=CL, batch_records=batch, batch_interval_ms=10**9
    )
    w = OfflineWriter(
        config,
        SOURCE,
        KEYS,
        raw_table=raw,
        tile_table=tiles,
        consumer=FakeConsumer(log),
        now_ms=lambda: 1,
    )
    w.start({SRC: [0, 1], CL: [0]})
    return w


def _drain(w: OfflineWriter, steps: int = 10) -> None:
    for _ in range(steps):
        w.step()
    w.flush(SRC) if w._batches[SRC].records else None
    w.flush(CL) if w._batches[CL].records else None


def _rows(catalog: SqlCatalog, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (
        catalog.load_table(("freshline", name)).scan().to_arrow().to_pylist()
    )
    return rows


def _expected() -> set[tuple[int, int]]:
    ledger = [
        LedgerEntry(r.partition, r.offset, r.value, r.timestamp) for r in _log() if r.topic == SRC
    ]
    return {(e["_partition"], e["_offset"]) for e in accepted_events(ledger, CATALOG, "card_tx")}


def test_accepted_events_match_the_oracle_and_tiles_match_the_changelog(
    catalog: SqlCatalog,
) -> None:
    _drain(_writer(catalog, _log()))
    raw = _rows(catalog, "raw_events")
    assert (
        {(r["_partition"], r["_offset"]) for r in raw}
        == _expected()
        == {(0, 0), (0, 1), (0, 4), (1, 0)}
    )
    assert len(raw) == 4
    tiles = sorted(_rows(catalog, "tile_snapshots"), key=lambda r: r["_offset"])
    assert [(t["key"], t["version"], t["deleted"]) for t in tiles] == [
        ("k0", 1, False),
        ("k1", 2, False),
        ("k2", 3, False),
        ("k3", 4, True),
    ]


def test_crash_after_append_before_anything_else_never_duplicates(catalog: SqlCatalog) -> None:
    log = _log()
    first = _writer(catalog, log)
    first.step()
    first.step()  # some batches committed, some rows buffered: then the process "dies"
    assert first.rows_written[SRC] > 0
    _drain(_writer(catalog, log))  # a fresh writer resumes from the snapshot properties
    raw = _rows(catalog, "raw_events")
    counts = Counter((r["_partition"], r["_offset"]) for r in raw)
    assert set(counts) == _expected()
    assert max(counts.values()) == 1
    tiles = Counter(r["_offset"] for r in _rows(catalog, "tile_snapshots"))
    assert sorted(tiles) == [0, 1, 2, 3] and max(tiles.values()) == 1


def test_restart_restores_watermarks_so_late_events_stay_late(catalog: SqlCatalog) -> None:
    log = _log()
    first = _writer(catalog, log, batch=2)
    first.step()  # partition 0 offsets 0..2 consumed; the late event (offset 3) comes after
    first.flush(SRC)
    _drain(_writer(catalog, log))
    offsets = {(r["_partition"], r["_offset"]) for r in _rows(catalog, "raw_events")}
    assert (0, 3) not in offsets
    assert offsets == _expected()


def test_commits_carry_cumulative_offsets_and_watermarks_and_reopening_is_idempotent(
    catalog: SqlCatalog,
) -> None:
    bad_only = [Record(SRC, 0, o, 10_000_000, None, b"{bad") for o in range(3)]
    w = _writer(catalog, bad_only, batch=3)
    w.step()  # three rejected records: no rows, yet the position must move past them
    _writer(catalog, bad_only)  # reopening neither recreates nor re-partitions the tables
    table = catalog.load_table(("freshline", "raw_events"))
    assert len(table.scan().to_arrow()) == 0
    props = table.current_snapshot().summary.additional_properties  # type: ignore[union-attr]
    assert props["freshline.offsets.fl.card_tx.0"] == "3"
    assert [f.name for f in table.spec().fields] == ["event_date"]
    assert len(table.snapshots()) == 1


def _one_tile(offset: int) -> pa.Table:
    row = {"key": "k", "field": "f", "version": 1, "event_time_ms": 1, "ttl_ms": 1}
    row |= {"deleted": False, "payload": b"x", "_partition": 0, "_ingested_at_ms": 1}
    return pa.Table.from_pylist([{**row, "_offset": offset}], schema=TILE_SCHEMA)


def test_old_snapshots_are_expired_but_rows_and_the_position_are_kept(catalog: SqlCatalog) -> None:
    """A stream commits every few seconds; kept forever, snapshots made each commit slower than
    the last. The table keeps the newest few, and the current one's position and every row."""
    table = IcebergTable(
        catalog, "freshline", "tiles", TILE_SCHEMA, keep_snapshots=3, expire_every=2
    )
    for offset in range(9):
        table.append(_one_tile(offset), {"freshline.offsets.t.0": str(offset + 1)})
        assert table.snapshot_count() <= 3 + 2 - 1
    assert table.committed()["freshline.offsets.t.0"] == "9"
    assert sorted(r["_offset"] for r in table.scan().to_pylist()) == list(range(9))
    reopened = catalog.load_table(("freshline", "tiles"))
    assert reopened.properties["commit.manifest-merge.enabled"] == "true"
    assert len(reopened.snapshots()) == table.snapshot_count()
    with pytest.raises(ValueError, match="at least 1"):
        IcebergTable(catalog, "freshline", "tiles", TILE_SCHEMA, keep_snapshots=0)


def test_a_failed_expiry_does_not_fail_the_append_that_succeeded(
    catalog: SqlCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = IcebergTable(
        catalog, "freshline", "tiles", TILE_SCHEMA, keep_snapshots=1, expire_every=1
    )

    def conflict() -> int:
        raise RuntimeError("commit conflict")

    monkeypatch.setattr(table, "expire_old_snapshots", conflict)
    table.append(_one_tile(0), {"freshline.offsets.t.0": "1"})
    assert table.committed()["freshline.offsets.t.0"] == "1"
    assert len(table.scan()) == 1
