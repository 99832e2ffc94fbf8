"""Every feature of N entities from their decoded blocks, in one vectorised pass.

The reference is :func:`features.tile_groups.read_view`: per feature, the states of the tiles in
``covering_tiles(as_of, window, tile)`` merged from ``initialize()`` in ascending start, then
partition, order; tiles outside that range are ignored. Here, for all entities at once:

1. the tables of every block are joined and read with one ``np.frombuffer`` (one block's rows are
   ascending by (group, start); an entity with blocks from several partitions has its rows sorted
   by (group, start, partition));
2. each (tile group, window) of the view is a *pair*; a row covers a pair's window when
   ``0 <= head - start <= window - tile`` (``head`` = the group's tile holding ``as_of``). One
   comparison over all rows per window rank (the j-th shortest window of every group) picks the
   covering rows in row order; the picks of all ranks are concatenated and each goes to the
   output slot ``pair * entities + entity``, so every slot sees its rows in merge order;
3. counts and sums are ``np.bincount`` over the slots (it adds weights left to right from 0.0,
   exactly the reference's fold), minima and maxima ``np.fmin.at``/``np.fmax.at`` (NaN, the empty
   state, never wins), the newest covering start ``np.maximum.at``; values land in an object
   array (features x entities) of Python ints, floats and None.

Bitwise equality with the reference: sums add in the same order from the same 0.0; a mean divides
the same float sum by the same count; an extreme of equal floats is the same float except for the
sign of zero, where the reference keeps the first zero in merge order (Python's ``min``/``max``
keep their first argument on ties), which :func:`_first_zero` restores. Variable-width states
(``distinct_count``, ``last_n``) and the unwindowed group (``last``, ``cusum``) are merged tile by
tile with the aggregators themselves, in the reference's order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from features.blocks import (
    COUNT,
    MIN,
    SUM,
    TABLE_AT,
    Block,
    BlockLayout,
    GroupLayout,
    check_rows,
)
from features.catalog import Aggregation
from features.exceptions import CorruptState
from features.tile_groups import TileGroup

NO_TILE = int(np.iinfo(np.int64).min)
"""``newest_start`` of a feature with no covering tile (and of every unwindowed feature)."""

_NULL = np.array(None, dtype=object)
_CHOSEN_LIMIT = 4096
_NEVER = int(np.iinfo(np.int64).max)
Floats = npt.NDArray[np.float64]
Indexes = npt.NDArray[np.intp]
_KINDS = (Aggregation.COUNT, Aggregation.SUM, Aggregation.MIN, Aggregation.MAX)


Objects = npt.NDArray[np.object_]


@dataclass(frozen=True)
class MergedView:
    """``values[f, e]``: feature ``names[f]``'s value for entity ``e`` (request order), a Python
    object in an object array (so a response takes rows or columns without a Python loop);
    ``newest[e, f]``: the start of the newest tile in that feature's window holding data for
    entity ``e``, a lower bound of its newest event time (``NO_TILE``: none, or unwindowed).

    Event-time evidence per entity ``e`` (what serving dates values with): ``last_time[e, f]``
    the exact event time of a ``last`` feature's merged state (``NO_TILE`` for other features
    or no event); ``newest_last[e]`` the newest of those over every ``last`` feature of the view,
    requested or not; ``latest_start[e]`` the newest start of any tile stored for the entity that
    is not after ``as_of`` (``NO_TILE``: none); ``unwindowed[e]`` whether some block of the
    entity holds unwindowed states."""

    names: tuple[str, ...]
    values: Objects
    newest: npt.NDArray[np.int64]
    last_time: npt.NDArray[np.int64]
    newest_last: npt.NDArray[np.int64]
    latest_start: npt.NDArray[np.int64]
    unwindowed: npt.NDArray[np.bool_]

    def entity(self, index: int) -> dict[str, Any]:
        """One entity's values, shaped like ``read_view``'s result."""
        return dict(zip(self.names, self.values[:, index].tolist(), strict=True))


@dataclass(frozen=True)
class _Plan:
    """A layout's merge constants, as arrays. A feature's *row* is its index in ``names`` (every
    feature, in ``read_view``'s order); its *pair* is its (group, window)."""

    pairs: int
    pair_base: Indexes  # per group: its first pair
    reach: tuple[npt.NDArray[np.int64], ...]  # per window rank, per group: window - tile + 1
    variable: Indexes  # per group: variable-width cells per row
    simple: tuple[tuple[Indexes, Indexes, Indexes], ...]  # per _KINDS: rows, slots, pairs
    means: tuple[Indexes, Indexes, Indexes, Indexes]  # rows, count slots, sum slots, pairs
    variables: tuple[tuple[int, int, int, int], ...]  # row, group, feature in group, pair
    unwindowed: Indexes  # rows of the unwindowed group's features, in group order
    names: tuple[str, ...]
    where: dict[str, tuple[int, int]]  # per feature: (row, pair); pair ``pairs`` if unwindowed
    chosen: dict[tuple[str, ...], tuple[Indexes, Indexes]] = field(default_factory=dict)

    def rows_and_pairs(self, names: tuple[str, ...]) -> tuple[Indexes, Indexes]:
        """The rows and pairs of ``names``, remembered: a service asks for the same features
        each time (bounded: cleared when it grows past a few thousand feature lists)."""
        found = self.chosen.get(names)
        if found is None:
            if len(self.chosen) >= _CHOSEN_LIMIT:
                self.chosen.clear()
            at = [self.where[n] for n in names]
            found = (
                np.array([r for r, _ in at], dtype=np.intp),
                np.array([p for _, p in at], dtype=np.intp),
            )
            self.chosen[names] = found
        return found

    @classmethod
    def of(cls, layout: BlockLayout) -> _Plan:
        bases, base, widest = [], 0, max((len(g.windows) for g in layout.tiled), default=0)
        reach = np.zeros((len(layout.tiled), widest), dtype=np.int64)
        simple: dict[Aggregation, list[tuple[int, int, int]]] = {a: [] for a in _KINDS}
        means: list[tuple[int, int, int, int]] = []
        variables = []
        where: dict[str, tuple[int, int]] = {}
        for g, group in enumerate(layout.tiled):
            bases.append(base)
            reach[g, : len(group.windows)] = [w - group.tile_ms + 1 for w in group.windows]
            for f, feature in enumerate(group.group.features):
                row, pair = len(where), base + group.feature_window[f]
                where[feature.name] = (row, pair)
                slots = group.feature_slots[f]
                if feature.aggregation is Aggregation.MEAN:
                    means.append((row, slots[0], slots[1], pair))
                elif slots:
                    simple[feature.aggregation].append((row, slots[0], pair))
                else:
                    variables.append((row, g, f, pair))
            base += len(group.windows)
        unwindowed = layout.unwindowed.features if layout.unwindowed is not None else ()
        first = len(where)
        where.update((f.name, (first + i, base)) for i, f in enumerate(unwindowed))
        return cls(
            pairs=base,
            pair_base=np.asarray(bases, dtype=np.intp),
            reach=tuple(np.ascontiguousarray(reach[:, j]) for j in range(widest)),
            variable=np.asarray([len(g.variable) for g in layout.tiled], dtype=np.intp),
            simple=tuple(
                (_column(simple[a], 0), _column(simple[a], 1), _column(simple[a], 2))
                for a in _KINDS
            ),
            means=(_column(means, 0), _column(means, 1), _column(means, 2), _column(means, 3)),
            variables=tuple(variables),
            unwindowed=np.asarray([where[f.name][0] for f in unwindowed], dtype=np.intp),
            names=tuple(where),
            where=where,
        )


def _column(rows: Sequence[tuple[int, ...]], index: int) -> Indexes:
    return np.asarray([r[index] for r in rows], dtype=np.intp)


_PLANS: dict[int, tuple[BlockLayout, _Plan]] = {}  # by id; holding the layout keeps ids unique


def _plan(layout: BlockLayout) -> _Plan:
    found = _PLANS.get(id(layout))
    if found is None:
        found = _PLANS[id(layout)] = (layout, _Plan.of(layout))
    return found[1]


def merge_blocks(
    layout: BlockLayout,
    entities: Sequence[Sequence[Block]],
    as_of_ms: int,
    features: Collection[str] | None = None,
) -> MergedView:
    """Values as of ``as_of_ms`` of ``features`` (default: all) of each entity, whose blocks (at
    most one per partition) are ``entities[i]``; an entity without blocks gets every aggregator's
    empty result, as ``read_view`` does for no fields. Bad rows raise :class:`CorruptState`."""
    plan = _plan(layout)
    names = plan.names if features is None else tuple(features)
    n = len(entities)
    values = np.empty((len(plan.names), n), dtype=object)
    newest = np.full((plan.pairs + 1, n), NO_TILE, dtype=np.int64)
    latest = np.full(n, NO_TILE, dtype=np.int64)
    last_time = np.full((len(plan.names), n), NO_TILE, dtype=np.int64)
    unwindowed = np.zeros(n, dtype=bool)
    if layout.tiled:
        _merge_tiled(
            layout, plan, entities, as_of_ms=as_of_ms, values=values, newest=newest, latest=latest
        )
    if layout.unwindowed is not None:
        unwindowed[:] = [any(b.unwindowed is not None for b in bs) for bs in entities]
        _merge_unwindowed(layout.unwindowed, entities, values, plan.unwindowed, last_time)
    rows, pairs = plan.rows_and_pairs(names)
    newest_last = last_time.max(axis=0) if len(plan.names) else latest.copy()
    return MergedView(
        names, values[rows], newest[pairs].T, last_time[rows].T, newest_last, latest, unwindowed
    )


@dataclass(frozen=True, slots=True)
class _Rows:
    """The rows of every block of every entity, in merge order per entity."""

    columns: Floats  # columns x rows (column 2 + i is slot i), so a column is contiguous
    group: npt.NDArray[np.int64]
    start: npt.NDArray[np.int64]
    entity: Indexes
    block: Indexes  # index into ``blocks`` (only when the layout has variable-width features)
    cell: Indexes  # the row's first variable-width cell inside its block (idem)
    blocks: list[Block]


def _gather(layout: BlockLayout, plan: _Plan, entities: Sequence[Sequence[Block]]) -> _Rows:
    owners, blocks = [], []
    for entity, entity_blocks in enumerate(entities):
        for block in entity_blocks:
            if block.layout is not layout:
                raise CorruptState("a block decoded with another layout")
            if block.rows:
                owners.append(entity)
                blocks.append(block)
    width = layout.dtype.itemsize
    if len(blocks) == 1:
        joined = memoryview(blocks[0].raw)[TABLE_AT : TABLE_AT + blocks[0].rows * width]
    else:
        joined = memoryview(
            b"".join([memoryview(b.raw)[TABLE_AT : TABLE_AT + b.rows * width] for b in blocks])
        )
    columns = width // 8
    table = np.frombuffer(joined, "<f8").reshape(-1, columns)
    ints = np.frombuffer(joined, "<i8").reshape(-1, columns)
    lengths = np.fromiter((b.rows for b in blocks), dtype=np.intp, count=len(blocks))
    firsts = np.cumsum(lengths) - lengths
    start, group = ints[:, 0].copy(), ints[:, 1].copy()  # contiguous: read many times
    table = table.T
    check_rows(layout, group, start, firsts)
    entity_of = np.repeat(np.asarray(owners, dtype=np.intp), lengths)
    block_of = cell = np.zeros(0, dtype=np.intp)
    if layout.has_variable and len(group):
        block_of = np.repeat(np.arange(len(blocks), dtype=np.intp), lengths)
        cell = _cells(plan, group, blocks, firsts, block_of)
    if len(set(owners)) != len(owners):  # an entity with several partitions: interleave them
        partition_of = np.repeat([b.partition for b in blocks], lengths)
        order = np.lexsort((partition_of, start, group, entity_of))
        table, group, start, entity_of = (
            table[:, order],
            group[order],
            start[order],
            entity_of[order],
        )
        if len(cell):
            block_of, cell = block_of[order], cell[order]
    return _Rows(np.ascontiguousarray(table), group, start, entity_of, block_of, cell, blocks)


def _cells(
    plan: _Plan,
    group: npt.NDArray[np.int64],
    blocks: list[Block],
    firsts: Indexes,
    block_of: Indexes,
) -> Indexes:
    """Each row's first variable-width cell in its block; checks every block has its cells."""
    per_row = plan.variable[group]
    running = np.cumsum(per_row) - per_row
    totals = np.add.reduceat(per_row, firsts)
    if np.any(totals != [b.cells for b in blocks]):
        raise CorruptState("block holds another number of variable-width cells than its rows")
    cells: Indexes = running - running[firsts][block_of]
    return cells


def _merge_tiled(
    layout: BlockLayout,
    plan: _Plan,
    entities: Sequence[Sequence[Block]],
    *,
    as_of_ms: int,
    values: Objects,
    newest: npt.NDArray[np.int64],
    latest: npt.NDArray[np.int64],
) -> None:
    """Every tiled feature's values into its row of ``values``, the newest covering start per
    pair and entity into ``newest``, the newest start not after ``as_of`` into ``latest``."""
    rows = _gather(layout, plan, entities)
    n, pairs = len(entities), plan.pairs
    size = n * pairs
    group, start = rows.group, rows.start
    past = start <= as_of_ms
    np.maximum.at(latest, rows.entity[past], start[past])
    age = (as_of_ms - as_of_ms % layout.tiles)[group] - start  # ms before the group's head tile
    age[age < 0] = _NEVER  # after the head tile: covers nothing
    base = plan.pair_base[group]
    # Per window rank: the rows it covers, in row order, so every slot sees merge order.
    picks = [np.flatnonzero(age < reach[group]) for reach in plan.reach]
    picked = np.concatenate(picks)
    pair = np.concatenate([base[p] + j for j, p in enumerate(picks)])
    slot = pair * n + rows.entity[picked]
    np.maximum.at(newest[:pairs].reshape(-1), slot, start[picked])  # a view: newest is C-order
    merged = np.empty((len(layout.slots), size))
    for i, (kind, _) in enumerate(layout.slots):
        merged[i] = _slot_values(kind, rows.columns[2 + i].take(picked), slot, size)
    by_pair = merged.reshape(len(layout.slots), pairs, n)
    for kind, (rows_of, slots, at) in zip(_KINDS, plan.simple, strict=True):
        if len(rows_of):
            values[rows_of] = _as_values(kind, by_pair[slots, at])
    rows_of, counts, sums, at = plan.means
    if len(rows_of):
        values[rows_of] = _means(by_pair[counts, at], by_pair[sums, at])
    for row, g, f, p in plan.variables:
        merged_states = _variable_values(layout.tiled[g], f, rows, picked[pair == p], n)
        for e, value in enumerate(merged_states):
            values[row, e] = value  # one by one: a last_n value is a list, not a row to spread


def _slot_values(kind: str, column: Floats, slot: Indexes, size: int) -> Floats:
    if kind in (COUNT, SUM):
        # Counts are summed as floats: exact below 2**53 events. float64 even when nothing is
        # picked (bincount then answers int64).
        return np.bincount(slot, weights=column, minlength=size).astype(np.float64, copy=False)
    out = np.full(size, np.nan)
    (np.fmin if kind == MIN else np.fmax).at(out, slot, column)
    _first_zero(out, slot, column)
    return out


def _first_zero(out: Floats, slot: Indexes, column: Floats) -> None:
    """Where an extreme is zero, give it the sign of the first zero in merge order."""
    if not (out == 0).any():
        return
    zeros = np.flatnonzero(column == 0)
    slots, first = np.unique(slot[zeros], return_index=True)
    zero = out[slots] == 0
    out[slots[zero]] = column[zeros[first[zero]]]


def _as_values(kind: Aggregation, matrix: Floats) -> npt.NDArray[Any]:
    """What an object array takes as Python values: ints for counts, None for the empty state
    of an extreme (extremes of finite values are never NaN otherwise)."""
    if kind is Aggregation.COUNT:
        return matrix.astype(np.int64)
    if kind is Aggregation.SUM:
        return matrix
    return np.where(np.isnan(matrix), _NULL, matrix)


def _means(counts: Floats, sums: Floats) -> Objects:
    empty = counts == 0
    quotients = np.divide(sums, counts, out=np.zeros_like(sums), where=~empty)
    means: Objects = np.where(empty, _NULL, quotients)
    return means


def _variable_values(
    group: GroupLayout, feature: int, rows: _Rows, picked: Indexes, n: int
) -> list[Any]:
    """A variable-width feature, merged tile by tile with its aggregator in merge order."""
    aggregator = group.group.aggregators[feature]
    column = group.variable.index(feature)
    merged = [aggregator.initialize() for _ in range(n)]
    for at in picked.tolist():
        e = int(rows.entity[at])
        cell = rows.blocks[int(rows.block[at])].cell(int(rows.cell[at]) + column)
        merged[e] = aggregator.merge(merged[e], aggregator.load(cell))
    return [aggregator.result(state) for state in merged]


def _merge_unwindowed(
    group: TileGroup,
    entities: Sequence[Sequence[Block]],
    values: Objects,
    rows: Indexes,
    last_time: npt.NDArray[np.int64],
) -> None:
    features, aggregators = group.features, group.aggregators
    lasts = [i for i, f in enumerate(features) if f.aggregation is Aggregation.LAST]
    for e, entity_blocks in enumerate(entities):
        merged = group.initial_states()
        held = sorted(
            (b.partition, b.unwindowed) for b in entity_blocks if b.unwindowed is not None
        )
        for _partition, payload in held:
            for i, state in enumerate(group.decode(payload)):
                if features[i].aggregation is Aggregation.CUSUM:
                    merged[i] = state  # one partition only (see features.tile_groups)
                else:
                    merged[i] = aggregators[i].merge(merged[i], state)
        for i, state in enumerate(merged):
            values[rows[i], e] = aggregators[i].result(state)
        for i in lasts:
            if merged[i] is not None:  # (event time, order, value): the time is exact
                last_time[rows[i], e] = merged[i][0]
