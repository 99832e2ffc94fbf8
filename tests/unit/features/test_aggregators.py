from __future__ import annotations

import math
import random
import zlib
from typing import Any

import pytest

from features.aggregators import (
    Aggregator,
    CountAgg,
    CusumAgg,
    DistinctCountAgg,
    LastAgg,
    LastNAgg,
    MaxAgg,
    MeanAgg,
    MinAgg,
    SumAgg,
    aggregator_for,
)
from features.catalog import Aggregation
from features.cusum import CusumConfig
from features.demo import card_transactions_catalog
from features.errors import DataError
from features.exceptions import CorruptState, NotMergeable

Event = tuple[Any, int, int]  # (value, event_time_ms, order)


def _events(rng: random.Random, n: int, *, dyadic: bool = True) -> list[Event]:
    """Random events with unique orders. Dyadic values (multiples of 1/4) make float sums exact
    in any grouping, so merge laws can be checked with ==; non-dyadic runs use approx."""
    orders = rng.sample(range(10 * n), n)
    out: list[Event] = []
    for order in orders:
        value = rng.randint(-400, 400) / 4 if dyadic else rng.uniform(-100, 100)
        out.append((value, rng.randint(0, 50), order))  # few times: many time ties
    return out


def _fold(agg: Aggregator[Any, Any], events: list[Event]) -> Any:
    state = agg.initialize()
    for value, ts, order in events:
        state = agg.agg(state, value, ts, order)
    return state


def _merge_all(agg: Aggregator[Any, Any], states: list[Any]) -> Any:
    """``initialize()`` merged with each state in order, as a reader merges covering tiles."""
    merged = agg.initialize()
    for state in states:
        merged = agg.merge(merged, state)
    return merged


MERGEABLE: list[Aggregator[Any, Any]] = [
    CountAgg(),
    SumAgg(),
    MeanAgg(),
    MinAgg(),
    MaxAgg(),
    LastAgg(),
    LastNAgg(5),
    DistinctCountAgg(10),
]


def _ids(agg: Aggregator[Any, Any]) -> str:
    return agg.aggregation.value


@pytest.mark.parametrize("agg", MERGEABLE, ids=_ids)
def test_fold_of_all_equals_merge_of_folds_of_random_parts(agg: Aggregator[Any, Any]) -> None:
    rng = random.Random(zlib.crc32(agg.aggregation.value.encode()))
    for _ in range(50):
        events = _events(rng, rng.randint(0, 60))
        if agg.aggregation is Aggregation.DISTINCT_COUNT:
            events = [(f"m_{int(v)}", ts, o) for v, ts, o in events]
        whole = agg.result(_fold(agg, events))
        # Random split into parts, each folded, merged in a random order and grouping.
        cuts = sorted(rng.sample(range(len(events) + 1), k=min(3, len(events) + 1)))
        parts = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
        states = [_fold(agg, part) for part in parts]
        rng.shuffle(states)
        left = _merge_all(agg, states)
        right = agg.initialize()
        for state in reversed(states):
            right = agg.merge(state, right)
        assert agg.result(left) == whole
        assert agg.result(right) == whole


@pytest.mark.parametrize("agg", MERGEABLE, ids=_ids)
def test_merge_is_commutative_and_initialize_is_identity(agg: Aggregator[Any, Any]) -> None:
    rng = random.Random(3)
    for _ in range(30):
        make = _events(rng, 20)
        if agg.aggregation is Aggregation.DISTINCT_COUNT:
            make = [(str(v), ts, o) for v, ts, o in make]
        a, b = _fold(agg, make[:8]), _fold(agg, make[8:])
        assert agg.result(agg.merge(a, b)) == agg.result(agg.merge(b, a))
        assert agg.result(agg.merge(agg.initialize(), a)) == agg.result(a)


def test_merge_never_mutates_inputs() -> None:
    agg = DistinctCountAgg(10)
    a = _fold(agg, [("x", 1, 1)])
    b = _fold(agg, [("y", 1, 2)])
    agg.merge(a, b)
    assert (agg.result(a), agg.result(b)) == (1, 1)


