"""Backfill from a real Iceberg table (a local SQL catalog) filled by the offline writer: the read
keeps one partition's events up to the committed position in offset order, a windowed-only
version reads only the events of tiles still kept and still equals the version computed from the
first event, and the table counts as behind until the writer's position passes the partition's
last committed record."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from actors import backfill
from actors.backfill import IcebergHistory, read_floor_ms, warm_start
from actors.changelog import ChangelogRecord
from actors.offline import OfflineWriter, OfflineWriterConfig, Record
from actors.offline_feed import FeedEncoder
from actors.offline_tables import TILE_SCHEMA, IcebergTable, raw_schema
from actors.processor import PartitionProcessor, RawRecord, view_ident
from features.catalog import Catalog
from features.demo import SOURCE, card_transactions_catalog
from features.rollout import merge_repository
from tests.unit.actors.test_backfill import _blocks

V1 = card_transactions_catalog()
OFF, CL = "fl.offline.accepted", "fl.tiles.changelog"
T0 = 1_764_000_000_000
MINUTE = 60_000


def _merchant_v2() -> Catalog:
    data: dict[str, Any] = V1.model_dump(mode="json")
    data["rollouts"] = []
    view = next(v for v in data["views"] if v["name"] == "merchant_activity")
    view["version"] = 2
    next(f for f in view["features"] if f["name"] == "tx_count_1h")["window"] = "2h"
    return Catalog.from_dict(data)


BOTH = merge_repository(V1, _merchant_v2())
M2 = view_ident("merchant_activity", 2)


def _stream(n: int, seed: int) -> list[RawRecord]:
    """Events minutes apart (about two days in all), in time order."""
    rng = random.Random(seed)
    records, clock = [], T0
    for offset in range(n):
        clock += rng.randrange(0, 4 * MINUTE)
        event = {
            "event_id": f"i-{offset}",
            "seq": offset,
            "event_type": "card_tx",
            "user_id": f"u_{rng.randrange(7):06d}",
            "merchant_id": f"m_{rng.randrange(4):05d}",
            "amount": round(rng.uniform(1, 200), 2),
            "currency": "USD",
            "event_time_ms": clock,
        }
        records.append(RawRecord(offset, event["user_id"].encode(), orjson.dumps(event)))
    return records


STREAMS = {0: _stream(1_400, seed=1), 1: _stream(300, seed=2)}
NOW = T0 + 4 * 1_440 * MINUTE  # after every event: nothing is held


@pytest.fixture
def tables(tmp_path: Path) -> tuple[IcebergTable, IcebergTable]:
    """The raw events table and the tile table (the writer needs both) in a local catalog."""
    (tmp_path / "wh").mkdir()
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}/wh")
    schema = raw_schema(V1.source(SOURCE))
    return (
        IcebergTable(catalog, "freshline", "raw_events", schema, "_event_date"),
        IcebergTable(catalog, "freshline", "tile_snapshots", TILE_SCHEMA),
    )


def _consume(
    tables: tuple[IcebergTable, IcebergTable],
) -> tuple[dict[int, list[ChangelogRecord]], dict[int, int]]:
    """Both partitions consumed by v1-only processors, their accepted events appended by the
    offline writer (a commit every few batches); the changelog and the last offline record
    offset per partition."""
    writer = OfflineWriter(
        OfflineWriterConfig(offline_topic=OFF, changelog_topic=CL),
        V1.source(SOURCE),
        raw_table=tables[0],
        tile_table=tables[1],
        consumer=None,
        now_ms=lambda: NOW,
    )
    encoder = FeedEncoder(V1.source(SOURCE))
    logs: dict[int, list[ChangelogRecord]] = {}
    last: dict[int, int] = {}
    for partition, records in STREAMS.items():
        processor = PartitionProcessor(V1, SOURCE, partition, lambda: NOW)
        logs[partition], offset = [], 0
        for at in range(0, len(records), 100):
            batch = records[at : at + 100]
            outcome = processor.process(batch)
            for value in encoder.encode(partition, batch, outcome.accepted_events):
                writer.add(Record(OFF, partition, offset, NOW, None, value))
                last[partition] = offset
                offset += 1
            logs[partition] += processor.drain_changes()
            if at % 300 == 0:
                writer.flush(OFF)
    writer.flush(OFF)
    return logs, last


def test_the_read_is_one_partition_up_to_an_offset_in_offset_order(
    tables: tuple[IcebergTable, IcebergTable],
) -> None:
    _consume(tables)
    raw = tables[0]
    rows = raw.accepted(0, 999, ["merchant_id"], time_field="event_time_ms")
    offsets = rows.column("_offset").to_pylist()
    assert offsets == list(range(1_000)) and rows.column_names == [
        "merchant_id",
        "event_time_ms",
        "_offset",
    ]
    since = orjson.loads(STREAMS[1][150].value)["event_time_ms"] + 1
    later = raw.accepted(1, 10**9, ["user_id"], time_field="event_time_ms", since_ms=since)
    times = later.column("event_time_ms").to_pylist()
    expected = [
        o for o, r in enumerate(STREAMS[1]) if orjson.loads(r.value)["event_time_ms"] >= since
    ]
    assert later.column("_offset").to_pylist() == expected != [] and min(times) >= since


def test_a_windowed_only_version_backfilled_from_iceberg_equals_computing_it_from_the_start(
    tables: tuple[IcebergTable, IcebergTable], monkeypatch: pytest.MonkeyPatch
) -> None:
    logs, last = _consume(tables)
    raw = tables[0]
    monkeypatch.setattr(backfill, "last_committed_offset", lambda _b, _t, p: last[p])
    history = IcebergHistory("unused:9092", OFF, lambda: raw)
    old = PartitionProcessor(V1, SOURCE, 0, lambda: NOW)
    for at in range(0, len(STREAMS[0]), 100):
        old.process(STREAMS[0][at : at + 100])
    rolled = PartitionProcessor(BOTH, SOURCE, 0, lambda: NOW)
    rolled.restore(logs[0], old.state.watermark, old.state.last_offset)
    floor = read_floor_ms(BOTH.view("merchant_activity"), rolled.watermark_ms, 0)
    assert floor is not None
    assert floor > orjson.loads(STREAMS[0][0].value)["event_time_ms"]  # the read is bounded
    warmed = warm_start(BOTH, {0: rolled}, {0: (M2,)}, history, wait_s=0)
    assert 0 < warmed.folded[(0, M2)] < len(STREAMS[0])
    published = rolled.drain_changes()
    reference = PartitionProcessor(BOTH, SOURCE, 0, lambda: NOW)
    expected: list[ChangelogRecord] = []
    for at in range(0, len(STREAMS[0]), 100):
        reference.process(STREAMS[0][at : at + 100])
        expected += reference.drain_changes()
    assert _blocks(published, M2) == _blocks(expected, M2) != {}


def test_the_table_is_behind_until_the_writer_passes_the_last_committed_record(
    tables: tuple[IcebergTable, IcebergTable], monkeypatch: pytest.MonkeyPatch
) -> None:
    _logs, last = _consume(tables)
    raw = tables[0]
    ahead = {0: last[0] + 1, 1: last[1]}  # partition 0 has one record the writer has not read
    monkeypatch.setattr(backfill, "last_committed_offset", lambda _b, _t, p: ahead[p])
    assert IcebergHistory("unused:9092", OFF, lambda: raw).behind([0, 1]) == {0}
    monkeypatch.setattr(backfill, "last_committed_offset", lambda _b, _t, _p: None)
    assert IcebergHistory("unused:9092", OFF, lambda: raw).behind([0, 1, 5]) == set()
