"""Logged answers recomputed offline with the training-set code (``training.asof.as_of_values``).

For each answer (``regions.answer_log.AnswerEntry``), from the raw events of one pinned snapshot
(with ``_ingested_at_ms``), as of the answer's request time ``as_of_ms``:

- ``truth``: every event with ``event_time <= as_of_ms``, whenever it was ingested;
- ``known``: those ingested before the request (``_ingested_at_ms < as_of_ms``), computed only for
  answers that are not ``truth``;
- ``watermark``: the known ones with ``event_time <= watermark_ms`` (none when the answer had no
  watermark), computed only for answers that are not ``known`` either, with ``lag_ms``: the
  request time minus the earliest ingest time of the known events above the watermark (what the
  store had not applied yet).

Answers of one view are computed together: ``truth`` in one call over their distinct (entity,
request time) rows; ``known`` and ``watermark`` in one call each, over a table in which each
needed row's own events carry a key of their own (so one vectorised pass honours a different
ingest cutoff and watermark per row). See :mod:`training.validate` for how they are judged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from features.catalog import Catalog, Feature, FeatureView
from regions.answer_log import AnswerEntry
from training.asof import Columns, Values, as_of_values
from training.events import INGESTED_AT
from training.spec import parse_features
from training.validate import Offline, Recomputed, Tolerance, matches

Ints = npt.NDArray[np.int64]
_ROW_KEY = "\x00row{}"  # a relabelled row's key: no entity id holds a NUL


@dataclass(frozen=True)
class _View:
    view: FeatureView
    features: tuple[Feature, ...]
    columns: Columns


@dataclass(frozen=True)
class _Rows:
    """Distinct offline rows (entity, time, and for relabelled rows the event filter) and, per
    entry, the index of its row."""

    keys: list[str]
    ts: Ints
    of_entry: list[int]


class _History:
    """The events of one view's table grouped by entity, as row indices in table order."""

    def __init__(self, events: pa.Table, columns: Columns) -> None:
        self.events = events
        self.time = events[columns.time].to_numpy().astype(np.int64)
        self.ingested = events[INGESTED_AT].to_numpy().astype(np.int64)
        keys = np.asarray(events[columns.key].to_pylist(), dtype=object)
        self._rows: dict[object, list[int]] = defaultdict(list)
        for n, key in enumerate(keys):
            self._rows[key].append(n)
        self._key = columns.key

    def rows(self, entity: str, ingested_before: int, time_upto: int | None) -> Ints:
        """The entity's events ingested before ``ingested_before`` with ``event_time <=
        time_upto`` (no bound when None)."""
        mine = np.asarray(self._rows.get(entity, ()), dtype=np.int64)
        keep = self.ingested[mine] < ingested_before
        if time_upto is not None:
            keep &= self.time[mine] <= time_upto
        picked: Ints = mine[keep]
        return picked

    def relabelled(self, picks: Sequence[Ints]) -> pa.Table:
        """The events of ``picks[i]`` with their key replaced by row ``i``'s token."""
        taken: Ints = np.concatenate([*picks, np.zeros(0, np.int64)])
        table = self.events.take(pa.array(taken, pa.int64()))
        tokens = [_ROW_KEY.format(i) for i, p in enumerate(picks) for _ in range(len(p))]
        index = table.schema.get_field_index(self._key)
        return table.set_column(index, self._key, pa.array(tokens, pa.string()))


def recompute(
    entries: Sequence[AnswerEntry], catalog: Catalog, events: pa.Table, tolerance: Tolerance
) -> list[Recomputed]:
    """Each entry's offline values (module docstring), in entry order."""
    out: list[Recomputed] = [Recomputed((None, ""))] * len(entries)
    by_view: dict[str, list[int]] = defaultdict(list)
    for n, entry in enumerate(entries):
        by_view[entry.view].append(n)
    for ns in by_view.values():
        mine = [entries[n] for n in ns]
        results = _view_recompute(mine, catalog, events, tolerance)
        for n, result in zip(ns, results, strict=True):
            out[n] = result
    return out


