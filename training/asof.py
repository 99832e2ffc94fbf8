"""Point-in-time values of one view for many (entity, timestamp) rows, from raw events.

For a row ``(entity, t)`` a feature's value is what serving answers at ``t`` when its stores hold
every tile the stream would have written from the events with ``event_time <= t``: the tiles of
:mod:`features.tile_groups` (one per group, source partition and tile start, its events folded in
offset order), merged by :func:`features.tile_groups.read_view`'s rule (covering tiles ascending
by start, then partition, from ``initialize()``). Full tiles are shared by every row; the *head
tile* (the one holding ``t``) holds only its events with ``event_time <= t``, exactly as
:func:`features.tiles.in_window` says.

Two paths compute it:

* the reference (:func:`reference_values`): per row, the tiles are folded with
  :meth:`TileGroup.fold`, encoded, and merged by ``read_view`` itself;
* the vectorised path (:func:`as_of_values`) for ``count``, ``sum``, ``mean``, ``min``, ``max``
  and ``last``: every tile of every entity is built once with numpy (sums with ``np.bincount``,
  which adds left to right from 0.0 like ``SumAgg``), each row's head tile is rebuilt from its
  events ``<= t``, and each row's covering tiles are merged in ``read_view``'s order (again a
  left-to-right ``bincount``), so sums and means are bitwise the reference's. Other aggregations
  (``distinct_count``, ``last_n``, ``cusum``) go through the reference for their rows.

Status per value (serving's words, ``serve_apps.values``): ``not_found`` the entity has no event
at or before ``t``; ``stale`` its newest such event is older than the view's ``ttl``; ``default``
the feature's window holds nothing (or the result is empty, as the mean of nothing); otherwise
``present``. Every status but ``present`` serves the feature's catalog default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from features.catalog import Aggregation, Feature, FeatureView
from features.tile_groups import TileGroup, read_view, tile_groups
from training.exceptions import TrainingError

PRESENT, DEFAULT, STALE, NOT_FOUND = "present", "default", "stale", "not_found"
PARTITION, OFFSET = "_partition", "_offset"
FAST = frozenset(
    {
        Aggregation.COUNT,
        Aggregation.SUM,
        Aggregation.MEAN,
        Aggregation.MIN,
        Aggregation.MAX,
        Aggregation.LAST,
    }
)

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Objects = npt.NDArray[np.object_]


@dataclass(frozen=True)
class Columns:
    """Where the events table keeps the view's entity id and event time."""

    key: str
    time: str


@dataclass(frozen=True)
class Values:
    """Per requested feature: ``values[name]`` (Python objects, defaults applied) and
    ``status[name]`` (one of the four statuses), one entry per spine row in spine order."""

    values: dict[str, Objects]
    status: dict[str, Objects]


@dataclass(frozen=True)
class _Events:
    """The events sorted by (entity code, event time, offset), with the spine's codes."""

    code: Ints
    time: Ints
    partition: Ints
    offset: Ints
    table: pa.Table  # the same rows, same order
    row_code: Ints


def _int(table: pa.Table, name: str) -> Ints:
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=np.int64)


def _prepare(events: pa.Table, columns: Columns, keys: Sequence[Any]) -> _Events:
    event_keys = np.asarray(events[columns.key].to_numpy(zero_copy_only=False), dtype=object)
    both = np.concatenate([event_keys, np.asarray(keys, dtype=object)])
    codes, _ = pd.factorize(both, use_na_sentinel=False)
    codes = codes.astype(np.int64)
    code, row_code = codes[: len(event_keys)], codes[len(event_keys) :]
    time, offset, partition = (_int(events, c) for c in (columns.time, OFFSET, PARTITION))
    # Partition last: a deterministic order for the one tie (time, offset) LastAgg cannot see.
    order = np.lexsort((partition, offset, time, code))
    return _Events(
        code=code[order],
        time=time[order],
        partition=partition[order],
        offset=offset[order],
        table=events.take(order),
        row_code=row_code,
    )


def _composite(code: Ints, position: Ints, span: int) -> Ints:
    """``code * span + position``: sorts like (code, position) when ``0 <= position < span``."""
    if span <= 0:
        return code * 0
    if (int(code.max(initial=0)) + 1) * span >= 2**62:
        raise TrainingError("too many entities times too long a time span for one bucket")
    return code * span + position


