"""Online layout v2: one packed block per (view version, entity, source partition).

A block holds every live tile of one entity's view written by one source partition. Each tiled
group is a table of fixed-width little-endian rows that ``np.frombuffer`` reads in place (no Python
object per tile); states without a fixed width stay compact byte sections beside the tables::

    header     "FLB" | layout version u8 | view version u32 | partition u32 | groups u32
               | unwindowed bytes u32                                        (20 bytes)
    directory  per tiled group: tile ms u32 | rows u32 | variable bytes u32   (12 bytes each)
    padding    zeros up to a multiple of 8 bytes, so the tables are 8-byte aligned
    tables     per tiled group: ``rows`` records of :attr:`GroupLayout.dtype`, ascending start
    variable   per tiled group with variable-width features: (rows x features + 1) u32 offsets
               into the blob that follows, row-major; each slice is ``aggregator.dump(state)``
    unwindowed ``TileGroup.encode`` of the unwindowed group's states (``last``, ``cusum``), or
               nothing (0 bytes) when this partition holds none

A table row is ``start`` (int64 ms) then one column per *slot*, the distinct fixed-width states of
the group's features: ``count`` (int64; also a mean's count), ``sum`` of a column (float64; also a
mean's sum), ``min`` and ``max`` of a column (float64, NaN for the empty state). Features sharing a
slot hold equal states, because every feature of a group folds every event of its tile (a source
field is never missing); :func:`encode_block` checks it bit for bit. ``distinct_count`` (HyperLogLog
registers) and ``last_n`` are the variable-width features of a tiled group.

Invariants: the layout depends only on the view (its version and features), like
``features.tile_groups``; a block's rows are strictly ascending by start and aligned to the tile,
which :func:`decode_block` checks, so readers need not sort one partition's rows; bad bytes raise
:class:`~features.exceptions.CorruptState` naming what is wrong. The merge of blocks into values is
:mod:`features.block_merge`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from features.catalog import Aggregation, Feature, FeatureView
from features.exceptions import CorruptState
from features.tile_groups import TileGroup, tile_groups

LAYOUT_VERSION = 1
_MAGIC = b"FLB"
_HEADER = struct.Struct("<3sBIIII")
_DIRECTORY = struct.Struct("<III")
_ALIGN = 8
_OFFSET = np.dtype("<u4")

COUNT, SUM, MIN, MAX = "count", "sum", "min", "max"
Slot = tuple[str, str | None]  # (kind, source column); count has no column
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
    if kind in (MIN, MAX):
        return _or_nan
    return _same


def _mean_count(state: Any) -> Any:
    return state[0]


def _mean_sum(state: Any) -> Any:
    return state[1]


def _or_nan(state: Any) -> Any:
    return np.nan if state is None else state


def _same(state: Any) -> Any:
    return state


@dataclass(frozen=True)
class GroupLayout:
    """How one tiled group's tiles sit in a block.

    ``slots[i]`` is the state in table column ``f"v{i}"``; ``feature_slots[f]`` the slot indexes
    of feature ``f`` (group order): one, two for a mean (count, sum), none for a variable-width
    feature, whose place among ``variable`` is its column in the group's offsets."""

    group: TileGroup
    dtype: np.dtype[np.void]
    slots: tuple[Slot, ...]
    feature_slots: tuple[tuple[int, ...], ...]
    variable: tuple[int, ...]
    windows: tuple[int, ...]  # distinct windows of the group, ascending ms
    feature_window: tuple[int, ...]  # per feature: its index in ``windows``

    @property
    def tile_ms(self) -> int:
        return self.group.tile_ms or 0

    @classmethod
    def of(cls, group: TileGroup) -> GroupLayout:
        slots: list[Slot] = []
        feature_slots = []
        for feature in group.features:
            mine = []
            for slot in _slots_of(feature):
                if slot not in slots:
                    slots.append(slot)
                mine.append(slots.index(slot))
            feature_slots.append(tuple(mine))
        fields = [("start", "<i8")] + [
            (f"v{i}", "<i8" if kind == COUNT else "<f8") for i, (kind, _) in enumerate(slots)
        ]
        windows = sorted({f.window_ms or 0 for f in group.features})
        return cls(
            group=group,
            dtype=np.dtype(fields),
            slots=tuple(slots),
            feature_slots=tuple(feature_slots),
            variable=tuple(i for i, f in enumerate(group.features) if f.aggregation in VARIABLE),
            windows=tuple(windows),
            feature_window=tuple(windows.index(f.window_ms or 0) for f in group.features),
        )


