"""Warm start of a new view version from the offline table (``actors.backfill``): the backfilled
version's blocks equal those of a processor that computed it from the first event, and the offset
metadata makes it happen exactly once (a crash before the first commit backfills again, after it
never; metadata written before the list existed backfills nothing; a table still behind leaves the
version off the list for a later start)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kafka.structs import OffsetAndMetadata

from actors import consumer as consumer_module
from actors.backfill import (
    Committed,
    offset_metadata,
    parse_offset_metadata,
    read_floor_ms,
    to_backfill,
    warm_start,
)
from actors.changelog import HELD_PREFIX, ChangelogRecord, decode
from actors.config import CHANGELOG_TOPIC
from actors.consumer import ConsumerConfig, StreamConsumer
from actors.offline_feed import FeedEncoder
from actors.offline_feed import decode as decode_feed
from actors.processor import PartitionProcessor, RawRecord, view_ident
from features.catalog import Catalog
from features.demo import SOURCE, TOPIC, card_transactions_catalog
from features.rollout import merge_repository
from features.watermark import WatermarkState
from tests.doubles.kafka import FakeConsumer, FakeProducer
from tests.unit.actors.test_processor import NOW, _stream
from tests.unit.features.test_rollout import _v2

V1 = card_transactions_catalog()
BOTH = merge_repository(V1, _v2())
V2 = view_ident("user_spend", 2)
SPLIT = 1_200  # events before the new version is applied


class History:
    """The offline table as the writer fills it: every accepted event handed on, as columns."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []
        self.behind_for: set[int] = set()
        self.reads = 0

    def add(self, values: list[bytes]) -> None:
        self.parts += [decode_feed(v) for v in values]

    def behind(self, partitions: Collection[int]) -> set[int]:
        return self.behind_for & set(partitions)

    def events(
        self,
        partition: int,
        upto_offset: int,
        columns: Sequence[str],
        *,
        time_field: str,
        since_ms: int | None,
    ) -> pa.Table:
        self.reads += 1
        rows = pa.concat_tables(self.parts)
        keep = pc.and_(
            pc.equal(rows["_partition"], partition), pc.less_equal(rows["_offset"], upto_offset)
        )
        if since_ms is not None:
            keep = pc.and_(keep, pc.greater_equal(rows[time_field], since_ms))
        return rows.filter(keep).select([*columns, "_offset"]).sort_by("_offset")


def _run(
    processor: PartitionProcessor, records: list[RawRecord], history: History | None = None
) -> list[ChangelogRecord]:
    encoder = FeedEncoder(V1.source(SOURCE))
    log: list[ChangelogRecord] = []
    for i in range(0, len(records), 97):
        batch = records[i : i + 97]
        outcome = processor.process(batch)
        if history is not None:
            history.add(encoder.encode(0, batch, outcome.accepted_events))
        log += processor.drain_changes()
    return log


def _last_values(log: list[ChangelogRecord], ident: str) -> dict[tuple[str, str], Any]:
    """The last value written per (key, field) of one view version."""
    view, version = ident.split("@v")
    out = {}
    for record in log:
        if f":{view}:v{version}:" in record.write.key:
            out[(record.write.key, record.write.field)] = record.write.value
    return {k: v for k, v in out.items() if v is not None}


@pytest.mark.parametrize("columnar", [True, False])
@pytest.mark.parametrize("held", [False, True])
def test_a_backfilled_version_equals_the_version_computed_from_the_first_event(
    columnar: bool, held: bool
) -> None:
    """``held``: the clock stands inside the stream, so the events after it are held back
    (those within the allowed skew) at the backfill as in the live fold."""
    records = _stream(2_500, seed=11)
    now = _time_of(records[SPLIT - 100]) if held else NOW
    history = History()
    old = PartitionProcessor(V1, SOURCE, 0, lambda: now, columnar=columnar)
    log = _run(old, records[:SPLIT], history)
    rolled = PartitionProcessor(BOTH, SOURCE, 0, lambda: now, columnar=columnar)
    rolled.restore(log, old.state.watermark, old.state.last_offset)
    warmed = warm_start(BOTH, {0: rolled}, {0: (V2,)}, history)
    assert warmed.folded[(0, V2)] > 0 and not warmed.left
    assert bool([e for e in rolled.state.pending if e[0] == V2]) == held
    log += rolled.drain_changes()
    log += _run(rolled, records[SPLIT:])
    reference = PartitionProcessor(BOTH, SOURCE, 0, lambda: now, columnar=False)
    expected = _run(reference, records)
    assert _blocks(log, V2) == _blocks(expected, V2) != {}
    assert {k: v for k, v in rolled.state.tiles.items() if k[0] == V2} == {
        k: v for k, v in reference.state.tiles.items() if k[0] == V2
    }
    assert _held(rolled) == _held(reference)


