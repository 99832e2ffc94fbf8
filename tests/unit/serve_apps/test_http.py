"""HTTP rules: API keys and scopes, body and entity limits, key injection, load shedding, error
bodies, the Feast shape, and the public routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from features.demo import card_transactions_catalog
from serve_apps.app import serve_headers
from serve_apps.client import FeatureClient
from serve_apps.http import ServingHttp
from serve_apps.wiring import build_http
from tests.unit.serve_apps.fakes import (
    ADMIN_KEY,
    READ_KEY,
    T0,
    FakeClock,
    FakeStore,
    config,
    event,
    tiles_for,
)

CATALOG = card_transactions_catalog()


def _server(**overrides: Any) -> tuple[ServingHttp, FakeStore]:
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(CATALOG, [event(0, "u_1", "m_1", 5.0, T0 - 1000)], T0))
    clock = FakeClock(wall=T0)
    http = build_http(
        config(**overrides),
        monotonic=clock,
        wall_ms=clock.wall_ms,
        stores=[(store, 0.05), (FakeStore("dynamodb-us-east"), 0.5)],
    )
    return http, store


def _stream(raw: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def chunks() -> AsyncIterator[bytes]:
        yield raw

    return chunks


def _call(
    http: ServingHttp,
    path: str,
    body: Any = None,
    *,
    key: str | None = READ_KEY,
    method: str = "POST",
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = raw if raw is not None else (b"" if body is None else orjson.dumps(body))
    h = dict(headers or {})
    if key is not None:
        h["x-api-key"] = key
    status, out_headers, out = asyncio.run(http.handle(method, path, h, _stream(data)))
    try:
        parsed = orjson.loads(out)
    except orjson.JSONDecodeError:
        parsed = out
    return status, dict(out_headers), parsed


READ = {"entities": {"user": ["u_1"]}, "features": ["user_spend:last_amount"]}


def test_api_keys_and_scopes() -> None:
    http, _ = _server()
    assert _call(http, "/v1/features", READ, key=None)[0] == 401
    assert _call(http, "/v1/features", READ, key="fl_wrong")[0] == 401
    assert _call(http, "/v1/features", READ, key=ADMIN_KEY)[0] == 403
    assert _call(http, "/v1/stores", method="GET", key=READ_KEY)[0] == 403
    status, _, body = _call(http, "/v1/stores", method="GET", key=ADMIN_KEY)
    assert status == 200 and body["breakers"]["redis-us-east"] == "closed"
    bearer = {"authorization": f"Bearer {READ_KEY}"}
    assert _call(http, "/v1/features", READ, key=None, headers=bearer)[0] == 200


def test_body_limit_entity_cap_and_bad_input() -> None:
    http, _ = _server()
    big = {"entities": {"user": ["u_1"]}, "features": ["user_spend:last_amount"], "pad": "x" * 5000}
    assert _call(http, "/v1/features", big)[0] == 413
    assert _call(http, "/v1/features", READ, headers={"content-length": "999999"})[0] == 413
    many = {
        "entities": {"user": [f"u_{i}" for i in range(11)]},
        "features": ["user_spend:last_amount"],
    }
    status, _, body = _call(http, "/v1/features", many)
    assert (status, body["error"]) == (422, "too_many_entities")
    assert _call(http, "/v1/features", raw=b"{not json")[0] == 400
    assert _call(http, "/v1/features", raw=b"[1, 2]")[0] == 400
    for bad in (
        {"entities": {"user": ["u_1"]}, "features": ["user_spend:nope"]},
        {"entities": {"user": ["u_1"]}},
        {"entities": {"nobody": ["u_1"]}, "features": ["user_spend:last_amount"]},
        {"entities": {"merchant": ["m_1"]}, "features": ["user_spend:last_amount"]},
        {"entities": {"user": [["u_1"]]}, "features": ["user_spend:last_amount"]},
        {"entities": {"user": ["u_1"]}, "features": ["user_spend:last_amount"], "deadline_ms": -1},
    ):
        status, _, body = _call(http, "/v1/features", bad)
        assert status == 422, bad
        assert set(body) == {"error", "request_id"}


@pytest.mark.parametrize(
    "entity_id",
    ["", "u_1\n", "u\x00", "x" * 65, "\ud800"],
)
def test_invalid_entity_ids_are_refused(entity_id: str) -> None:
    http, _ = _server()
    raw = orjson.dumps({"entities": {"user": ["u_1"]}, "features": ["user_spend:last_amount"]})
    raw = raw.replace(
        b'"u_1"',
        orjson.dumps(entity_id, option=orjson.OPT_NON_STR_KEYS)
        if entity_id != "\ud800"
        else b'"\\ud800"',
    )
    status, _, body = _call(http, "/v1/features", raw=raw)
    assert status in (400, 422)
    assert "Traceback" not in str(body)


@pytest.mark.parametrize(
    "entity_id",
    ["u_1:x", "*", "u_1}{", "../u_1", "fl:default:user_spend:v1:u_1", "u_1 ", "ü"],
)
def test_key_injection_cannot_address_another_key(entity_id: str) -> None:
    http, store = _server()
    status, _, body = _call(
        http,
        "/v1/features",
        {"entities": {"user": [entity_id]}, "features": ["user_spend:last_amount"]},
    )
    assert status == 200
    (key,) = store.calls[-1]
    prefix = "fl:default:user_spend:v1:"
    assert key.startswith(prefix) and key != prefix + "u_1"
    assert not set(key[len(prefix) :]) & set(":*?[]{} ")
    value = body["results"][0]["features"]["user_spend:last_amount"]
    assert value["status"] == "not_found"


def test_overload_is_shed_with_503_and_retry_after() -> None:
    http, store = _server()
    gate = asyncio.Event()
    original = store.get_all

    async def slow(keys: Any, timeout_s: float) -> Any:
        await gate.wait()
        return await original(keys, timeout_s)

    store.get_all = slow  # type: ignore[method-assign]

    async def scenario() -> list[int]:
        data = orjson.dumps(READ)
        held = [
            asyncio.create_task(
                http.handle("POST", "/v1/features", {"x-api-key": READ_KEY}, _stream(data))
            )
            for _ in range(4)
        ]
        await asyncio.sleep(0)
        status, headers, body = await http.handle(
            "POST", "/v1/features", {"x-api-key": READ_KEY}, _stream(data)
        )
        assert dict(headers)["retry-after"] in {"1", "2", "3"}  # 1 s plus jitter
        assert dict(headers)["x-freshline-shed"] == "in-flight"  # which gate refused
        assert orjson.loads(body)["error"] == "overloaded"
        gate.set()
        return [status] + [(await t)[0] for t in held]

    assert asyncio.run(scenario()) == [503, 200, 200, 200, 200]


def test_unexpected_errors_never_leak_their_text() -> None:
    http, store = _server()

    async def broken(keys: Any, timeout_s: float) -> Any:
        raise RuntimeError("secret detail /etc/passwd")

    store.get_all = broken  # type: ignore[method-assign]
    status, headers, body = _call(http, "/v1/features", READ)
    assert status == 500
    assert body == {"error": "internal", "request_id": headers["x-request-id"]}


def test_feast_shape() -> None:
    http, _ = _server()
    request = {
        "features": [
            "user_spend:last_amount",
            "user_spend:tx_count_1h",
            "merchant_activity:tx_count_1h",
        ],
        "entities": {"user_id": ["u_1", "u_9"], "merchant_id": ["m_1", "m_1"]},
    }
    status, _, body = _call(http, "/get-online-features", request)
    assert status == 200
    assert body["metadata"]["feature_names"] == [
        "user_id",
        "merchant_id",
        "last_amount",
        "tx_count_1h",
        "tx_count_1h",
    ]
    user, merchant, last, count, merchant_count = body["results"]
    assert user["values"] == ["u_1", "u_9"] and merchant["values"] == ["m_1", "m_1"]
    assert last["values"] == [5.0, None]
    assert last["statuses"] == ["PRESENT", "NOT_FOUND"]
    assert last["event_timestamps"][0] == "2025-11-24T15:59:59.000Z"
    assert last["event_timestamps"][1] == "1970-01-01T00:00:00Z"
    assert count["values"] == [1, 0]
    assert merchant_count["values"] == [1, 1]
    full = _call(http, "/get-online-features", {**request, "full_feature_names": True})[2]
    assert full["metadata"]["feature_names"][2] == "user_spend__last_amount"
    service = {
        "feature_service": "fraud_v1",
        "entities": {"user_id": ["u_1"], "merchant_id": ["m_1"]},
    }
    assert len(_call(http, "/get-online-features", service)[2]["results"]) == 2 + 11
    ragged = {**request, "entities": {"user_id": ["u_1"], "merchant_id": ["m_1", "m_2"]}}
    assert _call(http, "/get-online-features", ragged)[0] == 422


def test_columnar_format_carries_the_same_values_as_rows() -> None:
    http, _ = _server()
    request = {
        "entities": {"user": ["u_1", "u_9"], "merchant": ["m_1"]},
        "features": [
            "user_spend:last_amount",
            "user_spend:tx_count_1h",
            "merchant_activity:tx_count_1h",
        ],
    }
    status, _, rows = _call(http, "/v1/features", request)
    assert status == 200
    status, _, columns = _call(http, "/v1/features", {**request, "format": "columns"})
    assert status == 200 and columns["format"] == "columns"
    assert "results" not in columns and columns["store"] == rows["store"] == "redis-us-east"
    by_row = {
        (row["id"], ref): (item["value"], item["status"], item["event_time_ms"], item["age_ms"])
        for row in rows["results"]
        for ref, item in row["features"].items()
    }
    by_column = {}
    for view in columns["views"]:
        columns_of = ("values", "statuses", "event_time_ms", "age_ms")
        grids = zip(*(view[name] for name in columns_of), strict=True)
        for entity_id, grid in zip(view["ids"], grids, strict=True):
            for i, ref in enumerate(view["features"]):
                by_column[(entity_id, ref)] = tuple(column[i] for column in grid)
    assert by_column == by_row
    assert by_column[("u_1", "user_spend:last_amount")][:2] == (5.0, "present")
    assert by_column[("u_9", "user_spend:last_amount")][:2] == (None, "not_found")
    assert [v["view"] for v in columns["views"]] == ["user_spend", "merchant_activity"]
    # FeatureClient.values reads both shapes the same way.
    assert FeatureClient.values(columns) == FeatureClient.values(rows)
    status, _, body = _call(http, "/v1/features", {**request, "format": "csv"})
    assert (status, body["error"]) == (422, "bad_format")


def test_public_routes_and_catalog() -> None:
    http, store = _server()
    assert _call(http, "/v1/health", method="GET", key=None)[0] == 200
    assert _call(http, "/v1/ready", method="GET", key=None)[0] == 200
    assert _call(http, "/v1/openapi.json", method="GET", key=None)[2]["openapi"] == "3.1.0"
    assert _call(http, "/v1/catalog", method="GET", key=None)[0] == 401
    catalog = _call(http, "/v1/catalog", method="GET")[2]
    view = next(v for v in catalog["views"] if v["name"] == "user_spend")
    assert view["ttl_ms"] == 8 * 86_400_000 and view["freshness_target_ms"] == 5_000
    assert _call(http, "/v1/nope", method="GET")[0] == 404
    assert _call(http, "/v1/nope", method="DELETE")[0] == 404
    store.fail = True
    for step in http.service.chain.steps:
        step.store.fail = True  # type: ignore[attr-defined]
    assert _call(http, "/v1/ready", method="GET", key=None)[0] == 503


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/features", "POST"),
        ("PUT", "/get-online-features", "POST"),
        ("POST", "/v1/catalog", "GET"),
        ("DELETE", "/v1/stores", "GET"),
        ("HEAD", "/v1/health", "GET"),
        ("POST", "/v1/ready", "GET"),
        ("OPTIONS", "/docs", "GET"),
    ],
)
def test_a_known_path_with_an_undeclared_method_answers_405_with_allow(
    method: str, path: str, allow: str
) -> None:
    http, _ = _server()
    for key in (READ_KEY, None):  # before any key check: the methods are public knowledge
        status, headers, body = _call(http, path, method=method, key=key)
        assert (status, headers["allow"]) == (405, allow)
        assert body == {"error": "method_not_allowed", "request_id": headers["x-request-id"]}


def test_every_answer_carries_one_request_id_which_the_body_repeats() -> None:
    http, _ = _server()
    calls: list[tuple[str, str, Any, str | None]] = [
        ("POST", "/v1/features", READ, READ_KEY),
        ("POST", "/v1/features", READ, None),  # 401
        ("POST", "/v1/features", {"entities": {}}, READ_KEY),  # 422
        ("GET", "/v1/ready", None, None),
        ("GET", "/v1/health", None, None),
        ("GET", "/v1/catalog", None, READ_KEY),
        ("GET", "/v1/openapi.json", None, None),
        ("GET", "/docs", None, None),
        ("GET", "/v1/nope", None, None),
        ("PATCH", "/v1/features", None, None),
    ]
    seen = set()
    for method, path, body, key in calls:
        data = b"" if body is None else orjson.dumps(body)
        h = {"x-api-key": key} if key else {}
        _, headers, out = asyncio.run(http.handle(method, path, h, _stream(data)))
        ids = [value for name, value in headers if name == "x-request-id"]
        assert len(ids) == 1, (method, path, headers)
        payload = orjson.loads(out) if out.startswith(b"{") else {}
        assert payload.get("request_id", ids[0]) == ids[0], (method, path)
        seen.add(ids[0])
    assert len(seen) == len(calls)  # a fresh id per request


def test_a_request_keeps_its_own_request_id_when_it_is_usable() -> None:
    http, _ = _server()
    given = {"x-request-id": "c0ffee-42"}
    status, headers, body = _call(http, "/v1/features", READ, headers=given)
    assert status == 200 and headers["x-request-id"] == body["request_id"] == "c0ffee-42"
    for unusable in ("", "x" * 129, "caf\u00e9", "a\tb"):
        headers = _call(http, "/v1/health", method="GET", headers={"x-request-id": unusable})[1]
        assert headers["x-request-id"] != unusable and len(headers["x-request-id"]) == 16


def test_serve_adds_the_request_id_header_so_the_replica_leaves_it_out() -> None:
    headers = [("content-type", "application/json"), ("x-request-id", "r1"), ("allow", "GET")]
    assert serve_headers(headers) == {"content-type": "application/json", "allow": "GET"}
