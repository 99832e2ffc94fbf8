"""Online layout v2: one packed block per (view version, entity, source partition).

A block holds every live tile of one entity's view written by one source partition, as one table
of fixed-width little-endian rows that ``np.frombuffer`` reads in place (no Python object per
tile); states without a fixed width stay compact byte sections beside the table::

    header     "FLB" | layout version u8 | view version u32 | partition u32 | rows u32
               | variable-width cells u32 | variable bytes u32 | unwindowed bytes u32
               | 4 zero bytes                                                  (32 bytes)
    table      ``rows`` records of :attr:`BlockLayout.dtype`, ascending by (group, start)
    variable   when the view has variable-width tiled features: one u32 offset per cell plus a
               final one, then the blob they index; a row of group ``g`` has one cell per
               variable-width feature of ``g`` (row order, then feature order), each the bytes
               of ``aggregator.dump(state)``
    unwindowed ``TileGroup.encode`` of the unwindowed group's states (``last``, ``cusum``), or
               nothing (0 bytes) when this partition holds none

A row is ``start`` (int64 ms), ``group`` (int64, the index of its tile group among the view's
tiled groups) and one float64 column per *slot*, the distinct fixed-width states of the view's
tiled features: ``count`` (also a mean's count; exact below 2**53 events), ``sum`` of a column
(also a mean's sum), ``min`` and ``max`` of a column (NaN for the empty state). Every column is 8
bytes, so a reader may see the table as one rows x columns float64 array (its first two columns
as int64). A slot no feature of the row's group uses holds 0 (NaN for extremes). Features
sharing a slot hold equal states, because every feature of a group folds every event of its tile
(a source field is never missing); :func:`encode_block` checks it bit for bit.
``distinct_count`` (HyperLogLog registers) and ``last_n`` are the variable-width tiled features.
One table for all groups lets a reader load the rows of many entities with a single
``np.frombuffer`` over their joined tables.

Invariants: the layout depends only on the view (its version and features), like
``features.tile_groups``; rows are strictly ascending by (group, start) with starts aligned to
their group's tile. :func:`decode_block` checks the structure (magic, versions, section sizes) in
constant time; :meth:`Block.table` and the merge (:mod:`features.block_merge`, vectorised over all
the blocks it reads) check the rows. Bad bytes raise :class:`~features.exceptions.CorruptState`
naming what is wrong.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from features.catalog import Aggregation, Feature, FeatureView
from features.exceptions import CorruptState
from features.tile_groups import TileGroup, tile_groups

LAYOUT_VERSION = 1
FIELD_PREFIX = "b_p"  # a block's store field: ``b_p<partition>`` (:func:`block_field`)
_MAGIC = b"FLB"
_HEADER = struct.Struct("<3sBIIIIII4x")  # 32 bytes: the table after it is 8-byte aligned
_OFFSET = np.dtype("<u4")
_CELL = struct.Struct("<II")

COUNT, SUM, MIN, MAX = "count", "sum", "min", "max"
Slot = tuple[str, str | None]  # (kind, source column); count has no column
_Fill = tuple[int, int, "Callable[[Any], Any]", bool]  # feature, slot, extractor, slot's first
VARIABLE = frozenset({Aggregation.DISTINCT_COUNT, Aggregation.LAST_N})

Table = npt.NDArray[np.void]
TileKey = tuple[int | None, int | None]  # (tile ms, tile start); (None, None) is unwindowed


def _slots_of(feature: Feature) -> tuple[Slot, ...]:
    agg, column = feature.aggregation, feature.column
    if agg is Aggregation.COUNT:
        return ((COUNT, None),)
    if agg is Aggregation.MEAN:
        return ((COUNT, None), (SUM, column))
    if agg is Aggregation.SUM:
        return ((SUM, column),)
    if agg is Aggregation.MIN:
        return ((MIN, column),)
    if agg is Aggregation.MAX:
        return ((MAX, column),)
    return ()


def _extractor(feature: Feature, kind: str) -> Callable[[Any], Any]:
    """How a feature's state gives the value of its slot of ``kind``."""
    if feature.aggregation is Aggregation.MEAN:
        return _mean_count if kind == COUNT else _mean_sum
    return _same


def _mean_count(state: Any) -> Any:
    return state[0]


def _mean_sum(state: Any) -> Any:
    return state[1]


def _same(state: Any) -> Any:
    return state


