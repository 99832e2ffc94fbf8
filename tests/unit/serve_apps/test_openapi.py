"""The OpenAPI document says what the server does: bodies valid against it are served, answers
are valid against it (one ``oneOf`` branch each), the limits and rules the server enforces are in
it, and ``/docs`` renders it without loading anything."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import jsonschema_rs
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case

from features.demo import card_transactions_catalog
from serve_apps.config import Limits
from serve_apps.http import ServingHttp
from serve_apps.openapi_html import render_html
from serve_apps.wiring import build_http
from tests.unit.serve_apps.fakes import (
    READ_KEY,
    T0,
    FakeClock,
    FakeStore,
    config,
    event,
    tiles_for,
)

CATALOG = card_transactions_catalog()
LIMITS = Limits(max_entities=10, max_features=20)
READ = {"entities": {"user": ["u_1"]}, "features": ["user_spend:last_amount"]}


def _server() -> ServingHttp:
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(CATALOG, [event(0, "u_1", "m_1", 5.0, T0 - 1000)], T0))
    clock = FakeClock(wall=T0)
    return build_http(
        config(limits=LIMITS),
        monotonic=clock,
        wall_ms=clock.wall_ms,
        stores=[(store, 0.05), (FakeStore("dynamodb-us-east"), 0.5)],
    )


HTTP = _server()
DOCUMENT: dict[str, Any] = orjson.loads(HTTP._openapi)


def _stream(raw: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def chunks() -> AsyncIterator[bytes]:
        yield raw

    return chunks


def _post(path: str, body: Any) -> tuple[int, Any]:
    raw = json.dumps(body).encode()  # as HTTP clients do: orjson refuses ints past 64 bits
    status, _, out = asyncio.run(HTTP.handle("POST", path, {"x-api-key": READ_KEY}, _stream(raw)))
    return status, orjson.loads(out)


def _validator(component: str) -> Any:
    """A validator of one component schema, its ``$ref``s resolved inside the document."""
    return jsonschema_rs.Draft202012Validator(
        {**DOCUMENT, "$ref": f"#/components/schemas/{component}"}
    )


def _branches_matched(body: Any) -> list[str]:
    return [name for name in ("Rows", "Columns") if _validator(name).is_valid(body)]


def test_each_native_answer_matches_exactly_one_response_branch() -> None:
    request = {**READ, "entities": {"user": ["u_1", "u_9"]}}
    rows = _post("/v1/features", request)[1]
    columns = _post("/v1/features", {**request, "format": "columns"})[1]
    assert _branches_matched(rows) == ["Rows"]
    assert _branches_matched(columns) == ["Columns"]
    # Exclusive by construction, not by luck of the data: one body with both shapes' fields
    # matches neither branch.
    assert _branches_matched({**rows, **columns}) == []
    ok = DOCUMENT["paths"]["/v1/features"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["oneOf"] == [
        {"$ref": "#/components/schemas/Rows"},
        {"$ref": "#/components/schemas/Columns"},
    ]


def test_every_answer_is_valid_against_its_status_schema() -> None:
    feast = {"entities": {"user_id": ["u_1"]}, "features": ["user_spend:last_amount"]}
    assert _validator("FeastResponse").is_valid(_post("/get-online-features", feast)[1])
    refused = _post("/v1/features", {**READ, "features": []})
    assert refused[0] == 422 and _validator("Error").is_valid(refused[1])
    for path, component in (("/v1/catalog", "Catalog"), ("/v1/health", "Health")):
        status, _, out = asyncio.run(
            HTTP.handle("GET", path, {"x-api-key": READ_KEY}, _stream(b""))
        )
        assert status == 200 and _validator(component).is_valid(orjson.loads(out)), path


def test_the_request_schema_carries_what_the_server_enforces() -> None:
    features = _validator("FeaturesRequest")
    assert features.is_valid(READ)
    assert features.is_valid(
        {"entities": {"user": ["u_1"], "merchant": ["m_1"]}, "feature_service": "fraud_v1"}
    )
    refused_by_both = [
        {**READ, "features": []},  # minItems
        {"features": ["user_spend:last_amount"]},  # entities required
        {**READ, "feature_service": "fraud_v1"},  # exactly one of the two
        {**READ, "features": ["user_spend:nope"]},  # refs of the catalog
        {**READ, "entities": {"nobody": ["u_1"]}},  # entity names of the catalog
        {**READ, "entities": {"merchant": ["m_1"]}},  # the feature's entity must be given
        {**READ, "entities": {"user": [f"u_{i}" for i in range(11)]}},  # max_entities
        {**READ, "entities": {"user": ["x" * 65]}},  # max_id_bytes
        {**READ, "entities": {"user": ["u\n1"]}},  # control characters
        {**READ, "deadline_ms": 0},
        {**READ, "format": "csv"},
    ]
    for body in refused_by_both:
        assert not features.is_valid(body), body
        assert _post("/v1/features", body)[0] == 422, body
    operation = DOCUMENT["paths"]["/v1/features"]["post"]
    assert operation["requestBody"]["required"] is True
    assert {"400", "401", "403", "413", "422", "503"} <= set(operation["responses"])
    for path in ("/v1/catalog", "/v1/stores"):
        assert {"401", "403", "503"} <= set(DOCUMENT["paths"][path]["get"]["responses"]), path


def test_a_missing_body_is_refused_as_documented() -> None:
    status, _, out = asyncio.run(
        HTTP.handle("POST", "/v1/features", {"x-api-key": READ_KEY}, _stream(b""))
    )
    responses = DOCUMENT["paths"]["/v1/features"]["post"]["responses"]
    assert status == 400 and str(status) in responses
    assert _validator("Error").is_valid(orjson.loads(out))


def _equal_columns(body: Any) -> Any:
    """The Feast rule JSON Schema cannot state (the document says it): equal column lengths."""
    columns = body["entities"]
    rows = min(len(column) for column in columns.values())
    return {**body, "entities": {name: column[:rows] for name, column in columns.items()}}


SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.mark.parametrize("path", ["/v1/features", "/get-online-features"])
def test_every_schema_valid_body_is_served(path: str) -> None:
    sent: list[int] = []

    @given(case=SCHEMA[path]["POST"].as_strategy())
    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    def served(case: Case) -> None:
        body = _equal_columns(case.body) if path == "/get-online-features" else case.body
        status, out = _post(path, body)
        assert status == 200, (body, out)
        sent.append(status)

    served()
    assert len(sent) >= 30  # generated and sent, not vacuously true


def test_the_docs_page_is_self_contained_and_covers_the_document() -> None:
    status, headers, page = asyncio.run(HTTP.handle("GET", "/docs", {}, _stream(b"")))
    html = page.decode()
    assert status == 200 and ("content-type", "text/html; charset=utf-8") in headers
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html), "an external URL"
    assert "<script" not in html and "<link" not in html and "@import" not in html
    for path, item in DOCUMENT["paths"].items():
        for method in item:
            assert f'<span class="method">{method}</span> <code>/us-east{path}</code>' in html
    for name in DOCUMENT["components"]["schemas"]:
        assert f'id="schema-{name}"' in html
    assert "user_spend:last_amount" in html  # the request example and the feature enum
    assert "&quot;" in html and '"entities"' not in html  # document text is escaped


def test_the_docs_page_shows_parameters_and_escapes_document_text() -> None:
    document = {
        "openapi": "3.1.0",
        "info": {"title": "<script>alert(1)</script>", "version": "1"},
        "paths": {
            "/x/{id}": {
                "get": {
                    "summary": "one x",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "<b>ok</b>"}},
                }
            }
        },
    }
    html = render_html(document).decode()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<td><code>id</code></td><td>path</td><td>yes</td>" in html
    assert "&lt;b&gt;ok&lt;/b&gt;" in html
