"""Every feature of N entities from their decoded blocks, in one vectorised pass per tile group.

The reference is :func:`features.tile_groups.read_view`: per feature, the states of the tiles in
``covering_tiles(as_of, window, tile)`` merged from ``initialize()`` in ascending start, then
partition, order; tiles outside that range are ignored. Here, per tiled group:

1. the rows of every entity's blocks are concatenated (one block's rows are ascending by start;
   an entity with blocks from several partitions has its rows sorted by (start, partition));
2. per window of the group, a boolean mask picks the covering rows, and each picked row gets the
   output slot ``entity * windows + window``; the picks of all windows are concatenated, so every
   slot sees its rows in merge order;
3. counts and sums are ``np.bincount`` over the slots (it adds weights left to right from 0.0,
   exactly the reference's fold), minima and maxima ``np.fmin.at``/``np.fmax.at`` (NaN, the empty
   state, never wins), the newest covering start ``np.maximum.at``.

Bitwise equality with the reference: sums add in the same order from the same 0.0; a mean divides
the same float sum by the same count; an extreme of equal floats is the same float except for the
sign of zero, where the reference keeps the first zero in merge order (Python's ``min``/``max``
keep their first argument on ties), which :func:`_first_zero` restores. Variable-width states
(``distinct_count``, ``last_n``) and the unwindowed group (``last``, ``cusum``) are merged per
picked tile with the aggregators themselves, in the same order as the reference.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from features.blocks import COUNT, MIN, SUM, Block, BlockLayout, GroupLayout
from features.catalog import Aggregation
from features.tile_groups import TileGroup

NO_TILE = int(np.iinfo(np.int64).min)
"""``newest_start`` of a feature with no covering tile (and of every unwindowed feature)."""

Floats = npt.NDArray[np.float64]
Indexes = npt.NDArray[np.intp]


@dataclass(frozen=True)
class MergedView:
    """Per feature name: one value per entity (request order) and the start of the newest
    covering tile that holds data, a lower bound of the feature's newest event time."""

    values: dict[str, list[Any]]
    newest_start: dict[str, npt.NDArray[np.int64]]

    def entity(self, index: int) -> dict[str, Any]:
        """One entity's values, shaped like ``read_view``'s result."""
        return {name: column[index] for name, column in self.values.items()}


def merge_blocks(
    layout: BlockLayout,
    entities: Sequence[Sequence[Block]],
    as_of_ms: int,
    features: Collection[str] | None = None,
) -> MergedView:
    """Values as of ``as_of_ms`` of ``features`` (default: all) of each entity, whose blocks (at
    most one per partition) are ``entities[i]``; an entity without blocks gets every aggregator's
    empty result, as ``read_view`` does for no fields."""
    values: dict[str, list[Any]] = {}
    newest: dict[str, npt.NDArray[np.int64]] = {}
    for index, group in enumerate(layout.tiled):
        if features is None or any(f.name in features for f in group.group.features):
            _merge_group(
                index, group, entities=entities, as_of_ms=as_of_ms, values=values, newest=newest
            )
    if layout.unwindowed is not None and (
        features is None or any(f.name in features for f in layout.unwindowed.features)
    ):
        _merge_unwindowed(layout.unwindowed, entities, values, newest)
    if features is not None:
        values = {name: values[name] for name in features}
        newest = {name: newest[name] for name in features}
    return MergedView(values, newest)


@dataclass(frozen=True, slots=True)
class _Rows:
    """One group's rows of every entity, in merge order per entity."""

    table: npt.NDArray[np.void]
    entity: Indexes
    block: Indexes  # index into ``blocks``
    local: Indexes  # row index inside its block
    blocks: list[Block]


def _gather(index: int, entities: Sequence[Sequence[Block]], dtype: np.dtype[np.void]) -> _Rows:
    tables, owners, partitions, blocks = [], [], [], []
    for entity, entity_blocks in enumerate(entities):
        for block in entity_blocks:
            table = block.tables[index]
            if len(table):
                tables.append(table)
                owners.append(entity)
                partitions.append(block.partition)
                blocks.append(block)
    if not tables:
        empty = np.zeros(0, dtype=np.intp)
        return _Rows(np.zeros(0, dtype=dtype), empty, empty, empty, blocks)
    lengths = np.fromiter((len(t) for t in tables), dtype=np.intp, count=len(tables))
    table = np.concatenate(tables)
    entity_of = np.repeat(np.asarray(owners, dtype=np.intp), lengths)
    block_of = np.repeat(np.arange(len(tables), dtype=np.intp), lengths)
    local = np.arange(len(table), dtype=np.intp) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    if len(set(owners)) != len(owners):  # some entity has several partitions: interleave them
        partition_of = np.repeat(np.asarray(partitions, dtype=np.int64), lengths)
        order = np.lexsort((partition_of, table["start"], entity_of))
        table, entity_of, block_of, local = (
            table[order],
            entity_of[order],
            block_of[order],
            local[order],
        )
    return _Rows(table, entity_of, block_of, local, blocks)


