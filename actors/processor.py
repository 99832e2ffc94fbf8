"""The per-partition stream processor: raw records in; dead letters and tile changes out.

No Kafka, no Ray: a consumer actor feeds it records in partition order and ships what it returns.
Its state (watermark, tiles of every live entity, CUSUM detectors) is rebuilt on restart from the
changelog it emitted, so it holds nothing that is not also durable once a commit finished.

For each record, in partition order:
1. validate (``features.validation``); a refusal becomes a dead letter with its reason;
2. apply the watermark rule (``features.watermark``); a late event becomes a dead letter ``late``;
3. fold the event into every view of the source: one tile per tile group of the view, plus the
   unwindowed group (last value, CUSUM);
4. remember which (view, entity, tile) changed, with the record's offset as the change's version.
``drain_changes`` turns the changed tiles into changelog records holding *absolute* tile states,
so replaying them anywhere (a region catching up, a restart) never counts an event twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from actors.changelog import ChangelogRecord
from actors.dlq import DeadLetter, dead_letter
from features.catalog import Catalog, FeatureView
from features.errors import EventRejected, RejectReason
from features.keys import OnlineKey
from features.tile_groups import TileGroup, parse_field, tile_groups
from features.tiles import tile_start
from features.validation import EventValidator
from features.watermark import WatermarkPolicy, WatermarkState
from regions.tiles import TileWrite

TENANT = "default"
# Tiles are kept a little past their last useful moment so that a late-but-accepted event still
# finds its tile: allowed lateness plus the watermark delay, plus one minute of slack.
_EVICTION_SLACK_MS = 60_000


class RawRecord(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes


@dataclass
class _View:
    view: FeatureView
    key_field: str
    groups: tuple[TileGroup, ...]
    max_id_bytes: int


TileId = tuple[str, str, int | None, int | None]  # view, entity id, tile_ms, tile start


@dataclass
class _Change:
    version: int
    event_time_ms: int


@dataclass
class ProcessorState:
    watermark: WatermarkState = field(default_factory=WatermarkState)
    tiles: dict[TileId, list[Any]] = field(default_factory=dict)
    last_offset: int = -1


@dataclass
class BatchOutcome:
    dead_letters: list[DeadLetter]
    accepted: int
    rejected_by_reason: dict[RejectReason, int]


class PartitionProcessor:
    """State machine of one source partition. Not thread-safe; one actor owns one instance."""

    def __init__(
        self, catalog: Catalog, source_name: str, partition: int, now_ms: Callable[[], int]
    ) -> None:
        self.source = catalog.source(source_name)
        self.partition = partition
        self._views = [
            _View(v, v.key_field(catalog), tile_groups(v), catalog.entity(v.entity).max_id_bytes)
            for v in catalog.views
            if v.source == source_name
        ]
        keys = [v.key_field for v in self._views]
        max_id = max((v.max_id_bytes for v in self._views), default=128)
        self._validator = EventValidator(self.source, keys, now_ms, max_id)
        self._policy = WatermarkPolicy(
            self.source.out_of_orderness_ms, self.source.allowed_lateness_ms
        )
        self._views_by_name = {v.view.name: v for v in self._views}
        self._group_index = {(v.view.name, g.tile_ms): g for v in self._views for g in v.groups}
        self.state = ProcessorState()
        self._changed: dict[TileId, _Change] = {}

    @property
    def watermark_ms(self) -> int:
        return self._policy.watermark(self.state.watermark)

    def process(self, records: Iterable[RawRecord]) -> BatchOutcome:
        dead: list[DeadLetter] = []
        reasons: dict[RejectReason, int] = {}
        accepted = 0
        for record in records:
            self.state.last_offset = record.offset
            try:
                event = self._validator.validate(record.value)
                if not self._policy.observe(
                    self.state.watermark, event[self.source.event_time_field]
                ):
                    raise EventRejected(RejectReason.LATE, "event time is behind the watermark")
            except EventRejected as rejected:
                reasons[rejected.reason] = reasons.get(rejected.reason, 0) + 1
                dead.append(self._dead_letter(record, rejected))
                continue
            self._fold(event, record.offset)
            accepted += 1
        return BatchOutcome(dead, accepted, reasons)

    def _dead_letter(self, record: RawRecord, rejected: EventRejected) -> DeadLetter:
        return dead_letter(
            record.key,
            record.value,
            topic=self.source.topic,
            partition=self.partition,
            offset=record.offset,
            error=rejected,
        )

    def _fold(self, event: dict[str, Any], offset: int) -> None:
        event_time = event[self.source.event_time_field]
        for view in self._views:
            entity = event[view.key_field]
            for group in view.groups:
                start = None if group.tile_ms is None else tile_start(event_time, group.tile_ms)
                tile_id = (view.view.name, entity, group.tile_ms, start)
                states = self.state.tiles.get(tile_id)
                if states is None:
                    states = self.state.tiles[tile_id] = group.initial_states()
                for i, (feature, aggregator) in enumerate(
                    zip(group.features, group.aggregators, strict=True)
                ):
                    value = 1 if feature.column is None else event[feature.column]
                    states[i] = aggregator.agg(states[i], value, event_time, offset)
                change = self._changed.get(tile_id)
                newest = event_time if change is None else max(change.event_time_ms, event_time)
                self._changed[tile_id] = _Change(offset, newest)

    def drain_changes(self) -> list[ChangelogRecord]:
        """Changed tiles since the last drain, as absolute states; expired tiles as deletes."""
        records = [self._record(tile_id, change) for tile_id, change in self._changed.items()]
        self._changed.clear()
        records.extend(self._evict())
        return records

    def _record(self, tile_id: TileId, change: _Change) -> ChangelogRecord:
        view_name, entity, tile_ms, start = tile_id
        group = self._group_index[(view_name, tile_ms)]
        view = self._view(view_name)
        write = TileWrite(
            key=self._key(view, entity),
            field=group.field(self.partition, start),
            value=group.encode(self.state.tiles[tile_id]),
            version=change.version,
            ttl_ms=view.view.ttl_ms,
        )
        return ChangelogRecord(write, change.event_time_ms)

    def _evict(self) -> list[ChangelogRecord]:
        """Drop tiles no window can read any more (relative to the watermark) and emit deletes."""
        watermark = self.watermark_ms
        horizon = watermark - self.source.allowed_lateness_ms - _EVICTION_SLACK_MS
        expired = [
            tile_id
            for tile_id in self.state.tiles
            if tile_id[3] is not None and self._expires_at(tile_id) < horizon
        ]
        records = []
        for tile_id in expired:
            view_name, entity, tile_ms, start = tile_id
            group = self._group_index[(view_name, tile_ms)]
            view = self._view(view_name)
            write = TileWrite(
                self._key(view, entity),
                group.field(self.partition, start),
                None,
                max(self.state.last_offset, 0),
                view.view.ttl_ms,
            )
            records.append(ChangelogRecord(write, watermark))
            del self.state.tiles[tile_id]
        return records

    def _expires_at(self, tile_id: TileId) -> int:
        group = self._group_index[(tile_id[0], tile_id[2])]
        return (tile_id[3] or 0) + (group.span_ms or 0)

    def _view(self, name: str) -> _View:
        return self._views_by_name[name]

    def _key(self, view: _View, entity: str) -> str:
        online = OnlineKey(TENANT, view.view.name, view.view.version, entity)
        return online.encode(max_id_bytes=view.max_id_bytes)

    def restore(
        self, records: Sequence[ChangelogRecord], watermark: WatermarkState, last_offset: int
    ) -> None:
        """Rebuild state from this partition's changelog (in log order) and committed metadata."""
        self.state = ProcessorState(watermark=watermark, last_offset=last_offset)
        self._changed.clear()
        for record in records:
            self._restore_one(record.write, self._views_by_name)

    def _restore_one(self, write: TileWrite, views: dict[str, _View]) -> None:
        key = OnlineKey.parse(write.key)
        view = views.get(key.view)
        if view is None or view.view.version != key.version:
            return  # another view version's tiles: not ours to rebuild
        tile_ms, partition, start = parse_field(write.field)
        if partition != self.partition:
            return
        tile_id = (key.view, key.entity_id, tile_ms, start)
        if write.value is None:
            self.state.tiles.pop(tile_id, None)
        else:
            self.state.tiles[tile_id] = self._group_index[(key.view, tile_ms)].decode(write.value)