@dataclass(frozen=True)
class GroupLayout:
    """What the block layout knows of one tiled group.

    ``feature_slots[f]`` are the slot indexes of the group's feature ``f``: one, two for a mean
    (count, sum), none for a variable-width feature, whose position among ``variable`` is its
    cell in a row of this group."""

    group: TileGroup
    feature_slots: tuple[tuple[int, ...], ...]
    variable: tuple[int, ...]
    windows: tuple[int, ...]  # distinct windows of the group, ascending ms
    feature_window: tuple[int, ...]  # per feature: its index in ``windows``

    @property
    def tile_ms(self) -> int:
        return self.group.tile_ms or 0


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """The block layout of one view version (build it once per view: :meth:`for_view`; blocks
    are read with the very layout object they were decoded with, compared by identity)."""

    view_version: int
    groups: tuple[TileGroup, ...]  # every group, as ``tile_groups`` orders them (the reference's)
    tiled: tuple[GroupLayout, ...]  # the ``group`` column indexes this
    unwindowed: TileGroup | None
    slots: tuple[Slot, ...]  # column ``f"v{i}"`` holds slot ``i``
    dtype: np.dtype[np.void]
    has_variable: bool  # some tiled feature has variable-width states
    tiles: npt.NDArray[np.int64]  # per tiled group: its tile ms

    @cached_property
    def row_plans(self) -> tuple[tuple[Any, ...], tuple[tuple[_Fill, ...], ...]]:
        """How ``encode_block`` fills a row: the slots' empty values, and per tiled group, per
        (feature, slot) in feature order, the extractor of the slot's value from the feature's
        state and whether it is the slot's first feature (the others must agree with it)."""
        empty = tuple(np.nan if kind in (MIN, MAX) else 0 for kind, _ in self.slots)
        plans = []
        for group in self.tiled:
            filled: set[int] = set()
            plan = []
            for f, slots in enumerate(group.feature_slots):
                feature = group.group.features[f]
                for slot in slots:
                    extract = _extractor(feature, self.slots[slot][0])
                    plan.append((f, slot, extract, slot not in filled))
                    filled.add(slot)
            plans.append(tuple(plan))
        return empty, tuple(plans)

    @classmethod
    def for_view(cls, view: FeatureView) -> BlockLayout:
        groups = tile_groups(view)
        slots: list[Slot] = []
        tiled = []
        for group in groups:
            if group.tile_ms is None:
                continue
            feature_slots = []
            for feature in group.features:
                mine = []
                for slot in _slots_of(feature):
                    if slot not in slots:
                        slots.append(slot)
                    mine.append(slots.index(slot))
                feature_slots.append(tuple(mine))
            windows = sorted({f.window_ms or 0 for f in group.features})
            tiled.append(
                GroupLayout(
                    group=group,
                    feature_slots=tuple(feature_slots),
                    variable=tuple(
                        i for i, f in enumerate(group.features) if f.aggregation in VARIABLE
                    ),
                    windows=tuple(windows),
                    feature_window=tuple(windows.index(f.window_ms or 0) for f in group.features),
                )
            )
        fields = [("start", "<i8"), ("group", "<i8")] + [
            (f"v{i}", "<f8") for i in range(len(slots))
        ]
        return cls(
            view_version=view.version,
            groups=groups,
            tiled=tuple(tiled),
            unwindowed=next((g for g in groups if g.tile_ms is None), None),
            slots=tuple(slots),
            dtype=np.dtype(fields),
            has_variable=any(g.variable for g in tiled),
            tiles=np.array([g.tile_ms for g in tiled], dtype=np.int64),
        )


TABLE_AT = _HEADER.size


class Block(NamedTuple):
    """A decoded block: where its sections lie in ``raw``; nothing is decoded per tile.

    The table is ``rows`` records at ``raw[TABLE_AT:]``; ``cells + 1`` u32 offsets at
    ``raw[offsets_at:]`` index the variable-width blob that follows them; ``unwindowed`` is the
    unwindowed group's payload, if this partition holds one. A named tuple: a 100-entity read
    builds 100 of them, where a frozen dataclass's constructor cost shows."""

    layout: BlockLayout
    raw: bytes
    partition: int
    rows: int
    cells: int
    offsets_at: int
    blob: int  # bytes of the variable-width blob
    unwindowed: bytes | None

    def table(self) -> Table:
        """The rows as a structured array over ``raw`` (checked: see :func:`check_rows`)."""
        table = np.frombuffer(self.raw, self.layout.dtype, self.rows, TABLE_AT)
        group, start = table["group"].copy(), table["start"].copy()
        check_rows(self.layout, group, start, np.zeros(1, dtype=np.intp))
        return table

    def cell(self, index: int) -> bytes:
        """The dumped state in variable-width cell ``index``."""
        if not 0 <= index < self.cells:
            raise CorruptState(f"block has {self.cells} variable-width cells, not {index + 1}")
        low, high = _CELL.unpack_from(self.raw, self.offsets_at + index * _OFFSET.itemsize)
        if not low <= high <= self.blob:
            raise CorruptState("block offsets of the variable-width states are invalid")
        at = self.offsets_at + (self.cells + 1) * _OFFSET.itemsize
        return self.raw[at + low : at + high]