def test_float_sums_group_differently_only_by_rounding() -> None:
    rng = random.Random(11)
    agg = SumAgg()
    events = _events(rng, 500, dyadic=False)
    parts = [_fold(agg, events[i : i + 37]) for i in range(0, 500, 37)]
    assert _merge_all(agg, parts) == pytest.approx(_fold(agg, events), rel=1e-12)


def test_results_match_independent_definitions() -> None:
    events: list[Event] = [(3.0, 10, 1), (-1.5, 30, 2), (7.25, 20, 3), (2.0, 30, 0)]
    assert CountAgg().result(_fold(CountAgg(), events)) == 4
    assert SumAgg().result(_fold(SumAgg(), events)) == 10.75
    assert MeanAgg().result(_fold(MeanAgg(), events)) == 10.75 / 4
    assert MinAgg().result(_fold(MinAgg(), events)) == -1.5
    assert MaxAgg().result(_fold(MaxAgg(), events)) == 7.25
    # Latest event time is 30, twice; order 2 beats order 0 even though it arrived first.
    assert LastAgg().result(_fold(LastAgg(), events)) == -1.5
    assert LastNAgg(3).result(_fold(LastNAgg(3), events)) == [-1.5, 2.0, 7.25]


def test_empty_windows() -> None:
    assert MeanAgg().result(MeanAgg().initialize()) is None
    assert MinAgg().result(MinAgg().initialize()) is None
    assert LastAgg().result(LastAgg().initialize()) is None
    assert LastNAgg(2).result(LastNAgg(2).initialize()) == []
    assert DistinctCountAgg(14).result(DistinctCountAgg(14).initialize()) == 0
    assert CountAgg().result(CountAgg().initialize()) == 0


def test_last_breaks_time_ties_by_order_whatever_the_arrival() -> None:
    agg = LastAgg()
    events: list[Event] = [("b", 100, 7), ("a", 100, 5), ("old", 99, 9)]
    for perm in ([0, 1, 2], [1, 0, 2], [2, 1, 0], [2, 0, 1]):
        assert agg.result(_fold(agg, [events[i] for i in perm])) == "b"
    a, b = _fold(agg, events[:1]), _fold(agg, events[1:])
    assert agg.result(agg.merge(a, b)) == agg.result(agg.merge(b, a)) == "b"


def test_last_n_keeps_the_n_latest_by_time_then_order() -> None:
    agg = LastNAgg(2)
    state = _fold(agg, [(1, 5, 1), (2, 9, 0), (3, 9, 4), (4, 1, 8)])
    assert agg.result(state) == [3, 2]


def test_numeric_aggregators_refuse_non_numbers() -> None:
    numeric: list[Aggregator[Any, Any]] = [SumAgg(), MeanAgg(), MinAgg(), MaxAgg()]
    for agg in numeric:
        with pytest.raises(DataError):
            agg.agg(agg.initialize(), "12", 0, 0)
        with pytest.raises(DataError):
            agg.agg(agg.initialize(), True, 0, 0)


@pytest.mark.parametrize("agg", [*MERGEABLE, CusumAgg(CusumConfig(warmup=3))], ids=_ids)
def test_states_round_trip_through_bytes(agg: Aggregator[Any, Any]) -> None:
    rng = random.Random(1)
    events = _events(rng, 40)
    if agg.aggregation is Aggregation.DISTINCT_COUNT:
        events = [(str(v), ts, o) for v, ts, o in events]
    for state in (agg.initialize(), _fold(agg, events[:1]), _fold(agg, events)):
        data = agg.dump(state)
        assert isinstance(data, bytes)
        loaded = agg.load(data)
        assert loaded == state
        assert agg.dump(loaded) == data


@pytest.mark.parametrize(
    ("agg", "data"),
    [
        (CountAgg(), b'"3"'),
        (CountAgg(), b"true"),
        (MeanAgg(), b"[1]"),
        (MeanAgg(), b'[1, "x"]'),
        (LastAgg(), b"[1, 2]"),
        (LastNAgg(2), b"[[1, 2, [3]]]"),
        (SumAgg(), b"{"),
        (DistinctCountAgg(10), b"H\x01"),
        (CusumAgg(CusumConfig()), b'{"n": 1}'),
    ],
    ids=lambda x: x.aggregation.value if isinstance(x, Aggregator) else "",
)
def test_corrupt_states_are_refused(agg: Aggregator[Any, Any], data: bytes) -> None:
    with pytest.raises(CorruptState):
        agg.load(data)


