"""``fold_view`` (one group-by per tile group, numpy kernels) leaves every tile state bitwise where
the per-event fold leaves it, from any prior states: sums of ``-0.0``, zero extremes of either
sign, dense and sparse sketches, ties of time in ``last``; and it creates tiles in the per-event
fold's order."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from features import batch_fold
from features.batch_fold import BatchColumns, fold_view
from features.blocks import TileKey
from features.catalog import Catalog
from features.tile_groups import TileGroup, tile_groups
from features.tiles import tile_start


def _view() -> tuple[TileGroup, ...]:
    def f(name: str, agg: str, column: str | None = None, **kw: Any) -> dict[str, Any]:
        return {"name": name, "aggregation": agg, **({"column": column} if column else {}), **kw}

    catalog = Catalog.from_dict(
        {
            "entities": [{"name": "user", "join_key": "user_id"}],
            "sources": [
                {
                    "name": "tx",
                    "topic": "t.tx",
                    "partitions": 1,
                    "key_field": "user_id",
                    "event_time_field": "ts",
                    "event_type_field": "kind",
                    "event_types": ["tx"],
                    "fields": {
                        "kind": "string",
                        "user_id": "string",
                        "merchant_id": "string",
                        "amount": "float",
                        "qty": "int",
                        "ts": "int",
                    },
                    "out_of_orderness": "0s",
                    "allowed_lateness": "0s",
                    "max_future_skew": "0s",
                    "max_payload_bytes": 512,
                }
            ],
            "views": [
                {
                    "name": "u",
                    "version": 1,
                    "entity": "user",
                    "source": "tx",
                    "ttl": "1h",
                    "freshness_target": "5s",
                    "features": [
                        f("n", "count", window="10s"),
                        f("total", "sum", "amount", window="10s"),
                        f("avg", "mean", "amount", window="10s"),
                        f("low", "min", "amount", window="10s"),
                        f("high", "max", "amount", window="10s"),
                        f("qty_total", "sum", "qty", window="1m"),
                        f(
                            "merchants",
                            "distinct_count",
                            "merchant_id",
                            window="1m",
                            hll_precision=4,
                        ),
                        f("qtys", "distinct_count", "qty", window="1m", hll_precision=5),
                        f("recent", "last_n", "qty", window="1m", n=2),
                        f("last", "last", "amount"),
                        f("cusum", "cusum", "amount", cusum_warmup=2, cusum_threshold=1.0),
                    ],
                }
            ],
        }
    )
    return tile_groups(catalog.view("u"))


GROUPS = _view()
AMOUNTS = [0.0, -0.0, 0.1, 0.7, -0.7, 1.5, 3, 1e16, -1e16, 2**53 + 1]
ROW = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["a", "b", "c"]),
        "merchant_id": st.sampled_from(["m1", "m2", "m3", "m4", "m5"]),
        "amount": st.sampled_from(AMOUNTS) | st.floats(-100, 100),
        "qty": st.sampled_from([0, 1, 2, 3, 2**63, 2**64 - 1, -(2**63)]),
        "ts": st.sampled_from([0, 1, 999, 1_000, 1_500, 9_999, 60_000]) | st.integers(0, 70_000),
    }
)
Tiles = dict[str, dict[TileKey, list[Any]]]


def _per_event(rows: list[dict[str, Any]], offsets: list[int], tiles: Tiles) -> list[Any]:
    """The reference: per entity, per group, per tile, ``TileGroup.fold`` in partition order;
    the tiled tiles it created, in order."""
    created = []
    by_entity: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_entity.setdefault(row["user_id"], []).append(i)
    for entity, items in by_entity.items():
        entity_tiles = tiles.setdefault(entity, {})
        for group in GROUPS:
            by_tile: dict[TileKey, list[int]] = {}
            for i in items:
                start = None if group.tile_ms is None else tile_start(rows[i]["ts"], group.tile_ms)
                by_tile.setdefault((group.tile_ms, start), []).append(i)
            for key, members in by_tile.items():
                if key not in entity_tiles and group.tile_ms is not None:
                    created.append((entity, key))
                states = entity_tiles.setdefault(key, group.initial_states())
                events = [rows[i] for i in members]
                group.fold(states, events, [e["ts"] for e in events], [offsets[i] for i in members])
    return created


def _columnar(rows: list[dict[str, Any]], offsets: list[int], tiles: Tiles) -> list[Any]:
    columns = {name: [row[name] for row in rows] for name in ROW_FIELDS}
    batch = BatchColumns(
        np.array([r["ts"] for r in rows], dtype=np.int64),
        np.array(offsets, dtype=np.int64),
        columns,
    )
    result = fold_view(GROUPS, "user_id", batch, lambda e: tiles.setdefault(e, {}))
    return [(result.entities[e], tile) for e, tile in result.created]


ROW_FIELDS = ("user_id", "merchant_id", "amount", "qty", "ts")


def _bytes(tiles: Tiles) -> list[Any]:
    by_tile = {g.tile_ms: g for g in GROUPS}
    return [
        (
            entity,
            [
                (k, [a.dump(s) for a, s in zip(by_tile[k[0]].aggregators, v, strict=True)])
                for k, v in entity_tiles.items()
            ],
        )
        for entity, entity_tiles in tiles.items()
    ]


def _negative_zero_sums(tiles: Tiles) -> None:
    """Prior states the stream never makes but a fold must still carry: sums of -0.0."""
    for entity_tiles in tiles.values():
        for (tile_ms, _), states in entity_tiles.items():
            if tile_ms is not None:
                states[1] = states[5] = -0.0
                states[2] = (states[2][0], -0.0)


def _zeros(*amounts: float, user: str = "a") -> list[dict[str, Any]]:
    return [{"user_id": user, "merchant_id": "m1", "amount": a, "qty": 0, "ts": 5} for a in amounts]


@settings(max_examples=200, deadline=None)
@example([], _zeros(0.0, -0.0) + _zeros(-0.0, 0.0, user="b"), False, False)  # the first zero
@example(_zeros(0.0), _zeros(-0.0, -0.0), True, False)
@given(
    st.lists(ROW, max_size=30),
    st.lists(ROW, max_size=30),
    st.booleans(),
    st.booleans(),
)
def test_the_grouped_fold_equals_the_per_event_fold_from_any_prior_state(
    history: list[dict[str, Any]],
    batch: list[dict[str, Any]],
    negative_zero: bool,
    orders_fall: bool,
) -> None:
    """``orders_fall``: orders that do not rise with the rows (never so from Kafka), so that
    ``last`` and ``last_n`` must order by them, not by position."""
    prior: Tiles = {}
    _per_event(history, list(range(len(history))), prior)
    if negative_zero:
        _negative_zero_sums(prior)
    offsets = [len(history) + 2 * i for i in range(len(batch))]
    if orders_fall:
        offsets = [len(history) + (i * 7) % 5 for i in range(len(batch))]
    reference, columnar = copy.deepcopy(prior), copy.deepcopy(prior)
    created = _per_event(batch, offsets, reference)
    assert _columnar(batch, offsets, columnar) == created
    assert _bytes(columnar) == _bytes(reference)


def test_a_negative_zero_prior_keeps_its_sign_through_a_zero() -> None:
    """-0.0 + -0.0 is -0.0, which ``bincount`` seeded at 0.0 would give as 0.0."""
    prior: Tiles = {"a": {(1_000, 0): GROUPS[0].initial_states()}}
    _negative_zero_sums(prior)
    rows = [{"user_id": "a", "merchant_id": "m1", "amount": -0.0, "qty": 0, "ts": 5}]
    reference, columnar = copy.deepcopy(prior), copy.deepcopy(prior)
    _per_event(rows, [1], reference)
    _columnar(rows, [1], columnar)
    assert str(columnar["a"][(1_000, 0)][1]) == str(reference["a"][(1_000, 0)][1]) == "-0.0"


@pytest.mark.parametrize("seed", range(20))
def test_the_counted_and_the_sorted_group_by_agree(seed: int, monkeypatch: Any) -> None:
    """The group-by counts (entity, tile) cells in a table when a batch spans few tiles and sorts
    otherwise; both must give the same keys, first rows, row groups and starts."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    codes = rng.integers(0, int(rng.integers(1, 20)), n).astype(np.intp)
    times = rng.integers(-(10**5), 10**5, n) * int(rng.choice([1, 7, 100]))
    starts = times - times % 1000
    answers = []
    for limit in (10**9, -(10**9)):  # always counted, always sorted
        monkeypatch.setattr(batch_fold, "_DENSE_LIMIT", limit)
        keys, first, inv, _width, start_at = batch_fold._group_by(codes, starts, 1000)
        answers.append((first.tolist(), inv.tolist(), start_at(keys % _width).tolist()))
    assert answers[0] == answers[1]
