from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from actors import changelog
from actors.offline import OfflineWriter, OfflineWriterConfig, Record
from actors.offline_feed import FeedEncoder
from actors.offline_tables import TILE_SCHEMA, IcebergTable, StaleCommit, raw_schema
from actors.processor import PartitionProcessor, RawRecord
from chaos.oracle import LedgerEntry, accepted_events
from features.demo import card_transactions_catalog
from regions.tiles import TileWrite

SRC, OFF, CL = "fl.card_tx", "fl.offline.accepted", "fl.tiles.changelog"
CATALOG = card_transactions_catalog()
SOURCE = CATALOG.source("card_tx")
NOW = 10_000_000


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
            if tp in self.pos and len(out.get(tp, [])) < 1 and r.offset == self.pos[tp]:
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
        "amount": 1.5 + seq,
        "currency": "EUR",
        "event_time_ms": t,
    }
    return json.dumps({**e, **over}).encode()


def _source() -> dict[int, list[RawRecord]]:
    """Raw events per source partition: valid, malformed, late, wrongly typed, future."""
    values = {
        0: [
            _event(0, NOW),
            _event(1, NOW + 1000),
            b"{bad",
            _event(3, NOW - 60_000),
            _event(4, NOW, amount=7),
            _event(8, NOW + 2),
            _event(9, NOW + 30_000),  # ahead of the clock, within the skew: accepted, held
        ],
        1: [_event(5, NOW), _event(6, NOW, amount="x"), _event(7, NOW + 10_000_000)],
    }
    return {
        p: [RawRecord(o, None, v, NOW + p) for o, v in enumerate(vs)] for p, vs in values.items()
    }


def _handed_on(batch: int) -> list[Record]:
    """What consumers hand on for ``_source()`` (in poll batches of ``batch`` records), as the
    offline topic holds it, then four changelog records."""
    log: list[Record] = []
    encoder = FeedEncoder(SOURCE)
    for partition, records in _source().items():
        processor = PartitionProcessor(CATALOG, "card_tx", partition, lambda: NOW)
        offset = 0
        for at in range(0, len(records), batch):
            polled = records[at : at + batch]
            outcome = processor.process(polled)
            for value in encoder.encode(partition, polled, outcome.accepted_events):
                log.append(Record(OFF, partition, offset, NOW, None, value))
                offset += 1
    for o in range(4):
        w = TileWrite(f"k{o}", "count", None if o == 3 else b"\x01", o + 1, 60_000)
        key, value = changelog.encode(changelog.ChangelogRecord(w, NOW + o))
        log.append(Record(CL, 0, o, NOW, key, value))
    return log


def _writer(
    catalog: SqlCatalog,
    log: list[Record],
    batch: int = 2,
    shard: tuple[int, int] = (0, 1),
    *,
    interval_ms: int = 10**9,
    now_ms: Callable[[], int] = lambda: 1,
) -> OfflineWriter:
    raw = IcebergTable(catalog, "freshline", "raw_events", raw_schema(SOURCE), "_event_date")
    tiles = IcebergTable(catalog, "freshline", "tile_snapshots", TILE_SCHEMA)
    config = OfflineWriterConfig(
        offline_topic=OFF,
        changelog_topic=CL,
        batch_records=batch,
        batch_interval_ms=interval_ms,
        shard=shard[0],
        shards=shard[1],
    )
    w = OfflineWriter(
        config,
        SOURCE,
        raw_table=raw,
        tile_table=tiles,
        consumer=FakeConsumer(log),
        now_ms=now_ms,
        sleep=lambda _: None,
    )
    w.start({OFF: [0, 1], CL: [0]})
    return w


def _drain(w: OfflineWriter, steps: int = 20) -> None:
    for _ in range(steps):
        w.step()
    w.flush(OFF)
    w.flush(CL)