def check_rows(
    layout: BlockLayout,
    group: npt.NDArray[np.int64],
    start: npt.NDArray[np.int64],
    firsts: npt.NDArray[np.intp],
) -> None:
    """Raise :class:`CorruptState` unless the rows of blocks joined end to end (their ``group``
    and ``start`` columns; the first row of each block at ``firsts``) are ascending by (group,
    start) inside each block, with known groups and starts aligned to their group's tile."""
    if not len(group):
        return
    known = len(layout.tiled)
    if (group.view(np.uint64) >= known).any():  # negative groups wrap to huge
        raise CorruptState(f"block rows name a tile group outside 0..{known - 1}")
    if (start % layout.tiles[group]).any():
        raise CorruptState("block rows hold tile starts not aligned to their tile")
    step = group[1:] - group[:-1]
    later = (step > 0) | ((step == 0) & (start[1:] > start[:-1]))
    later[firsts[1:] - 1] = True  # a block's first row follows another block's last
    if not later.all():
        raise CorruptState("block rows are not ascending by (group, start)")


def encode_block(
    layout: BlockLayout, partition: int, tiles: Mapping[TileKey, Sequence[Any]]
) -> bytes:
    """The block of one partition's live tiles of one entity.

    ``tiles`` maps ``(tile_ms, start)`` to the group's states in feature order (the processor's
    tile states); the unwindowed group's states are under ``(None, None)``. A tile size the view
    has no group for raises ``ValueError``; features of one tile that disagree on a shared slot
    raise :class:`CorruptState`.
    """
    index = {g.tile_ms: i for i, g in enumerate(layout.tiled)}
    keyed = []
    for (tile_ms, start), states in tiles.items():
        if tile_ms is None:
            continue
        if tile_ms not in index or start is None:
            raise ValueError(f"view version {layout.view_version} has no tile group {tile_ms} ms")
        keyed.append((index[tile_ms], start, states))
    keyed.sort(key=_group_and_start)
    rows = [_row(layout, group, start, states) for group, start, states in keyed]
    table = np.array(rows, dtype=layout.dtype) if rows else np.zeros(0, dtype=layout.dtype)
    cells, variable = _variable(layout, keyed)
    unwindowed = b""
    latest = tiles.get((None, None))
    if latest is not None:
        if layout.unwindowed is None:
            raise ValueError(f"view version {layout.view_version} has no unwindowed features")
        unwindowed = layout.unwindowed.encode(latest)
    head = _HEADER.pack(
        _MAGIC,
        LAYOUT_VERSION,
        layout.view_version,
        partition,
        len(table),
        cells,
        len(variable),
        len(unwindowed),
    )
    return head + table.tobytes() + variable + unwindowed


def _group_and_start(item: tuple[int, int, Sequence[Any]]) -> tuple[int, int]:
    return item[0], item[1]


def _row(layout: BlockLayout, index: int, start: int, states: Sequence[Any]) -> tuple[Any, ...]:
    empty, plans = layout.row_plans
    row: list[Any] = [start, index, *empty]
    for f, slot, extract, first in plans[index]:
        value = extract(states[f])
        if first:
            row[2 + slot] = np.nan if value is None else value
        elif not _same_bits(value, row[2 + slot]):
            raise CorruptState(
                f"feature {layout.tiled[index].group.features[f].name!r} disagrees with the "
                f"other features of its tile group on the {layout.slots[slot][0]} of the tile "
                f"at {start}"
            )
    return tuple(row)


def _same_bits(value: Any, stored: Any) -> bool:
    if value is None:
        return isinstance(stored, float) and math.isnan(stored)  # NaN: the empty state
    return bool(value == stored) and (
        value != 0 or math.copysign(1.0, value) == math.copysign(1.0, stored)
    )


def _variable(
    layout: BlockLayout, keyed: list[tuple[int, int, Sequence[Any]]]
) -> tuple[int, bytes]:
    if not layout.has_variable:
        return 0, b""
    dumps = []
    for index, _start, states in keyed:
        group = layout.tiled[index]
        dumps += [group.group.aggregators[f].dump(states[f]) for f in group.variable]
    # struct, not np.cumsum: numpy's fixed cost per call is most of it at a few cells a block.
    offsets = struct.pack(f"<{len(dumps) + 1}I", *accumulate(map(len, dumps), initial=0))
    return len(dumps), offsets + b"".join(dumps)