@dataclass(frozen=True)
class BlockLayout:
    """The block layout of one view version: its tiled groups, then the unwindowed one."""

    view_version: int
    groups: tuple[TileGroup, ...]  # every group, as ``tile_groups`` orders them (the reference's)
    tiled: tuple[GroupLayout, ...]
    unwindowed: TileGroup | None

    @classmethod
    def for_view(cls, view: FeatureView) -> BlockLayout:
        groups = tile_groups(view)
        return cls(
            view_version=view.version,
            groups=groups,
            tiled=tuple(GroupLayout.of(g) for g in groups if g.tile_ms is not None),
            unwindowed=next((g for g in groups if g.tile_ms is None), None),
        )


@dataclass(frozen=True, slots=True)
class Block:
    """A decoded block: read-only array views over the raw bytes, nothing decoded per tile.

    ``tables[g]`` are the rows of tiled group ``g``; ``offsets[g]`` (rows x variable features +
    1 values, or None) index ``blobs[g]``; ``unwindowed`` is the unwindowed group's payload."""

    partition: int
    tables: tuple[Table, ...]
    offsets: tuple[npt.NDArray[np.uint32] | None, ...]
    blobs: tuple[bytes, ...]
    unwindowed: bytes | None


def encode_block(
    layout: BlockLayout, partition: int, tiles: Mapping[TileKey, Sequence[Any]]
) -> bytes:
    """The block of one partition's live tiles of one entity.

    ``tiles`` maps ``(tile_ms, start)`` to the group's states in feature order (the processor's
    tile states); the unwindowed group's states are under ``(None, None)``. Tiles of a tile size
    the view has no group for raise ``ValueError``.
    """
    by_group: dict[int, dict[int, Sequence[Any]]] = {g.tile_ms: {} for g in layout.tiled}
    for (tile_ms, start), states in tiles.items():
        if tile_ms is None:
            continue
        if tile_ms not in by_group or start is None:
            raise ValueError(f"view version {layout.view_version} has no tile group {tile_ms} ms")
        by_group[tile_ms][start] = states
    tables, variables, directory = [], [], []
    for group in layout.tiled:
        rows = by_group[group.tile_ms]
        table = _table(group, rows)
        variable = _variable(group, rows)
        tables.append(table.tobytes())
        variables.append(variable)
        directory.append(_DIRECTORY.pack(group.tile_ms, len(table), len(variable)))
    unwindowed_states = tiles.get((None, None))
    unwindowed = b""
    if unwindowed_states is not None:
        if layout.unwindowed is None:
            raise ValueError(f"view version {layout.view_version} has no unwindowed features")
        unwindowed = layout.unwindowed.encode(unwindowed_states)
    head = _HEADER.pack(
        _MAGIC, LAYOUT_VERSION, layout.view_version, partition, len(layout.tiled), len(unwindowed)
    ) + b"".join(directory)
    head += b"\0" * (-len(head) % _ALIGN)
    return head + b"".join(tables) + b"".join(variables) + unwindowed


def _table(group: GroupLayout, rows: Mapping[int, Sequence[Any]]) -> Table:
    starts = sorted(rows)
    table = np.zeros(len(starts), dtype=group.dtype)
    table["start"] = starts
    states = [rows[s] for s in starts]
    features = group.group.features
    for i, (kind, _column) in enumerate(group.slots):
        column = table[f"v{i}"]
        first = True
        for f, slots in enumerate(group.feature_slots):
            if i not in slots:
                continue
            extract = _extractor(features[f], kind)
            values = np.array([extract(s[f]) for s in states], dtype=column.dtype)
            if first:
                column[:] = values
                first = False
            elif values.tobytes() != column.tobytes():
                raise CorruptState(
                    f"feature {features[f].name!r} disagrees with the other features of its "
                    f"tile group on the {kind} of a tile"
                )
    return table


