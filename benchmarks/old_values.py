"""The read path before layout v2, kept only as ``benchmarks/read_path.py``'s baseline.

Serving reads blocks (``serve_apps.values``); this is the per-tile-field path it replaced: one
store field per (tile group, partition, tile), merged per entity through
``features.tile_groups.read_view`` with a decode cache and a merge memo.

Statuses and event times follow the rules of ``serve_apps.values`` (its module docstring), so the
benchmark can check that both paths answer the same before it times them. A decoded tile is cached
by its payload bytes, which is safe because ``merge`` never mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from features.catalog import Aggregation, Feature
from features.tile_groups import TileGroup, parse_field, read_view
from features.tiles import TileSpec, tile_start

PRESENT = "present"
DEFAULT = "default"
NOT_FOUND = "not_found"
STALE = "stale"

_CACHE_LIMIT = 65_536


Served = tuple[Any, str, int | None, int | None, str]
"""``(value, status, event_time_ms, age_ms, store)``: a plain tuple, built 5,000 times for a
100-entity x 50-feature read, where a NamedTuple's constructor cost shows."""


@dataclass(frozen=True)
class CachedGroup(TileGroup):
    """A tile group whose ``decode`` remembers payloads: closed tiles never change, so most of a
    read's tiles were decoded by an earlier request. Returns a fresh list over shared states."""

    cache: dict[bytes, list[Any]] = field(default_factory=dict, compare=False, repr=False)
    span: int | None = None

    @property
    def span_ms(self) -> int | None:
        return self.span

    def decode(self, payload: bytes) -> list[Any]:
        states = self.cache.get(payload)
        if states is None:
            states = super().decode(payload)
            if len(self.cache) >= _CACHE_LIMIT:
                self.cache.clear()
            self.cache[payload] = states
        return list(states)


def cached_groups(groups: Sequence[TileGroup]) -> tuple[CachedGroup, ...]:
    return tuple(CachedGroup(g.tile_ms, g.features, g.aggregators, span=g.span_ms) for g in groups)


_PARSED: dict[str, tuple[int | None, int, int | None]] = {}


def _parse(name: str) -> tuple[int | None, int, int | None]:
    parsed = _PARSED.get(name)
    if parsed is None:
        parsed = parse_field(name)
        if len(_PARSED) >= _CACHE_LIMIT:
            _PARSED.clear()
        _PARSED[name] = parsed
    return parsed


MergeMemo = dict[tuple[Any, ...], list[tuple[Any, Any]]]
"""Per (view, feature set): ``(head tiles, stored fields) -> [(value, event time), ...]``."""


def _heads(groups: Sequence[TileGroup], as_of_ms: int) -> tuple[int | None, ...]:
    return tuple(None if g.tile_ms is None else tile_start(as_of_ms, g.tile_ms) for g in groups)


def not_found(features: Sequence[Feature], store: str) -> list[Served]:
    return [(f.default, NOT_FOUND, None, None, store) for f in features]


def evaluate(
    ttl_ms: int,
    groups: Sequence[TileGroup],
    features: Sequence[Feature],
    fields: Mapping[str, bytes],
    *,
    as_of_ms: int,
    store: str,
    memo: MergeMemo | None = None,
) -> list[Served]:
    """Values of ``features`` (all of ``info.view``) for one entity's ``fields`` as of ``as_of_ms``.

    ``groups`` are the view's tile groups (possibly :class:`CachedGroup`), in catalog order;
    ``memo`` (one per view and feature set, per replica) remembers merges, see :func:`_merged`.
    """
    if not fields:
        return not_found(features, store)
    # Memo: values and event times depend on ``as_of`` only through each group's head tile
    # (which tiles cover each window, which starts are not in the future), so equal stored
    # fields with equal head tiles give equal results; only status and age are per request.
    # The fields as a tuple, in the store's order: a store returns an unchanged hash in the same
    # order, and a reordered one only misses (never a wrong hit); cheaper than a frozenset,
    # which hashes and compares every fresh reply object.
    key = (_heads(groups, as_of_ms), tuple(fields.items()))
    static = None if memo is None else memo.get(key)
    if static is None:
        static = _static(groups, features, fields, as_of_ms)
        if memo is not None:
            if len(memo) >= _CACHE_LIMIT // 8:
                memo.clear()
            memo[key] = static
    ttl = ttl_ms
    out: list[Served] = []
    for feature, (value, newest) in zip(features, static, strict=True):
        if newest is _NO_DATA or value is None:
            out.append((feature.default, DEFAULT, None, None, store))
            continue
        if newest is None:
            out.append((value, PRESENT, None, None, store))
            continue
        event_time = min(newest, as_of_ms)
        age = as_of_ms - event_time
        if age > ttl:
            out.append((feature.default, STALE, event_time, age, store))
        else:
            out.append((value, PRESENT, event_time, age, store))
    return out


