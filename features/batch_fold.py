"""Folding one batch of events into tiles as columns: a group-by per (entity, tile), per group.

The per-event fold (``TileGroup.fold`` over each tile's events in partition order, which equals
one ``agg`` call per event) is the reference; :func:`fold_view` gives the same states, bit for
bit, with one group-by per tile group and one numpy kernel per feature:

* ``count``: ``np.bincount`` of the group of each row;
* ``sum`` and ``mean``: ``np.bincount`` weighted by the values, each group's prior state put
  before its values, so every group is summed left to right from its prior state like the
  per-event fold (``bincount`` adds its weights in input order; a pairwise ``reduceat`` would
  not). A prior of ``-0.0``, which ``0.0 + prior`` would turn into ``0.0``, is summed in Python;
* ``min`` and ``max``: ``np.minimum.at``/``np.maximum.at``, then a zero extreme takes the sign
  of the group's first zero, as the builtin ``min``/``max`` keep the first of equal values;
* ``last``: per group, the latest row of its newest time (offsets rising with the rows), else
  the last row of one ``np.lexsort`` by (group, time, order, position);
* ``distinct_count``: each distinct value of the batch hashed once, its register and rank
  derived for all values at once (``features.hll.registers_of``), then the distinct (group,
  value) pairs added to each group's sketch;
* ``cusum``: scalar per entity in partition order (``CusumLogic.update_many``), on the
  column's floats;
* anything else (``last_n``): the aggregator's own ``agg_seq`` over each group's rows in
  partition order.

Tiles are created in the per-event fold's order (per entity in first-appearance order, per
group, per tile in first-appearance order), so the tile dictionaries and the expiry heap the
processor builds from :attr:`FoldResult.created` are the same too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from operator import add
from typing import Any

import numpy as np
import numpy.typing as npt

from features.aggregators import Aggregator, CusumAgg
from features.blocks import TileKey
from features.catalog import Aggregation, Feature
from features.cusum import CusumLogic
from features.hll import registers_of, stable_hash64
from features.tile_groups import TileGroup

Ints = npt.NDArray[np.int64]
States = list[list[Any]]
EntityTiles = dict[TileKey, list[Any]]


class BatchColumns:
    """Events of one batch in partition order, as columns. ``times`` and ``offsets`` are int64
    arrays; ``columns`` maps a field to its Python values; what the kernels derive from them
    (float arrays, codes of distinct values, HyperLogLog registers) is computed once."""

    def __init__(self, times: Ints, offsets: Ints, columns: Mapping[str, Sequence[Any]]) -> None:
        self.times = times
        self.offsets = offsets
        self._columns = columns
        self._floats: dict[str, npt.NDArray[np.float64]] = {}
        self._codes: dict[str, tuple[npt.NDArray[np.intp], list[Any]]] = {}
        self._registers: dict[tuple[str, int], tuple[Ints, Ints]] = {}
        self._lists: dict[str, list[int]] = {}
        self._ascending: bool | None = None

    def __len__(self) -> int:
        return len(self.times)

    def select(self, rows: npt.NDArray[np.intp]) -> BatchColumns:
        """The given rows only (ascending positions), columns copied lazily."""
        return BatchColumns(self.times[rows], self.offsets[rows], _Taken(self._columns, rows))

    def values(self, name: str) -> Sequence[Any]:
        return self._columns[name]

    def ascending(self) -> bool:
        """Whether the offsets rise strictly with the rows (Kafka's order within a partition)."""
        if self._ascending is None:
            self._ascending = bool((self.offsets[1:] > self.offsets[:-1]).all())
        return self._ascending

    def ints(self, which: str) -> list[int]:
        """``times`` or ``offsets`` as Python ints."""
        cached = self._lists.get(which)
        if cached is None:
            cached = self._lists[which] = getattr(self, which).tolist()
        return cached

    def floats(self, name: str) -> npt.NDArray[np.float64]:
        """The column as float64: each value converted as ``float(value)`` converts it."""
        cached = self._floats.get(name)
        if cached is None:
            cached = self._floats[name] = np.array(self._columns[name], dtype=np.float64)
        return cached

    def codes(self, name: str) -> tuple[npt.NDArray[np.intp], list[Any]]:
        """Per row, the index of its value among the column's distinct values, which are
        listed in order of first appearance (values of one field, of one type: a string or an
        int column, where equal as dict keys means equal)."""
        cached = self._codes.get(name)
        if cached is None:
            column = self._columns[name]
            # Two C-level passes (the second finds each string's hash cached by the first).
            distinct = list(dict.fromkeys(column))
            index = {value: i for i, value in enumerate(distinct)}
            codes = np.fromiter(map(index.__getitem__, column), dtype=np.intp, count=len(column))
            cached = self._codes[name] = (codes, distinct)
        return cached

    def registers(self, name: str, p: int) -> tuple[Ints, Ints]:
        """Per distinct value of the column (``codes`` order), the HyperLogLog register and
        rank of its text, as ``DistinctCountAgg`` hashes it (``str`` of a non-string)."""
        cached = self._registers.get((name, p))
        if cached is None:
            distinct = self.codes(name)[1]
            hashes = np.array(
                [stable_hash64(v if isinstance(v, str) else str(v)) for v in distinct],
                dtype=np.uint64,
            )
            cached = self._registers[(name, p)] = registers_of(hashes, p)
        return cached


class _Taken(Mapping[str, Sequence[Any]]):
    """Some rows of a mapping of columns; each column is copied when first read."""

    def __init__(self, columns: Mapping[str, Sequence[Any]], rows: npt.NDArray[np.intp]) -> None:
        self._columns = columns
        self._rows = rows.tolist()
        self._taken: dict[str, list[Any]] = {}

    def __getitem__(self, name: str) -> list[Any]:
        taken = self._taken.get(name)
        if taken is None:
            column = self._columns[name]
            taken = self._taken[name] = [column[i] for i in self._rows]
        return taken

    def __iter__(self) -> Any:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


@dataclass
class FoldResult:
    """What one view's fold changed: its entities in first-appearance order, each with the
    newest offset and event time folded into it, and the tiled tiles it created as (entity
    index, tile) in the order the per-event fold creates them."""

    entities: list[Any]
    versions: list[int]
    newest: list[int]
    created: list[tuple[int, TileKey]] = field(default_factory=list)


@dataclass
class _Groups:
    """The rows of a batch grouped: ``inv[i]`` is the group of row ``i``."""

    inv: npt.NDArray[np.intp]
    count: int
    rows: BatchColumns
    _members: list[list[int]] | None = None

    def order(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """The rows sorted by group, partition order kept inside each, and where each group's
        rows end in that order."""
        order = np.argsort(self.inv, kind="stable")
        return order, np.cumsum(np.bincount(self.inv, minlength=self.count))

    def members(self) -> list[list[int]]:
        """Each group's rows, in partition order."""
        if self._members is None:
            order, ends = self.order()
            rows, bounds = order.tolist(), ends.tolist()
            self._members = [rows[a:b] for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]
        return self._members


def fold_view(
    groups: Sequence[TileGroup],
    key_field: str,
    rows: BatchColumns,
    tiles_of: Callable[[Any], EntityTiles],
) -> FoldResult:
    """Fold ``rows`` into one view's tiles: ``tiles_of(entity)`` gives (creating it if need be)
    the entity's tiles, keyed ``(tile_ms, start)`` (``(None, None)`` for the unwindowed group).
    Equal to the per-event fold of the same rows (module docstring)."""
    codes, entities = rows.codes(key_field)
    if not entities:
        return FoldResult([], [], [])
    tiles = [tiles_of(entity) for entity in entities]
    created: list[tuple[int, int, int, TileKey]] = []
    for index, group in enumerate(groups):
        if group.tile_ms is None:
            states = [_states(group, t, (None, None)) for t in tiles]
            _fold_group(group, _Groups(codes, len(entities), rows), states)
            continue
        grouped, states = _tiled((index, group), codes, tiles, rows, created)
        _fold_group(group, grouped, states)
    created.sort(key=_creation_order)
    versions = np.full(len(entities), np.iinfo(np.int64).min, dtype=np.int64)
    newest = versions.copy()
    np.maximum.at(versions, codes, rows.offsets)
    np.maximum.at(newest, codes, rows.times)
    return FoldResult(entities, versions.tolist(), newest.tolist(), [(c[0], c[3]) for c in created])


def _creation_order(item: tuple[int, int, int, TileKey]) -> tuple[int, int, int]:
    return item[0], item[1], item[2]


def _states(group: TileGroup, tiles: EntityTiles, key: TileKey) -> list[Any]:
    states = tiles.get(key)
    if states is None:
        states = tiles[key] = group.initial_states()
    return states


def _tiled(
    indexed: tuple[int, TileGroup],
    codes: npt.NDArray[np.intp],
    tiles: list[EntityTiles],
    rows: BatchColumns,
    created: list[tuple[int, int, int, TileKey]],
) -> tuple[_Groups, States]:
    """Group the rows by (entity, tile) and find or create each group's tile states."""
    index, group = indexed
    tile_ms = group.tile_ms or 0
    starts = rows.times - rows.times % tile_ms
    keys, first, inv, width, start_at = _group_by(codes, starts, tile_ms)
    entity_of = (keys // width).tolist()
    start_of = start_at(keys % width).tolist()
    first_of = first.tolist()
    states: States = [[] for _ in range(len(keys))]
    for g in np.lexsort((first, keys // width)).tolist():  # the per-event fold's order
        entity = entity_of[g]
        key = (tile_ms, start_of[g])
        entity_tiles = tiles[entity]
        found = entity_tiles.get(key)
        if found is None:
            found = entity_tiles[key] = group.initial_states()
            created.append((entity, index, first_of[g], key))
        states[g] = found
    return _Groups(inv, len(keys), rows), states


_DENSE_LIMIT = 4  # a table of (entity, tile) cells up to this many per row: counted, not sorted


def _group_by(
    codes: npt.NDArray[np.intp], starts: Ints, tile_ms: int
) -> tuple[Ints, npt.NDArray[np.intp], npt.NDArray[np.intp], int, Callable[[Ints], Ints]]:
    """The distinct (entity, start) pairs of the rows (at least one) as keys ``entity * width +
    start index``, ascending; each key's first row; each row's key index; ``width``; and the
    start of a start index. Counted in a table when the pairs fit a small one (a batch spans a
    few tiles), else sorted: both give the same keys in the same order."""
    n, entities, low = len(codes), int(codes.max()) + 1, int(starts.min())
    span = (int(starts.max()) - low) // tile_ms + 1
    if entities * span > _DENSE_LIMIT * n + 64:
        distinct, start_codes = np.unique(starts, return_inverse=True)
        keys, first, inv = np.unique(
            codes.astype(np.int64) * len(distinct) + start_codes,
            return_index=True,
            return_inverse=True,
        )
        return keys, first, inv.astype(np.intp), len(distinct), distinct.__getitem__
    cells = codes.astype(np.int64) * span + (starts - low) // tile_ms
    first_at = np.full(entities * span, n, dtype=np.intp)
    np.minimum.at(first_at, cells, np.arange(n, dtype=np.intp))
    keys = np.flatnonzero(first_at < n)
    index_of = np.zeros(entities * span, dtype=np.intp)
    index_of[keys] = np.arange(len(keys), dtype=np.intp)
    return keys, first_at[keys], index_of[cells], span, lambda at: low + at * tile_ms


def _fold_group(group: TileGroup, grouped: _Groups, states: States) -> None:
    for f, (feature, aggregator) in enumerate(zip(group.features, group.aggregators, strict=True)):
        kernel = _KERNELS.get(feature.aggregation, _fold_each)
        kernel(aggregator, feature, f, grouped, states)


def _count(_agg: Aggregator[Any, Any], _feature: Feature, f: int, g: _Groups, s: States) -> None:
    for states, n in zip(s, np.bincount(g.inv, minlength=g.count).tolist(), strict=True):
        states[f] += n


def _sum(_agg: Aggregator[Any, Any], feature: Feature, f: int, g: _Groups, s: States) -> None:
    totals = _sums([states[f] for states in s], g.rows.floats(_column(feature)), g)
    for states, total in zip(s, totals, strict=True):
        states[f] = total


def _mean(_agg: Aggregator[Any, Any], feature: Feature, f: int, g: _Groups, s: States) -> None:
    totals = _sums([states[f][1] for states in s], g.rows.floats(_column(feature)), g)
    counts = np.bincount(g.inv, minlength=g.count).tolist()
    for states, n, total in zip(s, counts, totals, strict=True):
        states[f] = (states[f][0] + n, total)


def _sums(priors: list[float], values: npt.NDArray[np.float64], g: _Groups) -> list[float]:
    """Per group: its prior plus its values, added left to right in partition order."""
    weights = np.concatenate([np.array(priors, dtype=np.float64), values])
    bins = np.concatenate([np.arange(g.count, dtype=np.intp), g.inv])
    totals: list[float] = np.bincount(bins, weights, minlength=g.count).tolist()
    for i, prior in enumerate(priors):
        if prior == 0 and math.copysign(1.0, prior) < 0:  # 0.0 + -0.0 would lose the sign
            totals[i] = reduce(add, values[g.members()[i]].tolist(), prior)
    return totals


def _extreme(agg: Aggregator[Any, Any], feature: Feature, f: int, g: _Groups, s: States) -> None:
    values = g.rows.floats(_column(feature))
    smallest = feature.aggregation is Aggregation.MIN
    best = np.full(g.count, np.inf if smallest else -np.inf)
    (np.minimum if smallest else np.maximum).at(best, g.inv, values)
    zero = best == 0
    if zero.any():  # a zero extreme is the group's first zero, whichever its sign
        at = np.flatnonzero(values == 0)
        first = np.full(g.count, len(values), dtype=np.intp)
        np.minimum.at(first, g.inv[at], at)
        best[zero] = values[first[zero]]
    pick = min if smallest else max
    for states, value in zip(s, best.tolist(), strict=True):
        current = states[f]
        states[f] = value if current is None else pick(current, value)


def _last(agg: Aggregator[Any, Any], feature: Feature, f: int, g: _Groups, s: States) -> None:
    rows = g.rows
    values = rows.values(_column(feature))
    times, offsets = rows.ints("times"), rows.ints("offsets")
    for states, i in zip(s, _latest(g).tolist(), strict=True):
        states[f] = agg.agg(states[f], values[i], times[i], offsets[i])


def _latest(g: _Groups) -> npt.NDArray[np.intp]:
    """Per group, its row of the greatest (time, order, position): what ``LastAgg.agg_seq``
    picks (the latest copy on full ties)."""
    rows = g.rows
    if rows.ascending():  # offsets rise with position: the latest row of the newest time
        newest = np.full(g.count, np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(newest, g.inv, rows.times)
        at = np.flatnonzero(rows.times == newest[g.inv])
        latest = np.zeros(g.count, dtype=np.intp)
        np.maximum.at(latest, g.inv[at], at)
        return latest
    order = np.lexsort((np.arange(len(rows)), rows.offsets, rows.times, g.inv))
    ends = np.cumsum(np.bincount(g.inv, minlength=g.count)) - 1
    found: npt.NDArray[np.intp] = order[ends]
    return found


def _distinct(_agg: Aggregator[Any, Any], feature: Feature, f: int, g: _Groups, s: States) -> None:
    codes, distinct = g.rows.codes(_column(feature))
    index, rank = g.rows.registers(_column(feature), feature.hll_precision)
    pairs = np.unique(g.inv.astype(np.int64) * len(distinct) + codes)
    value = pairs % len(distinct)
    bounds = np.searchsorted(pairs // len(distinct), np.arange(g.count + 1)).tolist()
    indices, ranks = index[value].tolist(), rank[value].tolist()
    for i, states in enumerate(s):
        low, high = bounds[i], bounds[i + 1]
        states[f].add_registers(indices[low:high], ranks[low:high])


def _fold_each(agg: Aggregator[Any, Any], feature: Feature, f: int, g: _Groups, s: States) -> None:
    """The aggregator's own sequence fold per group (order-dependent states: cusum, last_n)."""
    rows = g.rows
    column = feature.column
    values = rows.values(column) if column is not None else [1] * len(rows)
    times, offsets = rows.ints("times"), rows.ints("offsets")
    for states, members in zip(s, g.members(), strict=True):
        states[f] = agg.agg_seq(
            states[f],
            [values[i] for i in members],
            [times[i] for i in members],
            [offsets[i] for i in members],
        )


def _cusum(agg: Aggregator[Any, Any], feature: Feature, f: int, g: _Groups, s: States) -> None:
    """Scalar per entity, in partition order (each value depends on all before it), on the
    column's floats: ``CusumAgg.agg_seq`` without a conversion per value."""
    if not isinstance(agg, CusumAgg):
        _fold_each(agg, feature, f, g, s)
        return
    values = g.rows.floats(_column(feature))
    order, ends = g.order()
    for states, members in zip(s, np.split(order, ends[:-1]), strict=True):
        CusumLogic(agg.config, states[f]).update_many(values[members].tolist())


def _column(feature: Feature) -> str:
    if feature.column is None:
        raise ValueError(f"feature {feature.name!r} has no column")
    return feature.column


_Kernel = Callable[[Aggregator[Any, Any], Feature, int, _Groups, States], None]
_KERNELS: dict[Aggregation, _Kernel] = {
    Aggregation.COUNT: _count,
    Aggregation.SUM: _sum,
    Aggregation.MEAN: _mean,
    Aggregation.MIN: _extreme,
    Aggregation.MAX: _extreme,
    Aggregation.LAST: _last,
    Aggregation.DISTINCT_COUNT: _distinct,
    Aggregation.CUSUM: _cusum,
}
