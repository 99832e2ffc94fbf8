"""The packed block layout and its vectorised merge against the scalar reference, ``read_view``.

Tiles are built the way the stream builds them (``TileGroup.fold`` over events), so features that
share a slot (a count and a mean's count, a sum and a mean's sum) hold equal states; values are
compared bit for bit (float signs of zero included), over random tiles, partitions, windows and
``as_of``, with tiles before, inside and after each covering range.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from features.block_merge import NO_TILE, merge_blocks
from features.blocks import (
    LAYOUT_VERSION,
    TABLE_AT,
    Block,
    BlockLayout,
    block_field,
    block_partition,
    decode_block,
    decode_tiles,
    encode_block,
)
from features.catalog import Catalog, FeatureView
from features.demo import SOURCE, card_transactions_catalog
from features.exceptions import CorruptState
from features.tile_groups import read_view
from features.tiles import tile_start


def _feature(name: str, agg: str, column: str | None, window: str | None, **kw: Any) -> dict:
    out: dict[str, Any] = {"name": name, "aggregation": agg, **kw}
    if column is not None:
        out["column"] = column
    if window is not None:
        out["window"] = window
    return out


FEATURES = [
    _feature("count_5s", "count", None, "5s"),
    _feature("sum_5s", "sum", "amount", "5s"),
    _feature("mean_10s", "mean", "amount", "10s"),
    _feature("min_5s", "min", "amount", "5s"),
    _feature("max_10s", "max", "amount", "10s"),
    _feature("seq_sum_10s", "sum", "seq", "10s"),
    _feature("distinct_10s", "distinct_count", "merchant_id", "10s", hll_precision=4),
    _feature("count_2m", "count", None, "2m"),
    _feature("mean_2m", "mean", "amount", "2m"),
    _feature("min_2m", "min", "amount", "2m"),
    _feature("max_2m", "max", "amount", "2m"),
    _feature("last3_2m", "last_n", "amount", "2m", n=3),
    _feature("last_amount", "last", "amount", None),
    _feature("amount_cusum", "cusum", "amount", None, cusum_warmup=2),
]


def _view(features: list[dict]) -> FeatureView:
    demo = card_transactions_catalog().model_dump(mode="json")
    view = {
        "name": "t",
        "version": 3,
        "entity": "user",
        "source": SOURCE,
        "ttl": "1d",
        "freshness_target": "5s",
        "features": features,
    }
    return Catalog.from_dict({**demo, "views": [view], "services": []}).view("t")


VIEW = _view(FEATURES)
LAYOUT = BlockLayout.for_view(VIEW)
BENCH_LIKE = BlockLayout.for_view(
    _view(
        [
            _feature(f"{a}_{w}", a, None if a == "count" else "amount", w)
            for w in ("5s", "10s", "2m")
            for a in ("count", "sum", "mean", "min", "max")
        ]
    )
)

# Amounts where the order of a float sum shows, and both signed zeros.
AMOUNTS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.1, 1e16, -1e16, 3.0e-300, 1e100]),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
)
EVENT = st.tuples(
    st.integers(0, 9_999),  # offset inside the tile (clipped to the tile size)
    AMOUNTS,
    st.sampled_from(["m1", "m2", "m3", "m4"]),
    st.integers(-1_000, 1_000),
)
# One partition's tiles of one entity: tile index (relative to as_of's 1 s tile) -> events.
TILES = st.dictionaries(st.integers(-150, 8), st.lists(EVENT, min_size=1, max_size=3), max_size=10)
ENTITY = st.dictionaries(st.integers(0, 3), TILES, max_size=3)  # partition -> tiles


def _tiles(
    layout: BlockLayout, spec: dict[int, list[Any]], as_of: int
) -> dict[tuple[int | None, int | None], list[Any]]:
    """Every group's tiles holding the spec's events (each group folds every event, as the
    processor does), and the unwindowed states; event times lie in the 1 s tile of the index."""
    tiles: dict[tuple[int | None, int | None], list[Any]] = {}
    order = 0
    for index, events in sorted(spec.items()):
        when = tile_start(as_of, 1000) + index * 1000
        rows = [{"amount": a, "merchant_id": m, "seq": s} for _, a, m, s in events]
        times = [when + offset % 1000 for offset, *_ in events]
        orders = list(range(order, order + len(events)))
        order += len(events)
        for group in layout.groups:
            key = (
                (None, None)
                if group.tile_ms is None
                else (group.tile_ms, tile_start(when, group.tile_ms))
            )
            states = tiles.setdefault(key, group.initial_states())
            group.fold(states, rows, times, orders)
    return tiles


def _fields(layout: BlockLayout, partition: int, tiles: dict) -> dict[str, bytes]:
    by_tile = {g.tile_ms: g for g in layout.groups}
    return {
        by_tile[tile_ms].field(partition, start): by_tile[tile_ms].encode(states)
        for (tile_ms, start), states in tiles.items()
    }


def _bits(value: Any) -> Any:
    """A value with floats as their bytes, so -0.0 != 0.0 and types count."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, list):
        return [_bits(v) for v in value]
    return (type(value).__name__, value)