def _variable(group: GroupLayout, rows: Mapping[int, Sequence[Any]]) -> bytes:
    if not group.variable:
        return b""
    dumps = []
    aggregators = group.group.aggregators
    for start in sorted(rows):
        states = rows[start]
        dumps += [aggregators[f].dump(states[f]) for f in group.variable]
    offsets = np.zeros(len(dumps) + 1, dtype=_OFFSET)
    np.cumsum([len(d) for d in dumps], out=offsets[1:])
    return offsets.tobytes() + b"".join(dumps)


def decode_block(layout: BlockLayout, raw: bytes) -> Block:
    """A block's tables as array views over ``raw``; bad bytes raise :class:`CorruptState`."""
    if len(raw) < _HEADER.size:
        raise CorruptState(f"block of {len(raw)} bytes is shorter than its header")
    magic, version, view_version, partition, groups, unwindowed = _HEADER.unpack_from(raw)
    if magic != _MAGIC:
        raise CorruptState(f"not a block: magic {magic!r}")
    if version != LAYOUT_VERSION:
        raise CorruptState(
            f"block layout version {version}, this reader knows {LAYOUT_VERSION}: rehydrate"
        )
    if view_version != layout.view_version or groups != len(layout.tiled):
        raise CorruptState(
            f"block of view version {view_version} with {groups} tile groups, expected version "
            f"{layout.view_version} with {len(layout.tiled)}"
        )
    at = _HEADER.size + groups * _DIRECTORY.size
    if len(raw) < at:
        raise CorruptState("block is truncated in its directory")
    entries = [
        _DIRECTORY.unpack_from(raw, _HEADER.size + g * _DIRECTORY.size) for g in range(groups)
    ]
    at += -at % _ALIGN
    tables = []
    for group, (tile_ms, rows, _) in zip(layout.tiled, entries, strict=True):
        if tile_ms != group.tile_ms:
            raise CorruptState(f"block group of {tile_ms} ms where the view has {group.tile_ms}")
        size = rows * group.dtype.itemsize
        if at + size > len(raw):
            raise CorruptState(f"block is truncated in its {tile_ms} ms table")
        tables.append(_checked_table(group, np.frombuffer(raw, group.dtype, rows, at)))
        at += size
    offsets, blobs = [], []
    for group, (_, rows, size) in zip(layout.tiled, entries, strict=True):
        found, blob = _variable_section(group, raw, at, rows, size)
        offsets.append(found)
        blobs.append(blob)
        at += size
    if at + unwindowed != len(raw):
        raise CorruptState(f"block is {len(raw)} bytes, its sections add up to {at + unwindowed}")
    if unwindowed and layout.unwindowed is None:
        raise CorruptState("block holds unwindowed states but the view has no unwindowed features")
    return Block(
        partition, tuple(tables), tuple(offsets), tuple(blobs), raw[at:] if unwindowed else None
    )


def _checked_table(group: GroupLayout, table: Table) -> Table:
    starts = table["start"]
    if len(starts) and (np.any(starts % group.tile_ms != 0) or np.any(starts[1:] <= starts[:-1])):
        raise CorruptState(
            f"block rows of the {group.tile_ms} ms group are not ascending aligned tile starts"
        )
    return table


def _variable_section(
    group: GroupLayout, raw: bytes, at: int, rows: int, size: int
) -> tuple[npt.NDArray[np.uint32] | None, bytes]:
    if not group.variable:
        if size:
            raise CorruptState(f"block has variable states in the {group.tile_ms} ms group")
        return None, b""
    count = rows * len(group.variable) + 1
    head = count * _OFFSET.itemsize
    if size < head or at + size > len(raw):
        raise CorruptState(f"block is truncated in the {group.tile_ms} ms variable states")
    offsets = np.frombuffer(raw, _OFFSET, count, at)
    blob = raw[at + head : at + size]
    if offsets[0] != 0 or offsets[-1] != len(blob) or np.any(offsets[1:] < offsets[:-1]):
        raise CorruptState(f"block offsets of the {group.tile_ms} ms variable states are invalid")
    return offsets, blob
