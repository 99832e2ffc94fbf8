"""How one view's tile states are laid out in an online store, and read back into feature values.

A view's features are grouped by tile size; one store field holds the partial states of every
feature of a group for one tile of one source partition::

    field   = "t<tile_ms>_p<partition>@<tile_start_ms>"   (tiled group)
              "u_p<partition>"                            (unwindowed: last, cusum)
    payload = for each feature of the group, in catalog order: 4-byte length + aggregator.dump()

Why group: a 12-feature view with four window sizes writes 4 fields per event instead of 12, and a
read fetches one hash per entity. Why the partition: a view keyed by another field than the topic
(merchant features from a user-keyed topic) gets partial tiles from several partitions; partial
aggregates merge exactly, so the reader merges them like tiles and no repartition topic is needed.
Sequential state (CUSUM) cannot merge, so the catalog only allows it on views keyed like their
source, which live in exactly one partition.

Invariants: the layout of a group depends only on the view version, so a reader decodes what any
writer of that version wrote; :func:`read_view` merges tiles in ascending tile order (then
partition order), which makes floating-point results identical wherever it runs.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features.aggregators import Aggregator, aggregator_for
from features.catalog import Aggregation, Feature, FeatureView
from features.exceptions import CorruptState
from features.tiles import covering_tiles

_LENGTH = struct.Struct(">I")
_FIELD = re.compile(r"(?:t(?P<tile>[0-9]+)|u)_p(?P<part>[0-9]+)(?:@(?P<start>-?[0-9]+))?")


@dataclass(frozen=True)
class TileGroup:
    """Features of one view sharing a tile size (``tile_ms`` is None for unwindowed features)."""

    tile_ms: int | None
    features: tuple[Feature, ...]
    aggregators: tuple[Aggregator[Any, Any], ...]

    @property
    def span_ms(self) -> int | None:
        """How long after its start a tile is still read: the group's longest window."""
        windows = [f.window_ms for f in self.features if f.window_ms is not None]
        return max(windows) if windows else None

    def field(self, partition: int, tile_start_ms: int | None) -> str:
        if self.tile_ms is None:
            return f"u_p{partition}"
        return f"t{self.tile_ms}_p{partition}@{tile_start_ms}"

    def initial_states(self) -> list[Any]:
        return [a.initialize() for a in self.aggregators]

    def fold(
        self,
        states: list[Any],
        events: Sequence[Mapping[str, Any]],
        times: Sequence[int],
        orders: Sequence[int],
    ) -> None:
        """Fold ``events`` (in order, with their event times and orders) into ``states`` in
        place: equal to calling each feature's ``agg`` once per event, in order."""
        ones = [1] * len(events)  # a feature without a column (count) folds the value 1
        columns: dict[str, list[Any]] = {}
        for i, (feature, aggregator) in enumerate(
            zip(self.features, self.aggregators, strict=True)
        ):
            column = feature.column
            if column is None:
                values = ones
            elif column in columns:
                values = columns[column]
            else:
                values = columns[column] = [event[column] for event in events]
            states[i] = aggregator.agg_seq(states[i], values, times, orders)

    def encode(self, states: Sequence[Any]) -> bytes:
        parts = []
        for aggregator, state in zip(self.aggregators, states, strict=True):
            dumped = aggregator.dump(state)
            parts.append(_LENGTH.pack(len(dumped)) + dumped)
        return b"".join(parts)

    def decode(self, payload: bytes) -> list[Any]:
        states, at = [], 0
        for aggregator in self.aggregators:
            if at + _LENGTH.size > len(payload):
                raise CorruptState("tile payload is shorter than its group")
            (length,) = _LENGTH.unpack_from(payload, at)
            at += _LENGTH.size
            states.append(aggregator.load(payload[at : at + length]))
            at += length
        if at != len(payload):
            raise CorruptState("tile payload is longer than its group")
        return states


def tile_groups(view: FeatureView) -> tuple[TileGroup, ...]:
    """The view's groups: tiled ones by ascending tile size, then the unwindowed one if any."""
    by_tile: dict[int | None, list[Feature]] = {}
    for feature in view.features:
        spec = feature.tile_spec
        by_tile.setdefault(None if spec is None else spec.tile_ms, []).append(feature)
    ordered = sorted(by_tile.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    return tuple(
        TileGroup(tile_ms, tuple(fs), tuple(aggregator_for(f) for f in fs))
        for tile_ms, fs in ordered
    )


def parse_field(field: str) -> tuple[int | None, int, int | None]:
    """``(tile_ms, partition, tile_start_ms)`` of a field written by :meth:`TileGroup.field`."""
    match = _FIELD.fullmatch(field)
    if match is None:
        raise CorruptState(f"not a tile-group field: {field!r}")
    tile = match.group("tile")
    start = match.group("start")
    if (tile is None) != (start is None):
        raise CorruptState(f"not a tile-group field: {field!r}")
    return (int(tile) if tile else None), int(match.group("part")), (int(start) if start else None)


def read_view(
    groups: Sequence[TileGroup], fields: Mapping[str, bytes], as_of_ms: int
) -> dict[str, Any]:
    """Every feature's value as of ``as_of_ms`` from one entity's stored fields.

    Tiles outside a feature's covering range are ignored (a store may still hold expired tiles);
    a feature with no state at all gets its aggregator's empty result (callers apply defaults).
    """
    decoded: dict[tuple[int | None, int | None], list[tuple[int, list[Any]]]] = {}
    by_tile = {g.tile_ms: g for g in groups}
    for field in sorted(fields):
        tile_ms, partition, start = parse_field(field)
        group = by_tile.get(tile_ms)
        if group is not None:
            decoded.setdefault((tile_ms, start), []).append(
                (partition, group.decode(fields[field]))
            )
    values: dict[str, Any] = {}
    for group in groups:
        for index, feature in enumerate(group.features):
            values[feature.name] = _feature_value(group, index, feature, decoded, as_of_ms)
    return values


def _feature_value(
    group: TileGroup,
    index: int,
    feature: Feature,
    decoded: Mapping[tuple[int | None, int | None], list[tuple[int, list[Any]]]],
    as_of_ms: int,
) -> Any:
    aggregator = group.aggregators[index]
    if group.tile_ms is None:
        starts: Sequence[int | None] = [None]
    else:
        starts = covering_tiles(as_of_ms, feature.window_ms or 0, group.tile_ms)
    merged = aggregator.initialize()
    for start in starts:
        for _partition, states in sorted(decoded.get((group.tile_ms, start), ()), key=_first):
            if feature.aggregation is Aggregation.CUSUM:
                merged = states[index]  # one partition only (see the module docstring)
            else:
                merged = aggregator.merge(merged, states[index])
    return aggregator.result(merged)


def _first(item: tuple[int, list[Any]]) -> int:
    return item[0]
