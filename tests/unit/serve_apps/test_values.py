"""Status, TTL and default rules of served values, on real tiles from the partition processor,
checked against values recomputed from the raw events."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from features.demo import card_transactions_catalog
from features.tiles import DAY_MS, HOUR_MS, MINUTE_MS
from serve_apps.http import ServingHttp
from serve_apps.wiring import build_http
from tests.unit.serve_apps.fakes import READ_KEY, T0, FakeClock, FakeStore, config, event, tiles_for

CATALOG = card_transactions_catalog()


def _server(store: FakeStore, clock: FakeClock) -> ServingHttp:
    backup = FakeStore("dynamodb-us-east")
    return build_http(
        config(), monotonic=clock, wall_ms=clock.wall_ms, stores=[(store, 0.05), (backup, 0.5)]
    )


def _read(http: ServingHttp, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async def chunks():  # type: ignore[no-untyped-def]
        yield orjson.dumps(body)

    status, _, out = asyncio.run(
        http.handle("POST", "/v1/features", {"x-api-key": READ_KEY}, chunks)
    )
    return status, orjson.loads(out)


def _values(response: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["id"], ref): v for r in response["results"] for ref, v in r["features"].items()}


def test_present_values_equal_the_events_and_missing_entities_get_defaults() -> None:
    events = [
        event(i, "u_1", f"m_{i % 2}", 10.0 * (i + 1), T0 - 50 * MINUTE_MS + i * 1000)
        for i in range(4)
    ]
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(CATALOG, events, T0))
    clock = FakeClock(wall=T0)
    status, body = _read(
        _server(store, clock),
        {
            "entities": {"user": ["u_1", "u_404"]},
            "features": [
                "user_spend:tx_count_1h",
                "user_spend:spend_sum_1h",
                "user_spend:last_amount",
                "user_spend:distinct_merchants_24h",
                "user_spend:tx_count_5m",
                "user_spend:spend_mean_24h",
            ],
        },
    )
    assert status == 200
    assert body["store"] == "redis-us-east" and body["as_of_ms"] == T0
    v = _values(body)
    assert v[("u_1", "user_spend:tx_count_1h")]["value"] == 4
    assert v[("u_1", "user_spend:spend_sum_1h")]["value"] == 100.0
    assert v[("u_1", "user_spend:spend_mean_24h")]["value"] == 25.0
    assert v[("u_1", "user_spend:distinct_merchants_24h")]["value"] == 2
    last = v[("u_1", "user_spend:last_amount")]
    newest = events[-1]["event_time_ms"]
    assert (last["value"], last["status"], last["event_time_ms"]) == (40.0, "present", newest)
    assert last["age_ms"] == T0 - newest
    # The newest 1m tile holds the newest event: its exact time is reported for windowed values.
    assert v[("u_1", "user_spend:tx_count_1h")]["event_time_ms"] == newest
    # No event in the last 5 minutes: the entity exists, the feature has no data -> default.
    assert v[("u_1", "user_spend:tx_count_5m")] == {
        "value": 0,
        "status": "default",
        "event_time_ms": None,
        "age_ms": None,
        "store": "redis-us-east",
    }
    missing = v[("u_404", "user_spend:spend_sum_1h")]
    assert (missing["value"], missing["status"]) == (0.0, "not_found")
    assert v[("u_404", "user_spend:spend_mean_24h")]["value"] is None


def test_a_value_older_than_the_ttl_is_stale_and_gets_the_default() -> None:
    events = [event(0, "u_1", "m_1", 12.5, T0)]
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(CATALOG, events, T0))
    clock = FakeClock(wall=T0)
    http = _server(store, clock)
    refs = ["user_spend:last_amount", "user_spend:amount_cusum", "user_spend:tx_count_7d"]
    ttl = CATALOG.view("user_spend").ttl_ms

    clock.wall = T0 + ttl  # exactly at the TTL: still present
    v = _values(_read(http, {"entities": {"user": ["u_1"]}, "features": refs})[1])
    assert v[("u_1", "user_spend:last_amount")]["status"] == "present"
    assert v[("u_1", "user_spend:last_amount")]["value"] == 12.5

    clock.wall = T0 + ttl + 1
    v = _values(_read(http, {"entities": {"user": ["u_1"]}, "features": refs})[1])
    for ref in ("user_spend:last_amount", "user_spend:amount_cusum"):
        assert v[("u_1", ref)]["status"] == "stale", ref
        assert v[("u_1", ref)]["value"] == CATALOG.feature(ref).default
        assert v[("u_1", ref)]["age_ms"] == ttl + 1
    # The 7d window no longer covers the tile: no data in the window.
    assert v[("u_1", "user_spend:tx_count_7d")]["status"] == "default"


def test_windowed_values_follow_the_tile_rule_as_time_passes() -> None:
    events = [event(i, "u_1", "m_1", 1.0, T0 + i * 10 * MINUTE_MS) for i in range(6)]
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(CATALOG, events, T0 + DAY_MS))
    clock = FakeClock(wall=T0 + 50 * MINUTE_MS + 1)
    http = _server(store, clock)
    for as_of in (T0 + 50 * MINUTE_MS + 1, T0 + HOUR_MS + 30 * MINUTE_MS, T0 + 3 * HOUR_MS):
        clock.wall = as_of
        v = _values(
            _read(http, {"entities": {"user": ["u_1"]}, "features": ["user_spend:tx_count_1h"]})[1]
        )
        spec = CATALOG.feature("user_spend:tx_count_1h").tile_spec
        assert spec is not None
        expected = sum(1 for e in events if spec.in_window(e["event_time_ms"], as_of))
        got = v[("u_1", "user_spend:tx_count_1h")]
        assert got["value"] == expected
        assert got["status"] == ("present" if expected else "default")


def test_a_corrupt_or_older_layout_block_costs_only_its_own_entity() -> None:
    events = [
        event(i, user, "m_1", 10.0, T0 - MINUTE_MS + i * 1000)
        for i, user in enumerate(["u_1", "u_2", "u_3"])
    ]
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(CATALOG, events, T0))
    keys = {k.rsplit(":", 1)[1]: k for k in store.data if ":user_spend:" in k}
    (field,) = store.data[keys["u_2"]]
    raw = store.data[keys["u_2"]][field]
    store.data[keys["u_2"]][field] = raw[:3] + bytes([raw[3] + 1]) + raw[4:]  # newer layout
    (field,) = store.data[keys["u_3"]]
    raw = store.data[keys["u_3"]][field]
    store.data[keys["u_3"]][field] = raw[:32] + (7).to_bytes(8, "little") + raw[40:]  # bad start
    _, body = _read(
        _server(store, FakeClock(wall=T0)),
        {"entities": {"user": ["u_1", "u_2", "u_3"]}, "features": ["user_spend:tx_count_1h"]},
    )
    v = _values(body)
    assert v[("u_1", "user_spend:tx_count_1h")]["value"] == 1
    for user in ("u_2", "u_3"):
        assert v[(user, "user_spend:tx_count_1h")] == {
            "value": 0,
            "status": "default",
            "event_time_ms": None,
            "age_ms": None,
            "store": "redis-us-east",
        }