def _blocks(log: list[ChangelogRecord], ident: str) -> dict[tuple[str, str], Any]:
    """The last blocks written; held events are compared by :func:`_held`."""
    values = _last_values(log, ident)
    return {k: v for k, v in values.items() if not k[1].startswith(HELD_PREFIX)}


def _held(processor: PartitionProcessor) -> dict[Any, list[Any]]:
    """Held events as the fold reads them: a backfilled one carries only the fields its view
    reads (the offline table has no undeclared ones)."""
    read = ("user_id", "event_time_ms", "amount", "merchant_id")
    return {
        entity: [({f: event[f] for f in read}, t, o) for event, t, o in items]
        for entity, items in processor.state.pending.items()
    }


def _time_of(record: RawRecord) -> int:
    return int(orjson.loads(record.value)["event_time_ms"])


def test_a_backfill_replaces_what_a_retired_incarnation_of_the_version_left() -> None:
    """A version rolled back, retired and applied again finds its old blocks in the changelog:
    the backfill replaces them, written above their versions, instead of adding to them."""
    records = _stream(1_500, seed=5)
    history = History()
    first = PartitionProcessor(BOTH, SOURCE, 0, lambda: NOW)
    log = _run(first, records, history)
    again = PartitionProcessor(BOTH, SOURCE, 0, lambda: NOW)
    again.restore(log, first.state.watermark, first.state.last_offset)
    warm_start(BOTH, {0: again}, {0: (V2,)}, history)
    republished = again.drain_changes()
    assert {k: v for k, v in again.state.tiles.items() if k[0] == V2} == {
        k: v for k, v in first.state.tiles.items() if k[0] == V2
    }
    newest = {(r.write.key, r.write.field): r.write.version for r in log}
    for record in republished:
        if ":user_spend:v2:" in record.write.key:
            assert record.write.version > newest.get((record.write.key, record.write.field), -1)


def test_a_windowed_only_version_reads_only_events_of_tiles_still_kept() -> None:
    spend = BOTH.view("merchant_activity")
    floor = read_floor_ms(spend, watermark_ms=NOW, allowed_lateness_ms=0)
    unwindowed = any(f.window is None for f in spend.features)
    assert (floor is None) == unwindowed
    if floor is not None:
        assert floor < NOW


def test_the_metadata_lists_the_versions_and_older_metadata_means_every_version_live() -> None:
    text = offset_metadata(WatermarkState(42), ["b@v1", "a@v2"])
    assert parse_offset_metadata(text) == Committed(WatermarkState(42), frozenset({"a@v2", "b@v1"}))
    old = parse_offset_metadata('{"max_event_time_ms": 42}')
    assert old.watermark == WatermarkState(42) and old.views is None
    assert to_backfill(["a@v2", "b@v1"], old) == ()
    assert to_backfill(["a@v2", "b@v1", "a@v3"], parse_offset_metadata(text)) == ("a@v3",)


# The consumer on test doubles: what a commit lists, and what a restart then backfills.


class _Kafka(FakeConsumer):
    """A source partition with committed offsets (and their metadata) of a previous consumer."""

    def __init__(self, records: list[RawRecord], committed: tuple[int, str] | None) -> None:
        super().__init__()
        for r in records:
            self.append(TOPIC, 0, r.key, r.value)
        self._committed = committed

    def committed(self, tp: Any, metadata: bool = False) -> Any:
        if self._committed is None:
            return None
        return OffsetAndMetadata(self._committed[0], self._committed[1], -1)