def _spec(catalog: Catalog, entries: Sequence[AnswerEntry]) -> _View:
    (request,) = parse_features(catalog, sorted({e.ref for e in entries}))
    source = catalog.source(request.view.source)
    return _View(
        request.view,
        tuple(request.features),
        Columns(key=request.key_column, time=source.event_time_field),
    )


def _view_recompute(
    entries: Sequence[AnswerEntry],
    catalog: Catalog,
    events: pa.Table,
    tolerance: Tolerance,
) -> list[Recomputed]:
    spec = _spec(catalog, entries)
    rows = _distinct([(e.entity_id, e.as_of_ms) for e in entries])
    truth = _values(spec, events, rows)
    results = [Recomputed(_pick(truth, rows, n, e)) for n, e in enumerate(entries)]
    wrong = [n for n, e in enumerate(entries) if not matches(e, results[n].truth, tolerance)]
    if not wrong:
        return results
    history = _History(events, spec.columns)
    known = _relabelled(spec, history, [entries[n] for n in wrong], [None] * len(wrong))
    for i, n in enumerate(wrong):
        results[n] = Recomputed(results[n].truth, known[i])
    still = [n for i, n in enumerate(wrong) if not matches(entries[n], known[i], tolerance)]
    if not still:
        return results
    floors = [_floor(entries[n]) for n in still]
    served = _relabelled(spec, history, [entries[n] for n in still], list(floors))
    for i, n in enumerate(still):
        lag = _lag(history, entries[n].entity_id, entries[n].as_of_ms, floors[i])
        results[n] = Recomputed(results[n].truth, results[n].known, served[i], lag)
    return results


def _floor(entry: AnswerEntry) -> int:
    """The newest event time the answer's store had applied (nothing at all without one)."""
    return entry.watermark_ms if entry.watermark_ms is not None else np.iinfo(np.int64).min


def _lag(history: _History, entity: str, as_of: int, upto: int) -> int | None:
    """``as_of`` minus the earliest ingest time of the known events in ``(upto, as_of]``."""
    mine = history.rows(entity, as_of, as_of)
    missing = mine[history.time[mine] > upto]
    if not len(missing):
        return None
    return int(as_of - history.ingested[missing].min())


def _distinct(keys: list[tuple[str, int]]) -> _Rows:
    index: dict[tuple[str, int], int] = {}
    of_entry = [index.setdefault(k, len(index)) for k in keys]
    ordered = list(index)
    return _Rows([k[0] for k in ordered], np.array([k[1] for k in ordered], np.int64), of_entry)


def _values(spec: _View, events: pa.Table, rows: _Rows) -> Values:
    return as_of_values(
        spec.view, spec.features, events, columns=spec.columns, keys=rows.keys, ts=rows.ts
    )


def _pick(values: Values, rows: _Rows, n: int, entry: AnswerEntry) -> Offline:
    row = rows.of_entry[n]
    return _plain(values.values[entry.feature][row]), str(values.status[entry.feature][row])


def _relabelled(
    spec: _View,
    history: _History,
    entries: Sequence[AnswerEntry],
    bounds: Sequence[int | None],
) -> list[Offline]:
    """Per entry, its feature from the entity's events ingested before its request time with
    ``event_time <= bounds[i]`` (no bound when None)."""
    asked = [(e.entity_id, e.as_of_ms, b) for e, b in zip(entries, bounds, strict=True)]
    distinct: dict[tuple[str, int, int | None], int] = {}
    of_entry = [distinct.setdefault(a, len(distinct)) for a in asked]
    picks = [history.rows(entity, as_of, upto) for entity, as_of, upto in distinct]
    rows = _Rows(
        [_ROW_KEY.format(i) for i in range(len(distinct))],
        np.array([a[1] for a in distinct], np.int64),
        of_entry,
    )
    values = _values(spec, history.relabelled(picks), rows)
    return [_pick(values, rows, n, e) for n, e in enumerate(entries)]


def _plain(value: object) -> object:
    """numpy scalars as Python ones (what JSON round-trips in the answer log)."""
    return value.item() if isinstance(value, np.generic) else value
