"""Point-in-time values: the vectorised path equals the read_view reference, and the semantics
(head tile, exact boundary, tail hop, TTL, unknown entities, duplicates) on small fixed data."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from chaos.oracle import expected_values
from features.demo import card_transactions_catalog
from features.tiles import HOUR_MS, MINUTE_MS
from training.asof import (
    DEFAULT,
    NOT_FOUND,
    PRESENT,
    STALE,
    Columns,
    Values,
    as_of_values,
    reference_values,
)

CATALOG = card_transactions_catalog()
USER = CATALOG.view("user_spend")
MERCHANT = CATALOG.view("merchant_activity")
BY_USER = Columns(key="user_id", time="event_time_ms")
BY_MERCHANT = Columns(key="merchant_id", time="event_time_ms")
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (4 * HOUR_MS)


def _event(
    user: str, t: int, amount: float, *, partition: int = 0, offset: int = 0, merchant: str = "m1"
) -> dict[str, Any]:
    return {
        "user_id": user,
        "merchant_id": merchant,
        "amount": amount,
        "event_time_ms": t,
        "_partition": partition,
        "_offset": offset,
    }


def _table(events: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("merchant_id", pa.string()),
            ("amount", pa.float64()),
            ("event_time_ms", pa.int64()),
            ("_partition", pa.int32()),
            ("_offset", pa.int64()),
        ]
    )
    return pa.Table.from_pylist(events, schema=schema)


def _values(events: list[dict[str, Any]], rows: list[tuple[str, int]]) -> Values:
    return as_of_values(
        USER,
        USER.features,
        _table(events),
        columns=BY_USER,
        keys=[k for k, _ in rows],
        ts=np.array([t for _, t in rows], dtype=np.int64),
    )


def _random_stream(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for offset in range(n):
        t = T0 + rng.randrange(0, 30 * HOUR_MS)
        if rng.random() < 0.1:
            t -= rng.randrange(0, HOUR_MS)  # out of order
        user, merchant = f"u{rng.randrange(6)}", f"m{rng.randrange(4)}"
        out.append(
            _event(
                user,
                t,
                round(rng.uniform(0.01, 500), 2),
                partition=rng.randrange(3),
                offset=offset,
                merchant=merchant,
            )
        )
    return out


def _random_rows(
    seed: int, events: list[dict[str, Any]], key: str, n: int
) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < 0.3:
            rows.append(
                (
                    events[rng.randrange(len(events))][key],
                    events[rng.randrange(len(events))]["event_time_ms"],
                )
            )  # on an event
        else:
            rows.append(
                (
                    rng.choice([e[key] for e in events] + ["nobody"]),
                    T0 + rng.randrange(-HOUR_MS, 40 * HOUR_MS),
                )
            )
    return rows + rows[:5]  # duplicates


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("view", "columns"), [(USER, BY_USER), (MERCHANT, BY_MERCHANT)])
def test_vectorised_path_is_bitwise_the_read_view_reference(
    seed: int, view: Any, columns: Columns
) -> None:
    events = _random_stream(seed, 600)
    rows = _random_rows(seed, events, columns.key, 150)
    keys, ts = [k for k, _ in rows], np.array([t for _, t in rows], dtype=np.int64)
    fast = as_of_values(view, view.features, _table(events), columns=columns, keys=keys, ts=ts)
    slow = reference_values(view, view.features, _table(events), columns=columns, keys=keys, ts=ts)
    for feature in view.features:
        assert fast.status[feature.name].tolist() == slow.status[feature.name].tolist()
        got, want = fast.values[feature.name].tolist(), slow.values[feature.name].tolist()
        assert [repr(v) for v in got] == [repr(v) for v in want], feature.name


@pytest.mark.parametrize("seed", range(3))
def test_values_equal_the_independent_oracle(seed: int) -> None:
    events = _random_stream(seed, 500)
    accepted = [{**e, "_offset": e["_offset"]} for e in events]
    rows = _random_rows(seed, events, "user_id", 120)
    got = _values(events, rows)
    for i, (user, t) in enumerate(rows):
        expected = expected_values(accepted, CATALOG, "user_spend", user, t)
        for name, value in expected.items():
            served = got.values[name][i]
            if got.status[name][i] != PRESENT:
                continue  # defaults: checked by the status tests
            assert served == pytest.approx(value, rel=1e-9), (name, user, t)


def test_an_event_at_exactly_t_counts_and_one_after_does_not() -> None:
    t = T0 + 5 * MINUTE_MS + 123
    got = _values([_event("u", t, 2.0, offset=0), _event("u", t + 1, 3.0, offset=1)], [("u", t)])
    assert got.values["tx_count_5m"].tolist() == [1]
    assert got.values["spend_sum_1h"].tolist() == [2.0]
    assert got.values["last_amount"].tolist() == [2.0]


def test_the_head_tile_holds_only_events_up_to_t_even_when_they_arrived_first() -> None:
    # Both in one 10 s tile; the later event arrived first (lower offset).
    t = T0 + 5_000
    got = _values(
        [_event("u", t + 2_000, 7.0, offset=0), _event("u", t, 1.0, offset=1)],
        [("u", t), ("u", t + 2_000)],
    )
    assert got.values["tx_count_5m"].tolist() == [1, 2]
    assert got.values["spend_max_1h"].tolist() == [1.0, 7.0]


def test_the_window_tail_hops_once_per_tile() -> None:
    # 5m window, 10 s tiles: as of t the window starts at tile_start(t) + 10 s - 5 m.
    t = T0 + 10 * MINUTE_MS + 4_000
    start = t - t % 10_000 + 10_000 - 5 * MINUTE_MS
    got = _values(
        [_event("u", start - 1, 1.0, offset=0), _event("u", start, 1.0, offset=1)], [("u", t)]
    )
    assert got.values["tx_count_5m"].tolist() == [1]


def test_unknown_entity_and_a_time_before_any_data_get_defaults_flagged() -> None:
    got = _values([_event("u", T0 + HOUR_MS, 4.0)], [("ghost", T0 + HOUR_MS), ("u", T0)])
    for feature in USER.features:
        assert got.status[feature.name].tolist() == [NOT_FOUND, NOT_FOUND]
        assert got.values[feature.name].tolist() == [feature.default, feature.default]


def test_an_empty_window_serves_the_default_and_says_so() -> None:
    t = T0 + 3 * HOUR_MS
    got = _values([_event("u", T0, 4.0)], [("u", t)])
    assert got.status["spend_sum_1h"].tolist() == [DEFAULT]
    assert got.values["spend_sum_1h"].tolist() == [0.0]
    assert got.values["spend_mean_24h"].tolist() == [4.0]
    assert got.status["last_amount"].tolist() == [PRESENT]


def test_data_older_than_the_view_ttl_is_stale_and_defaulted() -> None:
    t = T0 + USER.ttl_ms + 1
    got = _values([_event("u", T0, 4.0)], [("u", t), ("u", T0 + USER.ttl_ms)])
    assert got.status["last_amount"].tolist() == [STALE, PRESENT]
    assert got.values["last_amount"].tolist() == [None, 4.0]


def test_rows_keep_spine_order_and_duplicates() -> None:
    events = [_event("a", T0, 1.0, offset=0), _event("b", T0, 2.0, offset=1)]
    rows = [("b", T0), ("a", T0), ("b", T0), ("a", T0 - 1)]
    got = _values(events, rows)
    assert got.values["last_amount"].tolist() == [2.0, 1.0, 2.0, None]


def test_no_events_at_all_gives_every_row_its_defaults() -> None:
    got = _values([], [("u", T0), ("v", T0 + 1)])
    assert got.status["tx_count_1h"].tolist() == [NOT_FOUND, NOT_FOUND]
    assert got.values["spend_sum_1h"].tolist() == [0.0, 0.0]