def _both(
    layout: BlockLayout, entities: list[dict[int, dict[int, list[Any]]]], as_of: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    blocks: list[list[Block]] = []
    expected = []
    for spec in entities:
        fields: dict[str, bytes] = {}
        mine = []
        for partition, tile_spec in spec.items():
            tiles = _tiles(layout, tile_spec, as_of)
            fields.update(_fields(layout, partition, tiles))
            mine.append(decode_block(layout, encode_block(layout, partition, tiles)))
        blocks.append(mine)
        expected.append(read_view(layout.groups, fields, as_of))
    merged = merge_blocks(layout, blocks, as_of)
    got = [merged.entity(i) for i in range(len(entities))]
    return (
        [{k: _bits(v) for k, v in e.items()} for e in expected],
        [{k: _bits(v) for k, v in g.items()} for g in got],
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(ENTITY, max_size=5), st.integers(-(10**12), 10**12))
@example(
    [
        {
            1: {0: [(0, 1e16, "m1", 0)], -1: [(0, 1.0, "m1", 0)]},
            0: {0: [(0, 1.0, "m1", 0)], -1: [(0, -1e16, "m1", 0)]},
        }
    ],
    5_500,
)
@example([{0: {0: [(0, 0.0, "m1", 0)]}, 1: {0: [(0, -0.0, "m1", 0)]}}, {}], 999)
def test_merge_equals_read_view_bit_for_bit(entities: list[dict], as_of: int) -> None:
    expected, got = _both(LAYOUT, entities, as_of)
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(ENTITY, min_size=1, max_size=5), st.integers(-(10**6), 10**6))
def test_fixed_width_only_view_equals_read_view(entities: list[dict], as_of: int) -> None:
    expected, got = _both(BENCH_LIKE, entities, as_of)
    assert got == expected


WINDOWS = ("1s", "3s", "10s", "30s", "1m", "2m", "5m", "10m")  # tiles of 1 s and 10 s
AGGREGATIONS = ("count", "sum", "mean", "min", "max", "distinct_count", "last_n")


@st.composite
def views(draw: st.DrawFn) -> BlockLayout:
    """A view of 1 to 6 random (aggregation, window) features, some sharing slots."""
    chosen = draw(
        st.lists(
            st.tuples(st.sampled_from(AGGREGATIONS), st.sampled_from(WINDOWS)),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    features = []
    for agg, window in chosen:
        column = {"count": None, "distinct_count": "merchant_id"}.get(agg, "amount")
        extra: dict[str, Any] = {"n": 2} if agg == "last_n" else {}
        features.append(_feature(f"{agg}_{window}", agg, column, window, **extra))
    return BlockLayout.for_view(_view(features))


WIDE_TILES = st.dictionaries(
    st.integers(-650, 8), st.lists(EVENT, min_size=1, max_size=2), max_size=12
)


@settings(max_examples=60, deadline=None)
@given(
    views(),
    st.lists(st.dictionaries(st.integers(0, 3), WIDE_TILES, max_size=3), max_size=4),
    st.integers(-(10**9), 10**9),
)
def test_random_views_equal_read_view(
    layout: BlockLayout, entities: list[dict], as_of: int
) -> None:
    expected, got = _both(layout, entities, as_of)
    assert got == expected


def test_newest_start_is_the_newest_covering_tile_with_data() -> None:
    as_of = 100_500
    tiles = _tiles(LAYOUT, {-2: [(0, 1.0, "m1", 0)], -9: [(0, 2.0, "m1", 0)]}, as_of)
    block = decode_block(LAYOUT, encode_block(LAYOUT, 0, tiles))
    merged = merge_blocks(LAYOUT, [[block], []], as_of, ["count_5s", "count_2m", "last_amount"])
    assert merged.names == ("count_5s", "count_2m", "last_amount")
    assert merged.newest.tolist() == [[98_000, 90_000, NO_TILE], [NO_TILE, NO_TILE, NO_TILE]]
    assert merged.values.tolist() == [[1, 0], [2, 0], [1.0, None]]


def test_a_block_holds_its_tiles_as_one_table() -> None:
    tiles = _tiles(LAYOUT, {0: [(5, 2.5, "m1", 7)], -3: [(0, -1.0, "m2", 1)]}, 10_000)
    block = decode_block(LAYOUT, encode_block(LAYOUT, 6, tiles))
    table = block.table()
    assert block.partition == 6
    assert table.dtype.names == ("start", "group", "v0", "v1", "v2", "v3", "v4")
    assert table[["group", "start"]].tolist() == [(0, 7_000), (0, 10_000), (1, 0), (1, 10_000)]
    assert table["v0"].tolist() == [1, 1, 1, 1]  # the count slot
    assert block.cells == 4  # distinct_10s in the two 1 s rows, last3_2m in the two 10 s rows
    assert block.unwindowed is not None


def _valid() -> bytes:
    tiles = _tiles(LAYOUT, {0: [(5, 2.5, "m1", 7)], -3: [(0, -1.0, "m2", 1)]}, 10_000)
    return encode_block(LAYOUT, 1, tiles)


def test_every_truncation_is_refused() -> None:
    raw = _valid()
    for cut in range(len(raw)):
        with pytest.raises(CorruptState):
            decode_block(LAYOUT, raw[:cut])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: b"XYZ" + raw[3:], "not a block"),
        (lambda raw: raw[:3] + bytes([LAYOUT_VERSION + 1]) + raw[4:], "rehydrate"),
        (lambda raw: raw[:4] + struct.pack("<I", 4) + raw[8:], "view version 4"),
        (lambda raw: raw + b"\0", "header adds up"),
    ],
)
def test_bad_bytes_raise_corrupt_state(mutate: Any, message: str) -> None:
    with pytest.raises(CorruptState, match=message):
        decode_block(LAYOUT, mutate(_valid()))


