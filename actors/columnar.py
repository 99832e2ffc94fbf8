"""The columnar batch path of :class:`~actors.processor.PartitionProcessor`: the consumer's.

A poll batch is validated as columns (``features.batch_validation``), its lateness decided for
all rows at once (``WatermarkPolicy.observe_many``), its events stamped after the clock held
back as the per-event path holds them, and its due events folded into each view's tiles with one
group-by per tile group (``features.batch_fold``). It changes the processor exactly as the
per-event path (``PartitionProcessor(..., columnar=False)``, the reference) does: the same
dead letters in the same order, the same tiles and states bit for bit, the same held events,
expiry heap, watermark and changes to drain (``tests/unit/actors/test_columnar.py``). A batch it
cannot represent (offsets not ascending, event times beyond ``SAFE_TIME_MS``) is left to the
per-event path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from actors.records import AcceptedEvents, BatchOutcome, SourceRecord
from features.batch_fold import BatchColumns, EntityTiles, fold_view
from features.batch_validation import BatchValidator
from features.errors import EventRejected, RejectReason

if TYPE_CHECKING:
    from actors.processor import PartitionProcessor, _View

_LATE = "event time is behind the watermark"  # the per-event path's detail, word for word


class ColumnarPath:
    """Processes whole batches for one processor; holds no state of its own. It is the
    processor's other half, kept in its own module for size: it works on the processor's
    state and helpers as the processor's own methods do."""

    def __init__(self, processor: PartitionProcessor) -> None:
        self._processor = processor
        views = processor._views
        self._validator = BatchValidator(
            processor.source,
            [v.key_field for v in views],
            processor._now_ms,
            max((v.max_id_bytes for v in views), default=128),
        )
        self._time_field = processor.source.event_time_field

    def process(self, records: Sequence[SourceRecord]) -> BatchOutcome | None:
        """The batch's outcome, or ``None`` (nothing changed) when the per-event path must
        take it."""
        p = self._processor
        if not records:
            return None
        offsets = np.fromiter((r.offset for r in records), np.int64, len(records))
        if not (offsets[1:] > offsets[:-1]).all():
            return None
        batch = self._validator.validate([r.value for r in records])
        times = np.array(batch.columns[self._time_field], dtype=np.int64)
        try:
            on_time = p._policy.observe_many(p.state.watermark, times)
        except ValueError:
            return None
        refused = batch.rejected
        if not on_time.all():
            late = EventRejected(RejectReason.LATE, _LATE)
            refused = sorted(
                [*refused, *((int(batch.rows[i]), late) for i in np.flatnonzero(~on_time))],
                key=_position,
            )
        reasons: dict[RejectReason, int] = {}
        for _, why in refused:
            reasons[why.reason] = reasons.get(why.reason, 0) + 1
        letters = [p._dead_letter(records[i], why) for i, why in refused]
        p.state.last_offset = int(offsets[-1])
        p.release_due()
        kept = np.flatnonzero(on_time)
        rows = BatchColumns(times, offsets[batch.rows], batch.columns)
        due = times[kept] <= p._now_ms()
        if not due.all():
            held = [(batch.events[i], int(times[i]), int(rows.offsets[i])) for i in kept[~due]]
            for view in p._views:
                p._defer(view, held)
            kept = kept[due]
        if len(kept) < len(rows):
            rows = rows.select(kept)
        for view in p._views:
            self._fold(view, rows)
        accepted = int(on_time.sum())
        handed = AcceptedEvents(
            batch.rows, batch.columns, None if accepted == len(on_time) else on_time
        )
        return BatchOutcome(letters, accepted, reasons, handed)

    def _fold(self, view: _View, rows: BatchColumns) -> None:
        p = self._processor
        name = view.ident
        tiles = p.state.tiles

        def tiles_of(entity: Any) -> EntityTiles:
            found = tiles.get((name, entity))
            if found is None:
                found = tiles[(name, entity)] = {}
            return found

        result = fold_view(view.groups, view.key_field, rows, tiles_of)
        changed = p._changed
        for entity, version, newest in zip(
            result.entities, result.versions, result.newest, strict=True
        ):
            change = changed.get((name, entity))
            if change is None:
                changed[(name, entity)] = (version, newest)
            else:
                changed[(name, entity)] = (max(version, change[0]), max(newest, change[1]))
        for entity_index, tile in result.created:
            p._track_expiry((name, result.entities[entity_index]), tile)


def _position(item: tuple[int, EventRejected]) -> int:
    return item[0]