def _merge_group(
    index: int,
    group: GroupLayout,
    *,
    entities: Sequence[Sequence[Block]],
    as_of_ms: int,
    values: dict[str, list[Any]],
    newest: dict[str, npt.NDArray[np.int64]],
) -> None:
    rows = _gather(index, entities, group.dtype)
    n, k, tile = len(entities), len(group.windows), group.tile_ms
    size = n * k
    start = rows.table["start"]
    head = as_of_ms - as_of_ms % tile
    not_after = start <= head
    picks = [np.flatnonzero(not_after & (start >= head + tile - w)) for w in group.windows]
    picked = np.concatenate(picks)
    slot = np.concatenate([rows.entity[p] * k + j for j, p in enumerate(picks)])
    starts = np.full(size, NO_TILE, dtype=np.int64)
    np.maximum.at(starts, slot, start[picked])
    merged = [
        _slot_values(kind, rows.table[f"v{i}"][picked], slot, size)
        for i, (kind, _) in enumerate(group.slots)
    ]
    for f, feature in enumerate(group.group.features):
        j = group.feature_window[f]
        newest[feature.name] = starts[j::k]
        slots = group.feature_slots[f]
        if not slots:
            values[feature.name] = _variable_values(group, f, rows, picks[j], n=n, index=index)
        elif feature.aggregation is Aggregation.MEAN:
            values[feature.name] = _means(merged[slots[0]][j::k], merged[slots[1]][j::k])
        elif feature.aggregation is Aggregation.COUNT:
            values[feature.name] = merged[slots[0]][j::k].astype(np.int64).tolist()
        elif feature.aggregation is Aggregation.SUM:
            values[feature.name] = merged[slots[0]][j::k].tolist()
        else:
            values[feature.name] = _extremes(merged[slots[0]][j::k])


def _slot_values(kind: str, column: npt.NDArray[Any], slot: Indexes, size: int) -> Floats:
    if kind in (COUNT, SUM):
        # Counts are summed as floats: exact below 2**53 events.
        # float64 even when nothing is picked (bincount then answers int64).
        return np.bincount(slot, weights=column, minlength=size).astype(np.float64, copy=False)
    out = np.full(size, np.nan)
    (np.fmin if kind == MIN else np.fmax).at(out, slot, column)
    _first_zero(out, slot, column)
    return out


def _first_zero(out: Floats, slot: Indexes, column: Floats) -> None:
    """Where an extreme is zero, give it the sign of the first zero in merge order."""
    if not np.any(out == 0):
        return
    zeros = np.flatnonzero(column == 0)
    slots, first = np.unique(slot[zeros], return_index=True)
    zero = out[slots] == 0
    out[slots[zero]] = column[zeros[first[zero]]]


def _means(counts: Floats, sums: Floats) -> list[Any]:
    empty = counts == 0
    quotients: list[Any] = np.divide(sums, counts, out=np.zeros_like(sums), where=~empty).tolist()
    if empty.any():
        return [None if e else q for q, e in zip(quotients, empty.tolist(), strict=True)]
    return quotients


def _extremes(column: Floats) -> list[Any]:
    out: list[Any] = column.tolist()
    empty = np.isnan(column)  # the empty state: no tile of the window holds data
    if empty.any():
        return [None if e else v for v, e in zip(out, empty.tolist(), strict=True)]
    return out


def _variable_values(
    group: GroupLayout, feature: int, rows: _Rows, picked: Indexes, *, n: int, index: int
) -> list[Any]:
    """A variable-width feature, merged tile by tile with its aggregator in merge order."""
    aggregator = group.group.aggregators[feature]
    width = len(group.variable)
    column = group.variable.index(feature)
    merged = [aggregator.initialize() for _ in range(n)]
    entity, block, local = rows.entity.tolist(), rows.block.tolist(), rows.local.tolist()
    for at in picked.tolist():
        source = rows.blocks[block[at]]
        offsets = cast(npt.NDArray[np.uint32], source.offsets[index])  # set: group has some
        cell = local[at] * width + column
        payload = source.blobs[index][int(offsets[cell]) : int(offsets[cell + 1])]
        e = entity[at]
        merged[e] = aggregator.merge(merged[e], aggregator.load(payload))
    return [aggregator.result(state) for state in merged]


def _merge_unwindowed(
    group: TileGroup,
    entities: Sequence[Sequence[Block]],
    values: dict[str, list[Any]],
    newest: dict[str, npt.NDArray[np.int64]],
) -> None:
    features, aggregators = group.features, group.aggregators
    columns: list[list[Any]] = [[] for _ in features]
    for entity_blocks in entities:
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
            columns[i].append(aggregators[i].result(state))
    for feature, column in zip(features, columns, strict=True):
        values[feature.name] = column
        newest[feature.name] = np.full(len(entities), NO_TILE, dtype=np.int64)