def decode_block(layout: BlockLayout, raw: bytes) -> Block:
    """Where ``raw``'s sections lie, checked in constant time; bad structure raises
    :class:`CorruptState` (the rows are checked where they are read, see :func:`check_rows`)."""
    if len(raw) < _HEADER.size:
        raise CorruptState(f"block of {len(raw)} bytes is shorter than its header")
    magic, version, view_version, partition, rows, cells, variable, unwindowed = (
        _HEADER.unpack_from(raw)
    )
    if magic != _MAGIC:
        raise CorruptState(f"not a block: magic {magic!r}")
    if version != LAYOUT_VERSION:
        raise CorruptState(
            f"block layout version {version}, this reader knows {LAYOUT_VERSION}: rehydrate"
        )
    if view_version != layout.view_version:
        raise CorruptState(f"block of view version {view_version}, expected {layout.view_version}")
    offsets_at = _HEADER.size + rows * layout.dtype.itemsize
    end = offsets_at + variable + unwindowed
    if end != len(raw):
        raise CorruptState(f"block is {len(raw)} bytes, its header adds up to {end}")
    blob = variable - (cells + 1) * _OFFSET.itemsize
    if variable and (not layout.has_variable or blob < 0):
        raise CorruptState("block has a variable-width section its view cannot hold")
    if layout.has_variable and rows and not variable:
        raise CorruptState("block lacks the variable-width states of its rows")
    if unwindowed and layout.unwindowed is None:
        raise CorruptState("block holds unwindowed states but the view has no unwindowed features")
    payload = raw[offsets_at + variable :] if unwindowed else None
    return Block(layout, raw, partition, rows, cells, offsets_at, max(blob, 0), payload)


def block_field(partition: int) -> str:
    """The store field (of the entity's store key) holding the block of ``partition``."""
    return f"{FIELD_PREFIX}{partition}"


def block_partition(field: str) -> int | None:
    """The partition of a :func:`block_field` name; ``None`` for any other field (an older
    layout's per-tile fields, which readers of this layout ignore)."""
    if not field.startswith(FIELD_PREFIX):
        return None
    digits = field[len(FIELD_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def decode_tiles(layout: BlockLayout, raw: bytes) -> tuple[int, dict[TileKey, list[Any]]]:
    """The inverse of :func:`encode_block`: ``(partition, tiles)`` with ``tiles`` keyed and
    ordered as ``encode_block`` takes them, so ``encode_block(layout, *decode_tiles(layout, b))``
    is ``b`` again. The processor rebuilds its state from its changelog with it."""
    block = decode_block(layout, raw)
    table = block.table()
    tiles: dict[TileKey, list[Any]] = {}
    cell = 0
    for row in table.tolist():
        start, index = int(row[0]), int(row[1])
        group = layout.tiled[index]
        states: list[Any] = []
        for f, slots in enumerate(group.feature_slots):
            if f in group.variable:
                states.append(group.group.aggregators[f].load(block.cell(cell)))
                cell += 1
            else:
                states.append(_state(group.group.features[f], layout, slots, row))
        tiles[(group.tile_ms, start)] = states
    if cell != block.cells:
        raise CorruptState("block holds another number of variable-width cells than its rows")
    if block.unwindowed is not None and layout.unwindowed is not None:
        tiles[(None, None)] = layout.unwindowed.decode(block.unwindowed)
    return block.partition, tiles


def _state(
    feature: Feature, layout: BlockLayout, slots: tuple[int, ...], row: Sequence[Any]
) -> Any:
    """A fixed-width feature's state from its slots of one row (``_row``'s inverse)."""
    values = [row[2 + slot] for slot in slots]
    agg = feature.aggregation
    if agg is Aggregation.COUNT:
        return int(values[0])
    if agg is Aggregation.MEAN:
        return (int(values[0]), float(values[1]))
    if agg is Aggregation.SUM:
        return float(values[0])
    return None if math.isnan(values[0]) else float(values[0])


def blocks_of(layout: BlockLayout, fields: Mapping[str, bytes]) -> list[Block]:
    """The decoded blocks among one entity's stored fields, by ascending partition; other
    fields (an older layout's per-tile fields, stores' own bookkeeping) are not blocks and are
    skipped. A block on another layout version raises :class:`CorruptState` ("rehydrate")."""
    found = []
    for name, raw in fields.items():
        partition = block_partition(name)
        if partition is not None:
            found.append((partition, raw))
    found.sort(key=_first)
    return [decode_block(layout, raw) for _, raw in found]


def _first(item: tuple[int, bytes]) -> int:
    return item[0]