def _rows(catalog: SqlCatalog, name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (
        catalog.load_table(("freshline", name)).scan().to_arrow().to_pylist()
    )
    return rows


def _oracle() -> list[dict[str, Any]]:
    ledger = [
        LedgerEntry(p, r.offset, r.value, r.timestamp) for p, rs in _source().items() for r in rs
    ]
    return accepted_events(ledger, CATALOG, "card_tx")


@pytest.mark.parametrize("poll", [1, 3, 10])
def test_raw_rows_are_the_oracles_accepted_events_with_their_values_and_lineage(
    catalog: SqlCatalog, poll: int
) -> None:
    _drain(_writer(catalog, _handed_on(poll)))
    raw = {(r["_partition"], r["_offset"]): r for r in _rows(catalog, "raw_events")}
    want = {(e["_partition"], e["_offset"]): e for e in _oracle()}
    assert set(raw) == set(want) == {(0, 0), (0, 1), (0, 4), (0, 5), (0, 6), (1, 0)}
    for where, event in want.items():
        row = raw[where]
        assert {name: row[name] for name in SOURCE.fields} == {
            name: event[name] for name in SOURCE.fields
        }, where
        assert type(row["amount"]) is float  # an int amount is stored as the float it counts as
        at = datetime.fromtimestamp(event["event_time_ms"] / 1000, tz=UTC)
        assert (row["_event_time"], row["_event_date"]) == (at, at.date())
        assert row["_kafka_timestamp_ms"] == NOW + where[0]
        assert row["_ingested_at_ms"] == 1
    tiles = sorted(_rows(catalog, "tile_snapshots"), key=lambda r: r["_offset"])
    assert [(t["key"], t["version"], t["deleted"]) for t in tiles] == [
        ("k0", 1, False),
        ("k1", 2, False),
        ("k2", 3, False),
        ("k3", 4, True),
    ]


def test_crash_after_append_before_anything_else_never_duplicates(catalog: SqlCatalog) -> None:
    log = _handed_on(2)
    first = _writer(catalog, log, batch=2)
    for _ in range(3):
        first.step()  # some batches committed, some rows buffered: then the process "dies"
    assert first.rows_written[OFF] > 0
    _drain(_writer(catalog, log))  # a fresh writer resumes from the snapshot properties
    raw = _rows(catalog, "raw_events")
    counts = Counter((r["_partition"], r["_offset"]) for r in raw)
    assert set(counts) == {(e["_partition"], e["_offset"]) for e in _oracle()}
    assert max(counts.values()) == 1
    tiles = Counter(r["_offset"] for r in _rows(catalog, "tile_snapshots"))
    assert sorted(tiles) == [0, 1, 2, 3] and max(tiles.values()) == 1


def test_commits_carry_cumulative_offsets_of_the_offline_topic_and_reopening_is_idempotent(
    catalog: SqlCatalog,
) -> None:
    log = [r for r in _handed_on(3) if r.topic == OFF]
    w = _writer(catalog, log, batch=10**6)
    _drain(w)
    _writer(catalog, log)  # reopening neither recreates nor re-partitions the tables
    table = catalog.load_table(("freshline", "raw_events"))
    props = table.current_snapshot().summary.additional_properties  # type: ignore[union-attr]
    ends = Counter(r.partition for r in log)
    assert {k: v for k, v in props.items() if k.startswith("freshline.offsets.")} == {
        f"freshline.offsets.{OFF}.{p}": str(n) for p, n in ends.items()
    }
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


def test_a_second_writer_with_a_stale_base_is_refused_not_rebased(catalog: SqlCatalog) -> None:
    """A zombie of a restarted writer read the table before its successor committed: its commit
    must fail, not be rebased on the successor's snapshot (pyiceberg's default), which would
    append rows the successor already committed."""
    log = _handed_on(2)
    zombie = _writer(catalog, log, batch=2)
    successor = _writer(catalog, log, batch=2)
    _drain(successor)
    with pytest.raises(StaleCommit, match="another writer"):
        _drain(zombie)
    counts = Counter((r["_partition"], r["_offset"]) for r in _rows(catalog, "raw_events"))
    assert set(counts) == {(e["_partition"], e["_offset"]) for e in _oracle()}
    assert max(counts.values()) == 1, "no row twice"
    _drain(_writer(catalog, log))  # the zombie's restart resumes from the successor's position
    again = Counter((r["_partition"], r["_offset"]) for r in _rows(catalog, "raw_events"))
    assert again == counts
