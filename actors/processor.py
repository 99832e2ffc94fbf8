"""The per-partition stream processor: raw records in; dead letters and tile changes out.

No Kafka, no Ray: a consumer actor feeds it records in partition order and ships what it returns.
Its state (watermark, tiles of every live entity, CUSUM detectors) is rebuilt on restart from the
changelog it emitted, so it holds nothing that is not also durable once a commit finished.

For each micro-batch:
1. for each record in partition order: validate (``features.validation``; a refusal becomes a
   dead letter with its reason), then apply the watermark rule (``features.watermark``; a late
   event becomes a dead letter ``late``). Both decisions depend only on the records before it, so
   they are taken for the whole batch before any tile changes;
2. hold back the accepted events stamped after the clock (``now_ms``) until it reaches them
   (:meth:`PartitionProcessor.release_due`, at every batch and drain), so a block never holds an
   event newer than any read of it; held events travel in the changelog (``pending_field``);
3. group the accepted events by (view, entity, tile) keeping partition order inside each group,
   and fold each group into its tile with the aggregators' ``agg_seq``, which equals folding the
   group's events one by one; tiles are independent of each other, so the states equal those of
   a per-event fold in partition order (the unit tests compare both on random batches);
4. remember which (view, entity) changed, with the newest offset folded into it as the change's
   version (raised when needed so versions of a field only grow, see ``_version``).
``drain_changes`` turns each changed (view, entity) into one changelog record holding its block
(``features.blocks``: every live tile this partition holds for it, *absolute* states), so replaying
records anywhere (a region catching up, a restart) never counts an event twice. Tiles no window
can read any more (found through a min-heap of expiry times, so a commit does not scan every live
tile) drop out of their entity's block, which is re-encoded; an entity left without tiles gets its
block field deleted.

Steps 1-3 are what this module does event by event; a consumer's batches take the columnar path
(``actors.columnar``: the same steps on the whole batch as arrays), which changes the state
exactly as they do. ``columnar=False`` keeps to the per-event path, the reference in tests.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from actors.changelog import HELD_PREFIX, ChangelogRecord
from actors.columnar import ColumnarPath
from actors.dlq import DeadLetter, dead_letter
from actors.records import AcceptedEvents, BatchOutcome, SourceRecord
from actors.records import RawRecord as RawRecord  # noqa: PLC0414 - re-exported
from features.batch_fold import BatchColumns
from features.blocks import (
    BlockLayout,
    TileKey,
    block_field,
    block_partition,
    decode_tiles,
    encode_block,
)
from features.catalog import Catalog, FeatureView
from features.errors import EventRejected, RejectReason
from features.exceptions import CorruptState
from features.keys import DEFAULT_TENANT, OnlineKey
from features.tile_groups import TileGroup, parse_field, tile_groups
from features.tiles import tile_start
from features.validation import EventValidator
from features.watermark import WatermarkPolicy, WatermarkState
from regions.tiles import TileWrite

# Tiles are kept a little past their last useful moment so that a late-but-accepted event still
# finds its tile: allowed lateness plus the watermark delay, plus one minute of slack.
_EVICTION_SLACK_MS = 60_000


@dataclass
class _View:
    view: FeatureView
    key_field: str
    groups: tuple[TileGroup, ...]
    max_id_bytes: int
    layout: BlockLayout
    # The view version's name in the processor's state: two versions of one view (a rollout,
    # ``features.rollout``) are computed side by side and never share state.
    ident: str = field(init=False)

    def __post_init__(self) -> None:
        self.ident = view_ident(self.view.name, self.view.version)


EntityId = tuple[str, str]  # view ident (view_ident), entity id
TileId = tuple[str, str, int | None, int | None]  # view ident, entity id, tile_ms, tile start
_Change = tuple[int, int]  # (version: newest offset folded in, newest event time folded in)
_Accepted = tuple[dict[str, Any], int, int]  # (event, event time, offset)
# Bounds the encoded-key cache; it is only a cache, so clearing it when full is always correct.
_KEY_CACHE_MAX = 100_000


@dataclass
class ProcessorState:
    watermark: WatermarkState = field(default_factory=WatermarkState)
    # Per (view, entity): its live tiles, keyed like ``features.blocks.encode_block`` takes them.
    tiles: dict[EntityId, dict[TileKey, list[Any]]] = field(default_factory=dict)
    # The newest version written per (view, entity, field) where the next one could not simply
    # be a newer offset (see ``_version``).
    versions: dict[tuple[str, str, str], int] = field(default_factory=dict)
    last_offset: int = -1
    # (expires at, tile) for every tiled tile ever created since the last restore; an entry whose
    # tile is gone (evicted or restored as deleted) is skipped when it comes up.
    expiry: list[tuple[int, TileId]] = field(default_factory=list)
    # Per (view, entity): accepted events stamped after the processor's clock, not folded yet.
    pending: dict[EntityId, list[_Accepted]] = field(default_factory=dict)
    # (event time, entity) for every pending event: when it falls due.
    due: list[tuple[int, EntityId]] = field(default_factory=list)


class PartitionProcessor:
    """State machine of one source partition. Not thread-safe; one actor owns one instance."""

    def __init__(
        self,
        catalog: Catalog,
        source_name: str,
        partition: int,
        now_ms: Callable[[], int],
        *,
        columnar: bool = True,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """``columnar=False`` processes every batch event by event: the reference the columnar
        path (``actors.columnar``) is tested against. ``tenant`` is the key space written."""
        self.source = catalog.source(source_name)
        self.tenant = tenant
        self.partition = partition
        self._views = [
            _View(
                v,
                v.key_field(catalog),
                tile_groups(v),
                catalog.entity(v.entity).max_id_bytes,
                BlockLayout.for_view(v),
            )
            for v in catalog.computed_views
            if v.source == source_name
        ]
        keys = [v.key_field for v in self._views]
        max_id = max((v.max_id_bytes for v in self._views), default=128)
        self._validator = EventValidator(self.source, keys, now_ms, max_id)
        self._now_ms = now_ms
        self._policy = WatermarkPolicy(
            self.source.out_of_orderness_ms, self.source.allowed_lateness_ms
        )
        self._views_by_name = {v.ident: v for v in self._views}
        self._group_index = {(v.ident, g.tile_ms): g for v in self._views for g in v.groups}
        self._spans = {k: g.span_ms or 0 for k, g in self._group_index.items()}
        self.state = ProcessorState()
        self._changed: dict[EntityId, _Change] = {}
        self._pending_changed: set[EntityId] = set()
        self._keys: dict[tuple[str, str], str] = {}
        # Per (view, entity): the live fields of the older per-tile layout a restore converted
        # into its tiles; the next drain deletes them (before publishing the entity's block).
        self._legacy: dict[EntityId, set[str]] = {}
        self._columnar = ColumnarPath(self) if columnar else None

    @property
    def watermark_ms(self) -> int:
        return self._policy.watermark(self.state.watermark)

    def process(self, records: Iterable[SourceRecord]) -> BatchOutcome:
        if self._columnar is not None:
            records = records if isinstance(records, Sequence) else list(records)
            outcome = self._columnar.process(records)
            if outcome is not None:
                return outcome
        dead: list[DeadLetter] = []
        reasons: dict[RejectReason, int] = {}
        accepted: list[_Accepted] = []
        validate, observe = self._validator.validate, self._policy.observe
        watermark, time_field = self.state.watermark, self.source.event_time_field
        offset = self.state.last_offset
        positions: list[int] = []
        for position, record in enumerate(records):
            offset = record.offset
            try:
                event = validate(record.value)
                event_time = event[time_field]
                if not observe(watermark, event_time):
                    raise EventRejected(RejectReason.LATE, "event time is behind the watermark")
            except EventRejected as rejected:
                reasons[rejected.reason] = reasons.get(rejected.reason, 0) + 1
                dead.append(self._dead_letter(record, rejected))
                continue
            accepted.append((event, event_time, offset))
            positions.append(position)
        self.state.last_offset = offset
        self.release_due()
        now = self._now_ms()
        ready = accepted
        if any(item[1] > now for item in accepted):
            ready = [item for item in accepted if item[1] <= now]
            future = [item for item in accepted if item[1] > now]
            for view in self._views:
                self._defer(view, future)
        for view in self._views:
            self._fold_view(view, ready)
        handed = AcceptedEvents.of_events(
            positions, [item[0] for item in accepted], tuple(self.source.fields)
        )
        return BatchOutcome(dead, len(accepted), reasons, handed)

    def _defer(self, view: _View, future: list[_Accepted]) -> None:
        """Hold events stamped after the clock out of the tiles until it reaches them: a block
        read as of ``t`` may then count every event of a tile up to ``t`` without counting one
        stamped after ``t`` (the head tile would otherwise hold events from up to the allowed
        future skew ahead). They travel in the changelog (:func:`pending_field`), so a restart
        keeps them."""
        name, key_field = view.ident, view.key_field
        for item in future:
            entity_id = (name, item[0][key_field])
            self.state.pending.setdefault(entity_id, []).append(item)
            heapq.heappush(self.state.due, (item[1], entity_id))
            self._pending_changed.add(entity_id)

    def has_due(self) -> bool:
        """Whether a drain has work without new records (the consumer then commits, even idle):
        some held event's time has come, or a restore converted older-layout fields."""
        if self._legacy:
            return True
        return bool(self.state.due) and self.state.due[0][0] <= self._now_ms()

    def release_due(self) -> None:
        """Fold the held events whose time has come, in their partition order."""
        now, due = self._now_ms(), self.state.due
        entities = set()
        while due and due[0][0] <= now:
            entities.add(heapq.heappop(due)[1])
        for entity_id in sorted(entities):
            held = self.state.pending.pop(entity_id, [])
            ready = [item for item in held if item[1] <= now]
            later = [item for item in held if item[1] > now]
            if later:
                self.state.pending[entity_id] = later
            self._pending_changed.add(entity_id)
            self._fold_view(self._view(entity_id[0]), sorted(ready, key=_offset))
            change = self._changed.get(entity_id)
            if change is not None:  # held events have older offsets than what was written since
                self._changed[entity_id] = (max(change[0], self.state.last_offset), change[1])

    def _dead_letter(self, record: SourceRecord, rejected: EventRejected) -> DeadLetter:
        return dead_letter(
            record.key,
            b"" if record.value is None else record.value,  # a null value is dead-lettered empty
            topic=self.source.topic,
            partition=self.partition,
            offset=record.offset,
            error=rejected,
        )

    def _fold_view(self, view: _View, accepted: list[_Accepted]) -> None:
        """Fold a batch into one view's tiles: per entity, per group, per tile, in batch order."""
        by_entity: dict[str, list[_Accepted]] = {}
        key_field = view.key_field
        for item in accepted:
            entity = item[0][key_field]
            bucket = by_entity.get(entity)
            if bucket is None:
                by_entity[entity] = [item]
            else:
                bucket.append(item)
        name = view.ident
        for entity, items in by_entity.items():
            entity_id = (name, entity)
            tiles = self.state.tiles.get(entity_id)
            if tiles is None:
                tiles = self.state.tiles[entity_id] = {}
            for group in view.groups:
                tile_ms = group.tile_ms
                if tile_ms is None:
                    self._fold_tile(entity_id, tiles, (None, None), group, items)
                    continue
                by_tile: dict[int, list[_Accepted]] = {}
                for item in items:
                    start = tile_start(item[1], tile_ms)
                    tile = by_tile.get(start)
                    if tile is None:
                        by_tile[start] = [item]
                    else:
                        tile.append(item)
                for start, tile_items in by_tile.items():
                    self._fold_tile(entity_id, tiles, (tile_ms, start), group, tile_items)

    def _fold_tile(
        self,
        entity_id: EntityId,
        tiles: dict[TileKey, list[Any]],
        tile: TileKey,
        group: TileGroup,
        items: list[_Accepted],
    ) -> None:
        states = tiles.get(tile)
        if states is None:
            states = tiles[tile] = group.initial_states()
            self._track_expiry(entity_id, tile)
        events = [item[0] for item in items]
        times = [item[1] for item in items]
        offsets = [item[2] for item in items]
        group.fold(states, events, times, offsets)
        newest = max(times)
        change = self._changed.get(entity_id)
        if change is not None and change[1] > newest:
            newest = change[1]
        version = offsets[-1] if change is None else max(offsets[-1], change[0])
        self._changed[entity_id] = (version, newest)

    def _track_expiry(self, entity_id: EntityId, tile: TileKey) -> None:
        if tile[1] is not None:
            tile_id = (entity_id[0], entity_id[1], tile[0], tile[1])
            heapq.heappush(self.state.expiry, (self._expires_at(tile_id), tile_id))

    def drain_changes(self) -> list[ChangelogRecord]:
        """One record per (view, entity) changed or evicted from since the last drain: its block
        (absolute states), or a delete of its block field once it holds no tile."""
        self.release_due()
        changed, self._changed = self._changed, {}
        watermark = self.watermark_ms
        for entity_id in self._evict():
            if entity_id not in changed:  # evictions only: newer than anything written before
                changed[entity_id] = (max(self.state.last_offset, 0), watermark)
        # Deletes of converted older-layout fields go first: a restore replays the log in order,
        # so the entity's block after them (holding the converted tiles) is what it rebuilds.
        records = self._legacy_deletes()
        records += [self._record(entity_id, change) for entity_id, change in changed.items()]
        records += [self._pending_record(entity_id) for entity_id in sorted(self._pending_changed)]
        self._pending_changed.clear()
        return records

    def _legacy_deletes(self) -> list[ChangelogRecord]:
        records = []
        version = self.state.last_offset + 1  # above any write made before the restore
        for (view_name, entity), fields in sorted(self._legacy.items()):
            view = self._view(view_name)
            for name in sorted(fields):
                slot = (view_name, entity, name)
                write = TileWrite(
                    key=self._key(view, entity),
                    field=name,
                    value=None,
                    version=max(version, self.state.versions.pop(slot, -1) + 1),
                    ttl_ms=view.view.ttl_ms,
                )
                records.append(ChangelogRecord(write, self.watermark_ms))
        self._legacy.clear()
        return records

    def _pending_record(self, entity_id: EntityId) -> ChangelogRecord:
        view = self._view(entity_id[0])
        held = self.state.pending.get(entity_id)
        value = None if not held else orjson.dumps([list(item) for item in held])
        write = TileWrite(
            key=self._key(view, entity_id[1]),
            field=pending_field(self.partition),
            value=value,
            version=self._version(entity_id, pending_field(self.partition), self.state.last_offset),
            ttl_ms=view.view.ttl_ms,
        )
        return ChangelogRecord(write, self.watermark_ms)

    def _version(self, entity_id: EntityId, field_name: str, candidate: int) -> int:
        """The version of the next write of one field: ``candidate`` (the newest offset folded
        in, or the last offset read for a write made at a drain), raised above the field's
        previous write. Releases and evictions at drains of an idle partition share one last
        offset, so without the raise a second such write would tie and be refused by the
        stores. A write above the last offset is remembered (a later offset might not exceed
        it); any other is exceeded by every later offset, so it need not be."""
        slot = (entity_id[0], entity_id[1], field_name)
        version = max(candidate, self.state.versions.get(slot, -1) + 1, 0)
        if version > self.state.last_offset:
            self.state.versions[slot] = version
        else:
            self.state.versions.pop(slot, None)
        return version

    def _record(self, entity_id: EntityId, change: _Change) -> ChangelogRecord:
        view_name, entity = entity_id
        view = self._view(view_name)
        tiles = self.state.tiles.get(entity_id)
        value = None
        if tiles:
            value = encode_block(view.layout, self.partition, tiles)
        else:
            self.state.tiles.pop(entity_id, None)
        write = TileWrite(
            key=self._key(view, entity),
            field=block_field(self.partition),
            value=value,
            version=self._version(entity_id, block_field(self.partition), change[0]),
            ttl_ms=view.view.ttl_ms,
        )
        return ChangelogRecord(write, change[1])

    def _evict(self) -> set[EntityId]:
        """Drop tiles no window can read any more (relative to the watermark); the entities
        they belonged to."""
        horizon = self.watermark_ms - self.source.allowed_lateness_ms - _EVICTION_SLACK_MS
        heap, tiles = self.state.expiry, self.state.tiles
        touched = set()
        while heap and heap[0][0] < horizon:
            view_name, entity, tile_ms, start = heapq.heappop(heap)[1]
            entity_tiles = tiles.get((view_name, entity))
            if entity_tiles is not None and entity_tiles.pop((tile_ms, start), None) is not None:
                touched.add((view_name, entity))
        return touched

    def _expires_at(self, tile_id: TileId) -> int:
        return (tile_id[3] or 0) + self._spans[(tile_id[0], tile_id[2])]

    def _view(self, name: str) -> _View:
        return self._views_by_name[name]

    def _key(self, view: _View, entity: str) -> str:
        cached = self._keys.get((view.ident, entity))
        if cached is None:
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            online = OnlineKey(self.tenant, view.view.name, view.view.version, entity)
            cached = self._keys[(view.ident, entity)] = online.encode(
                max_id_bytes=view.max_id_bytes
            )
        return cached

    def backfill(self, ident: str, rows: BatchColumns) -> int:
        """Fold already-accepted events of this partition (``rows``, in offset order, all at or
        below the last offset) into the one view version ``ident``, replacing whatever this
        partition held for it: no validation, no watermark (they were accepted once), so the
        version's tiles become those of a processor that computed it from the first of them.
        Events stamped after the clock are held as the live path holds them (with only the fields
        the view reads: the offline table has no others to give); the next drain
        publishes every block it changed (``actors.backfill``). Returns the events folded."""
        view, total = self._view(ident), len(rows)
        stale = [e for e in self.state.tiles if e[0] == ident]
        stale += [e for e in self.state.pending if e[0] == ident]
        for entity_id in stale:  # an earlier incarnation of this version: replaced, not added to
            self.state.tiles.pop(entity_id, None)
            if self.state.pending.pop(entity_id, None) is not None:
                self._pending_changed.add(entity_id)
        due = rows.times <= self._now_ms()
        if not due.all():
            self._defer(view, self._items(view, rows, np.flatnonzero(~due)))
            rows = rows.select(np.flatnonzero(due))
        if len(rows):  # the consumer's fold, for a processor on the per-event path too
            (self._columnar or ColumnarPath(self))._fold(view, rows)
        above = self.state.last_offset + 1  # above any write of the replaced state
        for entity_id in stale:
            change = self._changed.get(entity_id)
            self._changed[entity_id] = (above, self.watermark_ms if change is None else change[1])
        return total

    def _items(self, view: _View, rows: BatchColumns, picked: Iterable[int]) -> list[_Accepted]:
        """Rows as the per-event path's (event, event time, offset) items, holding the fields
        the view reads."""
        features = (f.column for f in view.view.features if f.column)
        names = list(dict.fromkeys([view.key_field, self.source.event_time_field, *features]))
        columns = {name: rows.values(name) for name in names}
        return [
            ({n: columns[n][i] for n in names}, int(rows.times[i]), int(rows.offsets[i]))
            for i in picked
        ]

    def restore(
        self, records: Sequence[ChangelogRecord], watermark: WatermarkState, last_offset: int
    ) -> None:
        """Rebuild state from this partition's changelog (in log order) and committed metadata."""
        self.state = ProcessorState(watermark=watermark, last_offset=last_offset)
        self._changed.clear()
        self._pending_changed.clear()
        self._legacy.clear()
        newest: dict[EntityId, int] = {}
        for record in records:
            legacy = self._restore_one(record.write, self._views_by_name)
            if legacy is not None:
                newest[legacy] = max(newest.get(legacy, record.event_time_ms), record.event_time_ms)
        for entity_id in list(self._legacy):
            if self._legacy[entity_id]:  # republish as a block, above any earlier write
                self._changed[entity_id] = (self.state.last_offset + 1, newest[entity_id])
            else:
                del self._legacy[entity_id]
                if not self.state.tiles.get(entity_id):
                    self.state.tiles.pop(entity_id, None)

    def _restore_one(self, write: TileWrite, views: dict[str, _View]) -> EntityId | None:
        """Apply one changelog write to the state; the entity if it was an older-layout one."""
        key = OnlineKey.parse(write.key)
        ident = view_ident(key.view, key.version)
        view = views.get(ident)
        if view is None:
            return None  # a view version this catalog does not compute: not ours to rebuild
        entity_id = (ident, key.entity_id)
        if write.version > self.state.last_offset:
            self.state.versions[(ident, key.entity_id, write.field)] = write.version
        if write.field == pending_field(self.partition):
            self._restore_pending(entity_id, write.value)
            return None
        partition = block_partition(write.field)
        if partition is None:
            return self._restore_legacy(entity_id, write)
        if partition != self.partition:
            return None  # another partition's block
        if write.value is None:
            self.state.tiles.pop(entity_id, None)
            return None
        _partition, tiles = decode_tiles(view.layout, write.value)
        known = self.state.tiles.get(entity_id, {})
        self.state.tiles[entity_id] = tiles
        for tile in tiles:
            if tile not in known:  # already in the expiry heap
                self._track_expiry(entity_id, tile)
        return None

    def _restore_legacy(self, entity_id: EntityId, write: TileWrite) -> EntityId | None:
        """One field of the older per-tile layout (``features.tile_groups``: one field per
        (group, tile, partition)), written by a processor before the upgrade to blocks: its tile
        joins the entity's tiles (a later record of the same tile replaces it, a delete removes
        it), so an upgraded deployment keeps its history."""
        try:
            tile_ms, partition, start = parse_field(write.field)
        except CorruptState:
            return None  # no tile field of any layout: nothing to rebuild
        group = self._group_index.get((entity_id[0], tile_ms))
        if partition != self.partition or group is None:
            return None
        fields = self._legacy.setdefault(entity_id, set())
        tiles = self.state.tiles.setdefault(entity_id, {})
        tile = (tile_ms, start)
        if write.value is None:
            fields.discard(write.field)
            tiles.pop(tile, None)
            return entity_id
        if tile not in tiles:
            self._track_expiry(entity_id, tile)
        tiles[tile] = group.decode(write.value)
        fields.add(write.field)
        return entity_id

    def _restore_pending(self, entity_id: EntityId, value: bytes | None) -> None:
        self.state.pending.pop(entity_id, None)
        if value is None:
            return
        held = [(event, int(time), int(offset)) for event, time, offset in orjson.loads(value)]
        self.state.pending[entity_id] = held
        for item in held:  # an entry already in the heap only makes a release find nothing
            heapq.heappush(self.state.due, (item[1], entity_id))


def view_ident(view: str, version: int) -> str:
    """``<view>@v<version>``: the key of one view version's state."""
    return f"{view}@v{version}"


def pending_field(partition: int) -> str:
    """The changelog field of the events ``partition`` holds for one (view, entity) until the
    clock reaches them: restore state, which sinks skip (``actors.changelog.is_restore_state``)."""
    return f"{HELD_PREFIX}{partition}"


def _offset(item: _Accepted) -> int:
    return item[2]