def _newest(ev: _Events, ts: Ints) -> Ints:
    """Per row, the index of the entity's newest event with ``event_time <= t`` (ties: the
    highest offset, as ``LastAgg`` decides), or -1."""
    if len(ev.time) == 0:
        return np.full(len(ts), -1, dtype=np.int64)
    low = int(ev.time.min())
    span = int(ev.time.max()) - low + 2
    keys = _composite(ev.code, ev.time - low, span)
    wanted = _composite(ev.row_code, np.clip(ts - low, -1, span - 2), span)
    found = np.searchsorted(keys, wanted, side="right").astype(np.int64) - 1
    valid = found >= 0
    valid[valid] = ev.code[found[valid]] == ev.row_code[valid]
    return np.where(valid, found, -1)


def _expand(lo: npt.NDArray[Any], hi: npt.NDArray[Any]) -> tuple[Ints, Ints]:
    """For ranges ``[lo[i], hi[i])``: (owner i, index) of every element, owners ascending."""
    lengths = (hi - lo).astype(np.int64)
    owner = np.repeat(np.arange(len(lo), dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    index = np.arange(int(lengths.sum()), dtype=np.int64) - starts[owner] + lo[owner]
    return owner, index.astype(np.int64)


@dataclass(frozen=True)
class _Tiles:
    """One tiled group's tiles of every entity: runs of events sorted by (code, start,
    partition, offset); ``order`` maps sorted positions to ``_Events`` rows."""

    tile_ms: int
    order: Ints
    first: Ints
    end: Ints
    keys: Ints  # per tile: composite (code, start index)
    base: int
    span: int

    @classmethod
    def of(cls, ev: _Events, tile_ms: int) -> _Tiles:
        start = ev.time - ev.time % tile_ms
        order = np.lexsort((ev.offset, ev.partition, start, ev.code))
        code, start_sorted, part = ev.code[order], start[order], ev.partition[order]
        n = len(order)
        new = np.ones(n, dtype=bool)
        if n:
            new[1:] = (
                (code[1:] != code[:-1])
                | (start_sorted[1:] != start_sorted[:-1])
                | (part[1:] != part[:-1])
            )
        first = np.flatnonzero(new).astype(np.int64)
        end = np.append(first[1:], n).astype(np.int64)
        base = int(start_sorted.min()) if n else 0
        index = (start_sorted[first] - base) // tile_ms + 1
        span = int(index.max(initial=0)) + 2
        keys = _composite(code[first], index, span)
        return cls(tile_ms, order, first, end, keys, base, span)

    def row_key(self, row_code: Ints, start: Ints) -> Ints:
        index = np.clip((start - self.base) // self.tile_ms + 1, 0, self.span - 1)
        return _composite(row_code, index, self.span)


@dataclass(frozen=True)
class _Merged:
    """One (group, window)'s merged states per row: ``count`` and per (kind, column) floats."""

    count: Ints
    slots: dict[tuple[str, str], Floats]


def _merge_window(
    ev: _Events,
    tiles: _Tiles,
    window_ms: int,
    *,
    ts: Ints,
    columns: Mapping[str, Floats],
    kinds: set[tuple[str, str]],
) -> _Merged:
    """Every row's covering tiles merged in ``read_view`` order: the full tiles (start before
    the head) ascending by (start, partition), then the head tile's partial states (events
    ``<= t``) by partition."""
    n, tile_ms = len(ts), tiles.tile_ms
    head = ts - ts % tile_ms
    lo_key = tiles.row_key(ev.row_code, head + tile_ms - window_ms)
    head_key = tiles.row_key(ev.row_code, head)
    a = np.searchsorted(tiles.keys, lo_key, side="left")
    b = np.searchsorted(tiles.keys, head_key, side="left")
    h = np.searchsorted(tiles.keys, head_key, side="right")
    full_row, full_tile = _expand(a, b)
    pair_row, pair_tile = _expand(b, h)
    owner, position = _expand(tiles.first[pair_tile], tiles.end[pair_tile])
    event = tiles.order[position]
    keep = ev.time[event] <= ts[pair_row[owner]]
    owner, event = owner[keep], event[keep]
    partial_count = np.bincount(owner, minlength=len(pair_row))
    live = partial_count > 0
    rows = np.concatenate([full_row, pair_row[live]])
    sizes = (tiles.end - tiles.first)[full_tile]
    count = np.bincount(rows, weights=np.concatenate([sizes, partial_count[live]]), minlength=n)
    slots = {}
    for kind, column in kinds:
        values = columns[column]
        tile_values = _tile_states(kind, values[tiles.order], tiles)[full_tile]
        partial = _partial_states(kind, values[event], owner, len(pair_row))[live]
        slots[(kind, column)] = _fold_rows(kind, rows, np.concatenate([tile_values, partial]), n)
    return _Merged(count.astype(np.int64), slots)


def _tile_states(kind: str, sorted_values: Floats, tiles: _Tiles) -> Floats:
    if not len(tiles.first):
        return np.zeros(0)
    if kind == "sum":
        run = np.repeat(np.arange(len(tiles.first)), tiles.end - tiles.first)
        return _sums(run, sorted_values, len(tiles.first))
    reduce = np.minimum if kind == "min" else np.maximum
    out: Floats = reduce.reduceat(sorted_values, tiles.first)
    return out


def _partial_states(kind: str, values: Floats, owner: Ints, pairs: int) -> Floats:
    if kind == "sum":
        return _sums(owner, values, pairs)
    return _fold_rows(kind, owner, values, pairs)


def _sums(rows: Ints, weights: Floats, n: int) -> Floats:
    """Per slot, its weights added left to right from 0.0 (``SumAgg``'s fold order)."""
    out: Floats = np.bincount(rows, weights=weights, minlength=n).astype(np.float64, copy=False)
    return out


def _fold_rows(kind: str, rows: Ints, values: Floats, n: int) -> Floats:
    """Merge ``values`` into ``n`` slots in array order: sums left to right from 0.0, extremes
    with NaN as the empty state."""
    if kind == "sum":
        return _sums(rows, values, n)
    out = np.full(n, np.nan)
    (np.fmin if kind == "min" else np.fmax).at(out, rows, values)
    return out


def as_of_values(
    view: FeatureView,
    features: Sequence[Feature],
    events: pa.Table,
    *,
    columns: Columns,
    keys: Sequence[Any],
    ts: Ints,
) -> Values:
    """Every feature of ``features`` (of ``view``) for each row ``(keys[i], ts[i])``.

    ``events`` are the view's source's accepted events with at least ``columns.key``,
    ``columns.time``, ``_partition``, ``_offset`` and every feature's column; rows may come in
    any order. Deterministic: the same events and rows give bitwise the same values."""
    ts = np.asarray(ts, dtype=np.int64)
    ev = _prepare(events, columns, keys)
    newest = _newest(ev, ts)
    fast = [f for f in features if f.aggregation in FAST]
    slow = [f for f in features if f.aggregation not in FAST]
    raw = _fast_values(view, fast, ev, ts, newest)
    raw.update(_reference_raw(view, slow, ev, ts, newest))
    return _finish(view, features, ev, ts=ts, newest=newest, raw=raw)


def reference_values(
    view: FeatureView,
    features: Sequence[Feature],
    events: pa.Table,
    *,
    columns: Columns,
    keys: Sequence[Any],
    ts: Ints,
) -> Values:
    """:func:`as_of_values` computed row by row through ``TileGroup.fold`` and ``read_view``
    only (the oracle the vectorised path is proven equal to)."""
    ts = np.asarray(ts, dtype=np.int64)
    ev = _prepare(events, columns, keys)
    newest = _newest(ev, ts)
    raw = _reference_raw(view, features, ev, ts, newest)
    return _finish(view, features, ev, ts=ts, newest=newest, raw=raw)


def _finish(
    view: FeatureView,
    features: Sequence[Feature],
    ev: _Events,
    *,
    ts: Ints,
    newest: Ints,
    raw: dict[str, Objects],
) -> Values:
    found = newest >= 0
    newest_time = ev.time[newest] if len(ev.time) else np.zeros(len(ts), dtype=np.int64)
    row_status = np.where(
        ~found, NOT_FOUND, np.where(ts - newest_time > view.ttl_ms, STALE, PRESENT)
    ).astype(object)
    values, status = {}, {}
    for feature in features:
        has = _window_has_data(ev, feature, ts, newest)
        empty = ~has | np.array([v is None for v in raw[feature.name]], dtype=bool)
        mine = np.where((row_status == PRESENT) & empty, DEFAULT, row_status).astype(object)
        out = raw[feature.name].copy()
        out[mine != PRESENT] = feature.default
        values[feature.name], status[feature.name] = out, mine
    return Values(values, status)


def _window_has_data(
    ev: _Events, feature: Feature, ts: Ints, newest: Ints
) -> npt.NDArray[np.bool_]:
    """Whether the feature's window as of each row holds an event (``in_window``)."""
    spec = feature.tile_spec
    if spec is None or not len(ev.time):
        return newest >= 0
    low = int(ev.time.min())
    span = int(ev.time.max()) - low + 2
    start = ts - ts % spec.tile_ms + spec.tile_ms - spec.window_ms
    keys = _composite(ev.code, ev.time - low, span)
    first = np.searchsorted(keys, _composite(ev.row_code, np.clip(start - low, -1, span - 1), span))
    return (newest >= 0) & (newest >= first)


def _fast_values(
    view: FeatureView, features: Sequence[Feature], ev: _Events, ts: Ints, newest: Ints
) -> dict[str, Objects]:
    out: dict[str, Objects] = {}
    numeric = {f.column for f in features if f.column and f.aggregation is not Aggregation.LAST}
    columns = {c: _floats(ev.table, c) for c in numeric}
    by_window: dict[tuple[int, int], list[Feature]] = {}
    for feature in features:
        spec = feature.tile_spec
        if spec is None:
            out[feature.name] = _last(ev, feature, newest)
        else:
            by_window.setdefault((spec.tile_ms, spec.window_ms), []).append(feature)
    tiles: dict[int, _Tiles] = {}
    for (tile_ms, window_ms), group in by_window.items():
        if tile_ms not in tiles:
            tiles[tile_ms] = _Tiles.of(ev, tile_ms)
        kinds = {k for k in map(_kind, group) if k is not None}
        merged = _merge_window(ev, tiles[tile_ms], window_ms, ts=ts, columns=columns, kinds=kinds)
        for feature in group:
            out[feature.name] = _result(feature, merged)
    return out


def _floats(table: pa.Table, column: str) -> Floats:
    return np.asarray(table[column].to_numpy(zero_copy_only=False), dtype=np.float64)


def _kind(feature: Feature) -> tuple[str, str] | None:
    column = feature.column or ""
    agg = feature.aggregation
    if agg in (Aggregation.SUM, Aggregation.MEAN):
        return ("sum", column)
    if agg is Aggregation.MIN:
        return ("min", column)
    if agg is Aggregation.MAX:
        return ("max", column)
    return None


def _result(feature: Feature, merged: _Merged) -> Objects:
    agg = feature.aggregation
    out = np.empty(len(merged.count), dtype=object)
    if agg is Aggregation.COUNT:
        out[:] = merged.count.tolist()
        return out
    kind = _kind(feature)
    assert kind is not None  # noqa: S101 - every fast windowed aggregation but count has one
    slot = merged.slots[kind]
    if agg is Aggregation.SUM:
        out[:] = slot.tolist()
    elif agg is Aggregation.MEAN:
        counts = merged.count
        means = np.divide(slot, counts, out=np.zeros_like(slot), where=counts > 0)
        out[:] = [m if c else None for m, c in zip(means.tolist(), counts.tolist(), strict=True)]
    else:
        out[:] = [None if math.isnan(v) else v for v in slot.tolist()]  # NaN: empty extreme
    return out


def _last(ev: _Events, feature: Feature, newest: Ints) -> Objects:
    out = np.full(len(newest), None, dtype=object)
    found = np.flatnonzero(newest >= 0)
    if len(found) and feature.column:
        picked = ev.table[feature.column].take(pa.array(newest[found])).to_pylist()
        out[found] = np.array([*picked, None], dtype=object)[:-1]
    return out


def _reference_raw(
    view: FeatureView, features: Sequence[Feature], ev: _Events, ts: Ints, newest: Ints
) -> dict[str, Objects]:
    """Per row: the entity's tiles as of ``t`` folded and encoded, merged by ``read_view``."""
    out = {f.name: np.full(len(ts), None, dtype=object) for f in features}
    if not features:
        return out
    groups = tile_groups(view.model_copy(update={"features": tuple(features)}))
    first = np.searchsorted(ev.code, ev.row_code, side="left")
    for row in np.flatnonzero(newest >= 0).tolist():
        rows = slice(int(first[row]), int(newest[row]) + 1)
        events = ev.table.slice(rows.start, rows.stop - rows.start).to_pylist()
        fields = _fields(groups, events, ev, rows, int(ts[row]))
        for name, value in read_view(groups, fields, int(ts[row])).items():
            out[name][row] = value
    return out


def _fields(
    groups: Sequence[TileGroup], events: list[dict[str, Any]], ev: _Events, rows: slice, t: int
) -> dict[str, bytes]:
    """The store fields the stream would hold for one entity as of ``t``: per group, partition
    and tile start, the events ``<= t`` folded in offset order."""
    times, parts, offsets = ev.time[rows].tolist(), ev.partition[rows].tolist(), ev.offset[rows]
    fields: dict[str, bytes] = {}
    for group in groups:
        tiles: dict[tuple[int, int | None], list[int]] = {}
        reach = t - t % group.tile_ms + group.tile_ms - (group.span_ms or 0) if group.tile_ms else 0
        for i, time in enumerate(times):
            start = None if group.tile_ms is None else time - time % group.tile_ms
            if start is None or start >= reach:
                tiles.setdefault((parts[i], start), []).append(i)
        for (partition, start), members in tiles.items():
            members.sort(key=lambda i: int(offsets[i]))
            states = group.initial_states()
            group.fold(
                states,
                [events[i] for i in members],
                [times[i] for i in members],
                [int(offsets[i]) for i in members],
            )
            fields[group.field(partition, start)] = group.encode(states)
    return fields
