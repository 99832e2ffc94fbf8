from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest

from features.aggregators import Aggregator, CountAgg, SumAgg
from features.durations import to_ms
from features.errors import CatalogError
from features.tiles import (
    MAX_TILES_PER_WINDOW,
    TILE_LADDER,
    TileSpec,
    covering_tiles,
    in_window,
    tile_ms_for,
    tile_start,
    window_start,
)

S, M, H, D = 1_000, 60_000, 3_600_000, 86_400_000


@pytest.mark.parametrize(
    ("window", "tile"),
    [
        (timedelta(minutes=5), timedelta(seconds=10)),
        (timedelta(hours=1), timedelta(minutes=1)),
        (timedelta(hours=24), timedelta(hours=1)),
        (timedelta(days=7), timedelta(hours=4)),
        (timedelta(seconds=30), timedelta(seconds=1)),
        (timedelta(minutes=2), timedelta(seconds=10)),
        (timedelta(minutes=15), timedelta(minutes=1)),
        (timedelta(hours=2), timedelta(minutes=10)),
        (timedelta(days=30), timedelta(days=1)),
    ],
)
def test_tile_size_rule(window: timedelta, tile: timedelta) -> None:
    assert TileSpec.for_window(window) == TileSpec(to_ms(window), to_ms(tile))


def test_tile_size_rule_is_the_finest_ladder_tile_within_the_limit() -> None:
    # Checked independently over many windows: divides, at most 60 tiles, and no finer tile does.
    rng = random.Random(1)
    windows = [t * k for t in TILE_LADDER for k in range(1, 130)]
    windows += [rng.randrange(S, 40 * D, S) for _ in range(2_000)]
    for window_ms in windows:
        try:
            tile = tile_ms_for(window_ms)
        except CatalogError:
            assert not any(
                window_ms % t == 0 and window_ms // t <= MAX_TILES_PER_WINDOW for t in TILE_LADDER
            )
            continue
        assert window_ms % tile == 0
        assert window_ms // tile <= MAX_TILES_PER_WINDOW
        finer = [t for t in TILE_LADDER if t < tile]
        assert not any(window_ms % t == 0 and window_ms // t <= MAX_TILES_PER_WINDOW for t in finer)


@pytest.mark.parametrize("window_ms", [61 * S, 605 * S, 1, 0, -M, 500])
def test_windows_without_a_tile_are_refused(window_ms: int) -> None:
    with pytest.raises(CatalogError):
        tile_ms_for(window_ms)


def test_tile_start_floors_including_negative_times() -> None:
    assert tile_start(0, 10) == 0
    assert tile_start(9, 10) == 0
    assert tile_start(10, 10) == 10
    assert tile_start(-1, 10) == -10
    assert tile_start(-10, 10) == -10


def test_covering_tiles_boundaries() -> None:
    # 1h window, 1m tiles, as of 10:30:00.000 exactly: the head tile starts at 10:30.
    as_of = 10 * H + 30 * M
    tiles = covering_tiles(as_of, H, M)
    assert len(tiles) == 60
    assert tiles[-1] == as_of
    assert tiles[0] == 9 * H + 31 * M
    assert window_start(as_of, H, M) == 9 * H + 31 * M
    # One millisecond earlier the head tile is the previous one and the tail hops back.
    earlier = covering_tiles(as_of - 1, H, M)
    assert earlier[-1] == as_of - M
    assert earlier[0] == 9 * H + 30 * M
    # Exact window at the last millisecond of a tile: [t - W + 1, t].
    assert window_start(as_of - 1, H, M) == as_of - 1 - H + 1


def test_in_window_edges() -> None:
    as_of = 10 * H + 30 * M + 17 * S
    start = window_start(as_of, H, M)
    assert start == 9 * H + 31 * M
    assert in_window(start, as_of, H, M)
    assert not in_window(start - 1, as_of, H, M)
    assert in_window(as_of, as_of, H, M)
    assert not in_window(as_of + 1, as_of, H, M), "events after as_of never count"


def test_effective_length_is_between_w_minus_tile_and_w() -> None:
    rng = random.Random(7)
    for _ in range(2_000):
        tile = rng.choice([10 * S, M, H, 4 * H])
        window = tile * rng.randint(1, 60)
        as_of = rng.randint(-10 * D, 10 * D)
        span = as_of - window_start(as_of, window, tile) + 1  # inclusive span in ms
        assert window - tile < span <= window
        assert (span == window) == (as_of % tile == tile - 1)


def test_tile_contributes_exactly_while_it_is_covered() -> None:
    tile, window = M, H
    start = 5 * H
    until = start + window  # the module's rule: read for as_of in [s, s + W)
    for as_of in (start - 1, start, start + 1, until - 1, until, until + 1):
        assert (start in covering_tiles(as_of, window, tile)) == (start <= as_of < until)


def test_tile_spec_validates_and_delegates() -> None:
    spec = TileSpec.for_window(timedelta(days=7))
    assert (spec.window_ms, spec.tile_ms) == (7 * D, 4 * H)
    assert spec.covering_tiles(123_456_789) == covering_tiles(123_456_789, 7 * D, 4 * H)
    with pytest.raises(CatalogError):
        TileSpec(window_ms=H, tile_ms=7 * M)


def _tiles_from(events: list[tuple[int, float]], tile: int, as_of: int) -> dict[int, list[float]]:
    """Tile contents as the rule requires: the head tile only holds events <= as_of."""
    tiles: dict[int, list[float]] = {}
    for ts, value in events:
        if ts <= as_of:
            tiles.setdefault(tile_start(ts, tile), []).append(value)
    return tiles


@pytest.mark.parametrize(("window", "tile"), [(5 * M, 10 * S), (H, M), (D, H), (7 * D, 4 * H)])
def test_merged_tiles_equal_brute_force_oracle(window: int, tile: int) -> None:
    rng = random.Random(window)
    base = 1_700_000_000_000
    events = [
        (base + rng.randint(0, 3 * window), float(rng.randint(1, 400)) / 4) for _ in range(400)
    ]
    count, total = CountAgg(), SumAgg()
    for _ in range(300):
        as_of = base + rng.randint(0, 3 * window)
        if rng.random() < 0.3:  # hit the exact boundaries often
            as_of = tile_start(as_of, tile) + rng.choice([0, tile - 1])
        tiles = _tiles_from(events, tile, as_of)
        covering = covering_tiles(as_of, window, tile)
        # Oracle: straight from the rule, no tiles involved.
        lo = tile_start(as_of, tile) + tile - window
        expected = [v for ts, v in events if lo <= ts <= as_of]
        merged_count = _merge_all(count, [len(tiles.get(s, [])) for s in covering])
        assert merged_count == len(expected)
        merged_sum = _merge_all(total, [sum(tiles.get(s, []), 0.0) for s in covering])
        assert merged_sum == sum(expected)  # quarter values: float sums are exact
        # Error bound against the ideal sliding window (as_of - W, as_of].
        ideal = [v for ts, v in events if as_of - window < ts <= as_of]
        missed = [ts for ts, _ in events if as_of - window < ts < lo]
        assert len(ideal) - len(expected) == len(missed)
        assert all(lo - ts < tile for ts in missed)


def _merge_all(agg: Aggregator[Any, Any], states: list[Any]) -> Any:
    """``initialize()`` merged with each state in ascending tile order, as a reader does."""
    merged = agg.initialize()
    for state in states:
        merged = agg.merge(merged, state)
    return merged
