"""An in-place upgrade from the per-tile store layout (``features.tile_groups``: one field per
(group, tile, partition)) to blocks keeps every tile: a processor restored from an old-layout
changelog publishes blocks whose merge equals the old layout's read, deletes the old fields, and a
second restart rebuilds the same state with nothing left to convert."""

from __future__ import annotations

from typing import Any

from actors.changelog import ChangelogRecord
from actors.processor import PartitionProcessor, RawRecord
from features.block_merge import merge_blocks
from features.blocks import BlockLayout, block_field, blocks_of
from features.demo import SOURCE, card_transactions_catalog
from features.hll import HyperLogLog
from features.keys import OnlineKey
from features.tile_groups import read_view, tile_groups
from features.watermark import WatermarkState
from regions.tiles import TileWrite
from tests.unit.actors.test_processor import NOW, _store, _stream
from tests.unit.features.test_blocks import _bits

CATALOG = card_transactions_catalog()
PARTITION = 3
TTL = 86_400_000


def _old_layout_log(
    processor: PartitionProcessor, partition: int, last: int
) -> tuple[list[ChangelogRecord], dict[tuple[str, str], dict[str, bytes]]]:
    """What a processor of the per-tile layout published for the same tiles: one record per
    (group, tile) field, preceded by records the old layout wrote and later replaced or deleted;
    and the fields a store of that layout holds at the end, per (view, entity)."""
    log: list[ChangelogRecord] = []
    stored: dict[tuple[str, str], dict[str, bytes]] = {}
    for (ident, entity), tiles in sorted(processor.state.tiles.items()):
        view_name = ident.partition("@")[0]
        view = CATALOG.view(view_name)
        key = OnlineKey("default", view_name, view.version, entity).encode()
        groups = {g.tile_ms: g for g in tile_groups(view)}
        fields = stored.setdefault((view_name, entity), {})
        for (tile_ms, start), states in tiles.items():
            group = groups[tile_ms]
            name = group.field(partition, start)
            stale = group.encode(group.initial_states())  # replaced by the later record
            fields[name] = group.encode(states)
            for version, value in ((0, stale), (last, fields[name])):
                log.append(ChangelogRecord(TileWrite(key, name, value, version, TTL), 1))
        tiled = groups[min(t for t in groups if t is not None)]
        gone = tiled.field(partition, -tiled.tile_ms)  # written, then evicted by the old layout
        for version, value in ((0, tiled.encode(tiled.initial_states())), (last, None)):
            log.append(ChangelogRecord(TileWrite(key, gone, value, version, TTL), 1))
        other = tiled.field(partition + 1, 0)  # another partition's field: not this one's
        log.append(ChangelogRecord(TileWrite(key, other, b"\x00", last, TTL), 1))
    return log, stored


def test_an_old_layout_changelog_is_republished_as_blocks_that_read_the_same() -> None:
    records = _stream(1_500, seed=11)
    built = PartitionProcessor(CATALOG, SOURCE, PARTITION, now_ms=lambda: NOW)
    built.process(records)
    built.drain_changes()
    last = records[-1].offset
    old_log, old_fields = _old_layout_log(built, PARTITION, last)
    watermark = built.state.watermark.to_dict()

    upgraded = PartitionProcessor(CATALOG, SOURCE, PARTITION, now_ms=lambda: NOW)
    upgraded.restore(old_log, WatermarkState.from_dict(watermark), last)
    assert upgraded.has_due(), "an idle partition publishes the conversion at its next commit"
    published = upgraded.drain_changes()

    store: dict[tuple[str, str], Any] = {}
    _store(old_log + published, store)
    as_of = built.watermark_ms
    for (view_name, entity), fields in old_fields.items():
        view = CATALOG.view(view_name)
        key = OnlineKey("default", view_name, view.version, entity).encode()
        layout = BlockLayout.for_view(view)
        live = {f: w.value for (k, f), w in store.items() if k == key and w.value is not None}
        live = {f: v for f, v in live.items() if f == block_field(PARTITION) or "@0" not in f}
        # The old fields are deleted (above every old version), only the block is left.
        assert {f for f in live if f.endswith(f"_p{PARTITION}")} == {block_field(PARTITION)}
        expected = read_view(layout.groups, fields, as_of)
        merged = merge_blocks(layout, [blocks_of(layout, live)], as_of).entity(0)
        assert {k: _bits(v) for k, v in merged.items()} == {
            k: _bits(v) for k, v in expected.items()
        }, (view_name, entity)

    # The restored tiles are those the old fields held; a restart after the upgrade's commit
    # rebuilds them from the blocks alone and has nothing left to convert.
    assert upgraded.state.tiles.keys() == built.state.tiles.keys()
    again = PartitionProcessor(CATALOG, SOURCE, PARTITION, now_ms=lambda: NOW)
    again.restore(old_log + published, WatermarkState.from_dict(watermark), last)
    assert not again.has_due()
    assert again.drain_changes() == []
    assert _plain(again) == _plain(upgraded)

    # And it goes on folding new events into the converted tiles, versions above the upgrade's.
    more = [RawRecord(r.offset + last + 1, r.key, r.value) for r in _stream(200, seed=12)]
    again.process(more)
    assert all(r.write.version > last for r in again.drain_changes())


def _plain(processor: PartitionProcessor) -> dict[Any, Any]:
    return {
        entity: {
            tile: [s.to_bytes() if isinstance(s, HyperLogLog) else s for s in states]
            for tile, states in tiles.items()
        }
        for entity, tiles in processor.state.tiles.items()
    }
