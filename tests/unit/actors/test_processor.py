"""The processor's tiles, read back through the shared merge code, equal a brute-force oracle over
the raw events; a restore from its own changelog continues exactly where it stopped."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from actors.changelog import ChangelogRecord, decode, encode
from actors.processor import PartitionProcessor, RawRecord
from chaos.oracle import LedgerEntry, accepted_events, expected_values
from features.block_merge import merge_blocks
from features.blocks import BlockLayout, block_field, blocks_of, decode_tiles
from features.demo import SOURCE, card_transactions_catalog
from features.errors import RejectReason
from features.hll import HyperLogLog
from features.keys import OnlineKey
from features.watermark import WatermarkState

CATALOG = card_transactions_catalog()
T0 = 1_764_000_000_000


def _stream(n: int, seed: int = 1) -> list[RawRecord]:
    rng = random.Random(seed)
    records, clock = [], T0
    for offset in range(n):
        clock += rng.randrange(0, 2_000)
        event_time = clock - (rng.randrange(0, 4_000) if rng.random() < 0.2 else 0)
        if rng.random() < 0.02:
            event_time = clock - 600_000  # late
        event = {
            "event_id": f"r-{offset}",
            "seq": offset,
            "event_type": "card_tx",
            "user_id": f"u_{rng.randrange(5):06d}",
            "merchant_id": f"m_{rng.randrange(3):05d}",
            "amount": round(rng.uniform(1, 200), 2),
            "currency": "USD",
            "event_time_ms": event_time,
        }
        value = b"{oops" if rng.random() < 0.02 else orjson.dumps(event)
        records.append(RawRecord(offset, event["user_id"].encode(), value))
    return records


def _store(changes: list[ChangelogRecord], store: dict[tuple[str, str], Any]) -> None:
    for change in changes:
        key, raw = encode(change)  # through the wire format, as the sinks see it
        w = decode(key, raw).write
        current = store.get((w.key, w.field))
        if current is None or w.version >= current.version:
            store[(w.key, w.field)] = w


def _served(
    store: dict[tuple[str, str], Any], view_name: str, entity: str, as_of: int
) -> dict[str, Any]:
    view = CATALOG.view(view_name)
    key = OnlineKey("default", view.name, view.version, entity).encode()
    layout = BlockLayout.for_view(view)
    fields = {f: w.value for (k, f), w in store.items() if k == key and w.value is not None}
    return merge_blocks(layout, [blocks_of(layout, fields)], as_of).entity(0)


NOW = T0 + 10**9  # the processor's clock: far enough ahead that no generated event is "future"


def _accepted_by_oracle(records: list[RawRecord]) -> list[dict[str, Any]]:
    """The shared, independent oracle's reading of partition 0's log."""
    ledger = [LedgerEntry(0, r.offset, r.value, NOW) for r in records]
    return accepted_events(ledger, CATALOG, SOURCE)


def _compare(served: dict[str, Any], expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        if isinstance(value, float):
            assert served[name] == pytest.approx(value, rel=1e-9), name
        else:
            assert served[name] == value, name


def test_served_values_equal_the_oracle_and_bad_events_are_dead_lettered() -> None:
    records = _stream(3_000)
    processor = PartitionProcessor(CATALOG, SOURCE, 0, now_ms=lambda: NOW)
    store: dict[tuple[str, str], Any] = {}
    dead = []
    for i in range(0, len(records), 250):
        outcome = processor.process(records[i : i + 250])
        dead.extend(outcome.dead_letters)
        _store(processor.drain_changes(), store)
    accepted = _accepted_by_oracle(records)
    assert len(dead) + len(accepted) == len(records), (
        "every event is either accepted or dead-lettered"
    )
    assert {d.reason for d in dead} == {RejectReason.BAD_JSON, RejectReason.LATE}
    as_of = max(e["event_time_ms"] for e in accepted)
    for user in {e["user_id"] for e in accepted}:
        _compare(
            _served(store, "user_spend", user, as_of),
            expected_values(accepted, CATALOG, "user_spend", user, as_of),
        )
    for merchant in {e["merchant_id"] for e in accepted}:
        _compare(
            _served(store, "merchant_activity", merchant, as_of),
            expected_values(accepted, CATALOG, "merchant_activity", merchant, as_of),
        )


def test_restore_from_the_changelog_continues_exactly() -> None:
    records = _stream(2_000, seed=5)
    clock = lambda: T0 + 10**9  # noqa: E731
    straight = PartitionProcessor(CATALOG, SOURCE, 2, clock)
    straight_store: dict[tuple[str, str], Any] = {}
    straight.process(records)
    _store(straight.drain_changes(), straight_store)

    first = PartitionProcessor(CATALOG, SOURCE, 2, clock)
    log: list[ChangelogRecord] = []
    first.process(records[:1_111])
    log.extend(first.drain_changes())
    restarted = PartitionProcessor(CATALOG, SOURCE, 2, clock)
    restarted.restore(log, WatermarkState.from_dict(first.state.watermark.to_dict()), 1_110)
    restarted.process(records[1_111:])
    log.extend(restarted.drain_changes())
    resumed_store: dict[tuple[str, str], Any] = {}
    _store(log, resumed_store)
    assert {k: w.value for k, w in resumed_store.items()} == {
        k: w.value for k, w in straight_store.items()
    }


def _tiles_by_batch_size(records: list[RawRecord], size: int) -> tuple[Any, Any, int]:
    processor = PartitionProcessor(CATALOG, SOURCE, 1, now_ms=lambda: NOW)
    store: dict[tuple[str, str], Any] = {}
    dead = 0
    for i in range(0, len(records), size):
        dead += len(processor.process(records[i : i + size]).dead_letters)
        _store(processor.drain_changes(), store)
    tiles = {
        (entity, tile): [_plain(s) for s in states]
        for entity, entity_tiles in processor.state.tiles.items()
        for tile, states in entity_tiles.items()
    }
    # A version is the newest offset folded into the block, or, for a block that only lost
    # expired tiles, the offset at the drain that found them expired, which depends on how often
    # one drains, not on the fold: the stored blocks and dead letters are compared, and the
    # versions must stay below the next offset.
    assert all(w.version <= processor.state.last_offset for w in store.values())
    stored = {k: w.value for k, w in store.items()}
    return tiles, stored, dead


def _plain(state: Any) -> Any:
    return state.to_bytes() if isinstance(state, HyperLogLog) else state


@pytest.mark.parametrize("seed", [3, 8])
def test_batched_fold_equals_the_per_event_fold_exactly(seed: int) -> None:
    """The per-batch grouped fold gives bitwise the tiles, changelog versions, stored values and
    dead letters of feeding the same log one event at a time (out-of-order and late included)."""
    records = _stream(1_500, seed=seed)
    one_by_one = _tiles_by_batch_size(records, 1)
    for size in (7, 250, 1_500):
        assert _tiles_by_batch_size(records, size) == one_by_one, size


def test_expired_tiles_are_deleted_once_and_live_ones_kept() -> None:
    processor = PartitionProcessor(CATALOG, SOURCE, 0, now_ms=lambda: NOW)
    event = {
        "event_id": "e-0",
        "seq": 0,
        "event_type": "card_tx",
        "user_id": "u_000001",
        "merchant_id": "m_00001",
        "amount": 3.5,
        "currency": "USD",
        "event_time_ms": T0,
    }
    processor.process([RawRecord(0, b"u", orjson.dumps(event))])
    processor.drain_changes()
    later = dict(
        event, event_id="e-1", seq=1, merchant_id="m_00002", event_time_ms=T0 + 2 * 3_600_000
    )
    processor.process([RawRecord(1, b"u", orjson.dumps(later))])
    changes = {r.write.key.split(":")[2]: r.write for r in processor.drain_changes()}
    view = CATALOG.view("user_spend")
    layout = BlockLayout.for_view(view)
    _partition, tiles = decode_tiles(layout, changes["user_spend"].value or b"")
    # Two hours on: the 10 s tile (5m window) and the 1 m tile (1h windows) of T0 dropped out of
    # the user's block; the 1 h (24h) and 4 h (7d) tiles of T0 are still read.
    old = {k for k in tiles if k[1] is not None and k[1] <= T0}
    assert old == {(3_600_000, T0 - T0 % 3_600_000), (14_400_000, T0 - T0 % 14_400_000)}
    assert changes["user_spend"].field == block_field(0)
    assert processor.drain_changes() == []
    # A day on, every window of merchant m_00001's only event has ended: its block is deleted.
    last = dict(later, event_id="e-2", seq=2, event_time_ms=T0 + 26 * 3_600_000)
    processor.process([RawRecord(2, b"u", orjson.dumps(last))])
    gone = [r.write for r in processor.drain_changes() if r.write.value is None]
    assert [(w.key.rsplit(":", 1)[1], w.field, w.version) for w in gone] == [
        ("m_00001", block_field(0), 2)
    ]


def test_a_record_without_value_is_dead_lettered_and_the_batch_goes_on() -> None:
    processor = PartitionProcessor(CATALOG, SOURCE, 0, now_ms=lambda: NOW)
    good = _stream(3, seed=2)
    tombstone = RawRecord(3, b"u_000001", None)  # type: ignore[arg-type]
    outcome = processor.process([*good, tombstone])
    assert [d.reason for d in outcome.dead_letters][-1] is RejectReason.BAD_JSON
    assert outcome.accepted + len(outcome.dead_letters) == 4
    assert processor.state.last_offset == 3


def _count_1h(changes: list[ChangelogRecord], as_of: int) -> int:
    store: dict[tuple[str, str], Any] = {}
    _store(changes, store)
    return int(_served(store, "user_spend", "u_000001", as_of)["tx_count_1h"])


def test_an_event_stamped_after_the_clock_is_counted_only_from_its_time_on() -> None:
    clock = [T0]
    processor = PartitionProcessor(CATALOG, SOURCE, 0, now_ms=lambda: clock[0])
    now = {"event_id": "e-0", "seq": 0, "event_type": "card_tx", "user_id": "u_000001"}
    now |= {"merchant_id": "m_00001", "amount": 1.0, "currency": "USD", "event_time_ms": T0}
    ahead = dict(now, event_id="e-1", seq=1, event_time_ms=T0 + 30_000)  # within the skew
    outcome = processor.process(
        [RawRecord(i, b"u", orjson.dumps(e)) for i, e in enumerate([ahead, now])]
    )
    assert outcome.accepted == 2
    log = processor.drain_changes()
    # A read as of any time before the event's never counts it, in its head tile or not.
    assert _count_1h(log, T0) == 1
    assert _count_1h(log, T0 + 29_999) == 1
    assert not processor.has_due()
    # A restart in between keeps the held event (it is in the changelog).
    restarted = PartitionProcessor(CATALOG, SOURCE, 0, now_ms=lambda: clock[0])
    restarted.restore(log, WatermarkState.from_dict(processor.state.watermark.to_dict()), 1)
    clock[0] = T0 + 30_000
    assert restarted.has_due()
    log += restarted.drain_changes()  # an idle partition: released at the drain
    assert _count_1h(log, T0 + 30_000) == 2
    assert restarted.state.pending == {}
    assert not restarted.has_due()


def test_a_configured_tenant_owns_every_key_the_processor_writes() -> None:
    records = _stream(300)
    default = PartitionProcessor(CATALOG, SOURCE, 0, now_ms=lambda: NOW)
    acme = PartitionProcessor(CATALOG, SOURCE, 0, now_ms=lambda: NOW, tenant="acme")
    default.process(records)
    acme.process(records)
    theirs = [c.write for c in default.drain_changes()]
    ours = [c.write for c in acme.drain_changes()]
    assert ours and all(OnlineKey.parse(w.key).tenant == "acme" for w in ours)
    # The same tiles, only under the tenant's key space.
    moved = [(w.key.replace("fl:default:", "fl:acme:", 1), w.field, w.value) for w in theirs]
    assert moved == [(w.key, w.field, w.value) for w in ours]