def test_cusum_has_no_merge_but_folds_sequentially() -> None:
    agg = CusumAgg(CusumConfig(warmup=5))
    values = [1.0, 2.0, 1.0, 2.0, 1.0, 1.5, 40.0]
    state = _fold(agg, [(v, i, i) for i, v in enumerate(values)])
    assert agg.result(state) > 15, "a jump of ~70 std after warm-up scores high"
    with pytest.raises(NotMergeable):
        agg.merge(state, agg.initialize())
    with pytest.raises(NotMergeable):
        agg.merge(agg.initialize(), state)


def test_aggregator_for_every_demo_feature() -> None:
    catalog = card_transactions_catalog()
    for view in catalog.views:
        for feature in view.features:
            agg = aggregator_for(feature)
            assert agg.aggregation is feature.aggregation
    distinct = aggregator_for(catalog.feature("user_spend:distinct_merchants_24h"))
    assert isinstance(distinct, DistinctCountAgg)
    assert distinct.precision == 14


SEQUENTIAL: list[Aggregator[Any, Any]] = [
    *MERGEABLE,
    CusumAgg(CusumConfig(drift=0.5, threshold=4.0, warmup=5)),
]


@pytest.mark.parametrize("agg", SEQUENTIAL, ids=_ids)
def test_sequence_fold_equals_scalar_fold_exactly(agg: Aggregator[Any, Any]) -> None:
    """What the stream actors fold per tile and batch equals one ``agg`` call per event,
    bitwise: non-dyadic floats, time ties, repeated values, and out-of-order times."""
    rng = random.Random(21)
    for size in (0, 1, 2, 17, 400):
        events = _events(rng, size, dyadic=False)
        events += [events[i] for i in range(0, size, 3)]  # repeats (same time and order too)
        values = [
            round(v, 1) if agg.aggregation is Aggregation.DISTINCT_COUNT else v
            for v, _, _ in events
        ]
        times = [t for _, t, _ in events]
        orders = [o for _, _, o in events]
        start = agg.agg(agg.initialize(), 12.5, 10, -1)
        scalar = _fold_from(agg, start, list(zip(values, times, orders, strict=True)))
        start = agg.agg(agg.initialize(), 12.5, 10, -1)
        assert agg.agg_seq(start, values, times, orders) == scalar


def _fold_from(agg: Aggregator[Any, Any], state: Any, events: list[Event]) -> Any:
    for value, ts, order in events:
        state = agg.agg(state, value, ts, order)
    return state


def test_distinct_sequence_fold_tells_equal_numbers_of_other_types_apart() -> None:
    """1, 1.0 and "1" are three values to the scalar fold (hashed as "1", "1.0", "1"), so the
    sequence fold must not merge 1 and 1.0 as a dict key would."""
    agg = DistinctCountAgg(10)
    values: list[Any] = [1, 1.0, "1", True]
    zeros = [0] * len(values)
    assert agg.agg_seq(agg.initialize(), values, zeros, zeros) == _fold_from(
        agg, agg.initialize(), list(zip(values, zeros, zeros, strict=True))
    )


def test_sequence_sum_adds_left_to_right_without_compensation() -> None:
    """Each float addition rounds, as in the per-event fold: ``sum()`` (compensated from Python
    3.12 on) would give a different, more exact total here, and a stream and a replay would
    disagree bitwise."""
    values = [1e16, 1.0, -1e16, 1.0] * 64
    zeros = [0] * len(values)
    total = 0.0
    for value in values:
        total += value
    assert SumAgg().agg_seq(0.0, values, zeros, zeros) == total
    assert MeanAgg().agg_seq((0, 0.0), values, zeros, zeros) == (len(values), total)
    assert total != math.fsum(values), "guard: an exact sum rounds differently here"


def test_sequence_last_takes_the_latest_copy_on_full_ties() -> None:
    values, times, orders = [1.0, 2.0, 3.0], [5, 5, 4], [1, 1, 9]
    assert LastAgg().agg_seq(None, values, times, orders) == (5, 1, 2.0)