ROW = LAYOUT.dtype.itemsize


def _swap_rows(raw: bytes, first: int, second: int) -> bytes:
    out = bytearray(raw)
    a, b = TABLE_AT + first * ROW, TABLE_AT + second * ROW
    out[a : a + ROW], out[b : b + ROW] = raw[b : b + ROW], raw[a : a + ROW]
    return bytes(out)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: _swap_rows(raw, 0, 1), "ascending"),
        (lambda raw: _swap_rows(raw, 1, 2), "ascending"),
        (lambda raw: raw[:TABLE_AT] + struct.pack("<q", 7_001) + raw[TABLE_AT + 8 :], "aligned"),
        (lambda raw: raw[: TABLE_AT + 8] + struct.pack("<q", 9) + raw[TABLE_AT + 16 :], "group"),
    ],
)
def test_bad_rows_are_refused_where_they_are_read(mutate: Any, message: str) -> None:
    block = decode_block(LAYOUT, mutate(_valid()))
    with pytest.raises(CorruptState, match=message):
        block.table()
    with pytest.raises(CorruptState, match=message):
        merge_blocks(LAYOUT, [[block], []], 10_000)


def test_bad_variable_offsets_are_refused() -> None:
    raw = bytearray(_valid())
    block = decode_block(LAYOUT, bytes(raw))
    raw[block.offsets_at + 4 : block.offsets_at + 8] = struct.pack("<I", 10**6)
    with pytest.raises(CorruptState, match="offsets"):
        merge_blocks(LAYOUT, [[decode_block(LAYOUT, bytes(raw))]], 10_000)


def test_states_that_disagree_on_a_shared_slot_are_refused() -> None:
    tiles = _tiles(BENCH_LIKE, {0: [(0, 1.0, "m1", 0)]}, 1_000)
    key = next(k for k in tiles if k[0] == 1000)
    states = list(tiles[key])
    states[2] = (states[2][0], 2.0)  # mean_5s's sum differs from sum_5s
    tiles[key] = states
    with pytest.raises(CorruptState, match="disagrees"):
        encode_block(BENCH_LIKE, 0, tiles)


def test_a_tile_size_the_view_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="no tile group 7"):
        encode_block(LAYOUT, 0, {(7, 0): []})


def _comparable(tiles: dict) -> dict:
    """Tiles with every state made comparable bit for bit (HyperLogLogs by their dump)."""
    out = {}
    for key, states in tiles.items():
        group = next(g for g in LAYOUT.groups if g.tile_ms == key[0])
        out[key] = [_bits(list(a.dump(s))) for a, s in zip(group.aggregators, states, strict=True)]
    return out


@settings(max_examples=100, deadline=None)
@given(TILES, st.integers(0, 63), st.integers(-(10**9), 10**9))
def test_decode_tiles_inverts_encode_block(spec: dict, partition: int, as_of: int) -> None:
    tiles = _tiles(LAYOUT, spec, as_of)
    raw = encode_block(LAYOUT, partition, tiles)
    got_partition, decoded = decode_tiles(LAYOUT, raw)
    assert got_partition == partition
    assert encode_block(LAYOUT, partition, decoded) == raw
    assert _comparable(decoded) == _comparable(tiles)


def test_block_fields_name_their_partition_and_nothing_else() -> None:
    assert block_partition(block_field(7)) == 7
    assert block_partition("t10000_p7@1764000000000") is None  # an older layout's tile
    assert block_partition("u_p7") is None
    assert block_partition("b_px") is None