class _Run:
    """One consumer incarnation on partition 0 over a shared changelog."""

    def __init__(
        self,
        catalog: Catalog,
        records: list[RawRecord],
        changelog: list[ChangelogRecord],
        committed: tuple[int, str] | None,
        *,
        history: History | None,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(
            consumer_module, "read_changelog_partition", lambda *_args: list(changelog)
        )
        self.producer = FakeProducer()
        self.consumer = StreamConsumer(
            ConsumerConfig(bootstrap="fake:9092", source=SOURCE),
            catalog,
            [0],
            now_ms=lambda: NOW,
            monotonic=lambda: 1e9,  # every step is past the commit interval
            clients=lambda _c, _t: (self.producer, _Kafka(records, committed)),
            history=history,
        )
        self.consumer.start()

    def commit(self) -> tuple[list[ChangelogRecord], tuple[int, str]]:
        self.consumer.commit()
        tx = self.producer.transactions[-1]
        log = [decode(k or b"", v) for t, _p, k, v in tx.records if t == CHANGELOG_TOPIC]
        return log, tx.offsets[0]


def _before_the_roll(
    records: list[RawRecord], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[ChangelogRecord], tuple[int, str], History]:
    """Partition 0 consumed by a v1-only consumer, its accepted events in the offline table."""
    history = History()
    log = _run(PartitionProcessor(V1, SOURCE, 0, lambda: NOW), records, history)
    before = _Run(V1, records, [], None, history=None, monkeypatch=monkeypatch)
    while before.consumer.step(poll_timeout_ms=0):
        pass
    _log, offsets = before.commit()
    assert set(parse_offset_metadata(offsets[1]).views or ()) == {
        "user_spend@v1",
        "merchant_activity@v1",
    }
    return log, offsets, history


def test_the_first_commit_lists_the_backfilled_version_and_a_crash_before_it_backfills_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _stream(800, seed=2)
    log, offsets, history = _before_the_roll(records, monkeypatch)
    crashed = _Run(
        BOTH, records, log, offsets, history=history, monkeypatch=monkeypatch
    )  # dies before committing
    assert crashed.consumer.stats.backfilled_events > 0 and not crashed.producer.transactions
    rolled = _Run(BOTH, records, log, offsets, history=history, monkeypatch=monkeypatch)
    assert rolled.consumer.stats.backfilled_events == crashed.consumer.stats.backfilled_events
    published, after = rolled.commit()  # no new event: the backfill alone makes it commit
    assert after[0] == offsets[0]
    assert V2 in (parse_offset_metadata(after[1]).views or ())
    assert _last_values(published, V2) != {}
    reads = history.reads
    restarted = _Run(
        BOTH, records, log + published, after, history=history, monkeypatch=monkeypatch
    )
    assert restarted.consumer.stats.backfilled_events == 0 and history.reads == reads
    reference = PartitionProcessor(BOTH, SOURCE, 0, lambda: NOW)
    assert _last_values(log + published, V2) == _last_values(_run(reference, records), V2)


def test_metadata_without_a_list_backfills_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    records = _stream(400, seed=4)
    log, offsets, history = _before_the_roll(records, monkeypatch)
    legacy = (offsets[0], f'{{"max_event_time_ms": {NOW}}}')
    upgraded = _Run(BOTH, records, log, legacy, history=history, monkeypatch=monkeypatch)
    assert upgraded.consumer.stats.backfilled_events == 0 and history.reads == 0


def test_a_table_still_behind_leaves_the_version_off_the_list_for_a_later_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("actors.backfill.BACKFILL_WAIT_S", 0.0)
    records = _stream(400, seed=6)
    log, offsets, history = _before_the_roll(records, monkeypatch)
    history.behind_for = {0}
    waited = _Run(BOTH, records, log, offsets, history=history, monkeypatch=monkeypatch)
    assert waited.consumer.stats.backfilled_events == 0
    _published, after = waited.commit()
    assert V2 not in (parse_offset_metadata(after[1]).views or ())
    history.behind_for = set()
    later = _Run(BOTH, records, log, after, history=history, monkeypatch=monkeypatch)
    assert later.consumer.stats.backfilled_events > 0