def _static(
    groups: Sequence[TileGroup],
    features: Sequence[Feature],
    fields: Mapping[str, bytes],
    as_of_ms: int,
) -> list[tuple[Any, Any]]:
    """``(value, event time or _NO_DATA)`` per feature: the merge through ``read_view`` of the
    fields in range, and the event-time evidence of the module docstring."""
    wanted = {f.name for f in features}
    needed = [g for g in groups if any(f.name in wanted for f in g.features)]
    by_tile = {g.tile_ms: g for g in needed}
    kept: dict[str, bytes] = {}
    starts: dict[int | None, set[int]] = {}
    newest_start: int | None = None
    for name, payload in fields.items():
        tile_ms, _partition, start = _parse(name)
        if start is not None and start <= as_of_ms:
            newest_start = start if newest_start is None else max(newest_start, start)
        group = by_tile.get(tile_ms)
        if group is None:
            continue
        if start is None:
            kept[name] = payload
            continue
        span = group.span_ms or 0
        head = tile_start(as_of_ms, tile_ms or 1)
        if head + (tile_ms or 0) - span <= start <= head:
            kept[name] = payload
            starts.setdefault(tile_ms, set()).add(start)
    values = read_view(needed, kept, as_of_ms)
    last_times = _last_times(by_tile.get(None), kept)
    newest_last = max(last_times.values()) if last_times else None
    candidates = [t for t in (newest_last, newest_start) if t is not None]
    evidence = _Evidence(
        starts,
        last_times,
        newest_last,
        max(candidates) if candidates else None,
        any(_parse(n)[0] is None for n in kept),
    )
    return [(values.get(f.name), _event_time(f, evidence, as_of_ms)) for f in features]


_NO_DATA: Any = object()


@dataclass(frozen=True, slots=True)
class _Evidence:
    """What the stored fields of one (view, entity) say about event times."""

    starts: Mapping[int | None, set[int]]  # tile starts in range, per tile size
    last_times: Mapping[str, int]  # exact event time per ``last`` feature
    newest_last: int | None
    entity_newest: int | None  # lower bound of the entity's newest event in this view
    has_unwindowed: bool


_SPECS: dict[timedelta | None, TileSpec | None] = {}


def _spec(feature: Feature) -> TileSpec | None:
    """``feature.tile_spec`` (built anew on every access), kept per window: it depends on nothing
    else."""
    if feature.window not in _SPECS:
        _SPECS[feature.window] = feature.tile_spec
    return _SPECS[feature.window]


def _event_time(feature: Feature, ev: _Evidence, as_of_ms: int) -> Any:
    spec = _spec(feature)
    if spec is None:
        if feature.aggregation is Aggregation.LAST:
            return ev.last_times.get(feature.name, _NO_DATA)
        return ev.entity_newest if ev.has_unwindowed else _NO_DATA
    covering = spec.covering_tiles(as_of_ms)
    present = [s for s in ev.starts.get(spec.tile_ms, ()) if covering.start <= s < covering.stop]
    if not present:
        return _NO_DATA
    newest = max(present)
    if ev.newest_last is not None and newest <= ev.newest_last < newest + spec.tile_ms:
        return ev.newest_last  # clamped to as_of by the caller
    return newest


def _last_times(group: TileGroup | None, kept: Mapping[str, bytes]) -> dict[str, int]:
    """Newest event time of each ``last`` feature of the unwindowed group, over its partitions."""
    if group is None:
        return {}
    indexes = [
        (i, f.name) for i, f in enumerate(group.features) if f.aggregation is Aggregation.LAST
    ]
    times: dict[str, int] = {}
    if not indexes:
        return times
    for name, payload in kept.items():
        if _parse(name)[0] is not None:
            continue
        states = group.decode(payload)
        for i, feature_name in indexes:
            state = states[i]
            if state is not None:
                times[feature_name] = max(times.get(feature_name, state[0]), state[0])
    return times
