"""The serving API keeps its OpenAPI contract: schemathesis loads the document each region's real
application serves (through the stack's ingress) and generates requests from it, valid ones and
invalid ones, sent with an API key; every answer is checked: no 5xx, its status code documented
for the operation, its body and headers valid against the response schema of that status, the
documented content type, every schema-valid request served with a 2xx, and one ``x-request-id``
per response that is also the body's ``request_id``. Each test also proves it ran: the cases it
sent were generated and, for valid ones, served.

Schemathesis' pytest loader for fixtures (``from_fixture``) does not run on this pytest, so the
cases come from its Python API (``APIOperation.as_strategy``) under Hypothesis' ``@given``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema

from cluster.stack import Stack
from tests.integration.serving_world import ADMIN_KEY, READ_KEY, serving_world

pytestmark = pytest.mark.integration

REGIONS = ("us-east", "eu-west")
MAX_EXAMPLES = 25  # per operation and mode: both regions' operations take about a minute
FEAST = "/get-online-features"
READS = ("POST /v1/features", f"POST {FEAST}")
OPERATIONS = (
    *READS,
    "GET /v1/catalog",
    "GET /v1/stores",
    "GET /v1/health",
    "GET /v1/ready",
    "GET /docs",
)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[dict[str, Any]]:
    # Ids of its own: test_serving's world is written on the same stack after this one.
    with serving_world(stack, run=uuid.uuid4().hex[:8]) as deployed:
        yield deployed


def _equal_length_columns(context: Any, body: Any) -> Any:
    """The Feast route's columns must have equal lengths, a rule JSON Schema cannot state (the
    document says it in prose): cut every column to the shortest, which keeps the body valid."""
    operation = getattr(context, "operation", None)
    if operation is None or not operation.path.endswith(FEAST) or not isinstance(body, dict):
        return body
    columns = body.get("entities")
    if not isinstance(columns, dict) or not columns:
        return body
    if not all(isinstance(column, list) for column in columns.values()):
        return body
    rows = min(len(column) for column in columns.values())
    return {**body, "entities": {name: column[:rows] for name, column in columns.items()}}


@pytest.fixture(scope="module")
def documents(world: dict[str, Any]) -> dict[str, BaseSchema]:
    """Each region's document, loaded from its running application."""
    config = SchemathesisConfig.from_dict(
        # Valid data must be served: not refused, not shed, not failed (the default would also
        # pass 401, 403, 404 and 5xx).
        {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx"]}}}
    )
    loaded = {}
    for region in REGIONS:
        url = f"{world['base']}/{region}/v1/openapi.json"
        loaded[region] = schemathesis.openapi.from_url(url, config=config)
        loaded[region].hook("map_body")(_equal_length_columns)
    return loaded


@schemathesis.check
def one_request_id(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Exactly one ``x-request-id`` header, equal to the body's ``request_id`` when it has one."""
    ids = response.headers.get("x-request-id", [])
    if len(ids) != 1:
        raise AssertionError(f"{len(ids)} x-request-id headers: {ids}")
    if response.headers.get("content-type", [""])[0].startswith("application/json"):
        body = orjson.loads(response.content)
        if isinstance(body, dict) and "request_id" in body and body["request_id"] != ids[0]:
            raise AssertionError(f"body request_id {body['request_id']} != header {ids[0]}")
    return None


_C = schemathesis.checks
CHECKS = [
    _C.not_a_server_error,
    _C.status_code_conformance,
    _C.content_type_conformance,
    _C.response_schema_conformance,
    _C.response_headers_conformance,
    _C.positive_data_acceptance,
    one_request_id,
]


def _key_for(path: str) -> str:
    return ADMIN_KEY if path.endswith("/v1/stores") else READ_KEY


def _run(operation: Any, mode: GenerationMode, hooks: Any) -> Counter[int]:
    """``MAX_EXAMPLES`` generated cases of ``mode`` sent and checked; their statuses counted."""
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode, hooks=hooks))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    def send(case: Case) -> None:
        response = case.call_and_validate(headers={"x-api-key": _key_for(case.path)}, checks=CHECKS)
        statuses[response.status_code] += 1
        if mode is GenerationMode.POSITIVE:  # also the check's verdict; stated where it is read
            assert 200 <= response.status_code < 300, response.status_code

    send()
    return statuses


@pytest.mark.parametrize("label", OPERATIONS)
@pytest.mark.parametrize("region", REGIONS)
def test_each_operation_keeps_its_contract(
    documents: dict[str, BaseSchema], region: str, label: str
) -> None:
    schema = documents[region]
    method, path = label.split(" ")
    operation = schema[path][method]
    served = _run(operation, GenerationMode.POSITIVE, schema.hooks)
    assert sum(n for status, n in served.items() if 200 <= status < 300) >= 1, served
    if label in READS:
        # Many distinct bodies, all served (the checks refuse any other status).
        assert sum(served.values()) >= MAX_EXAMPLES // 2, served
        refused = _run(operation, GenerationMode.NEGATIVE, schema.hooks)
        assert sum(refused.values()) >= MAX_EXAMPLES // 2, refused
        # Some invalid cases were refused as the client's error. Which status (400 for a body
        # that is not a JSON object, 422 for one the API cannot serve) depends on the cases
        # Hypothesis draws; each one's status was checked against the document above, and
        # test_serving pins the 422s.
        assert any(400 <= status < 500 for status in refused), refused


def test_the_document_lists_every_route_and_every_example_is_served(world: dict[str, Any]) -> None:
    http: httpx.Client = world["http"]
    for region in REGIONS:
        document = http.get(f"/{region}/v1/openapi.json").json()
        listed = {f"{m.upper()} {path}" for path, item in document["paths"].items() for m in item}
        assert listed == {*OPERATIONS, "GET /v1/openapi.json"}
        for label in READS:
            path = label.split(" ")[1]
            body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            reply = http.post(
                f"/{region}{path}", json=body["example"], headers={"x-api-key": READ_KEY}
            )
            assert reply.status_code == 200, reply.text


def test_undeclared_methods_answer_405_with_allow(world: dict[str, Any]) -> None:
    """Every method a documented path does not list: 405, ``Allow`` naming the listed ones."""
    http: httpx.Client = world["http"]
    document = http.get("/us-east/v1/openapi.json").json()
    for path, item in document["paths"].items():
        listed = {m.upper() for m in item}
        for method in set(METHODS) - listed:
            reply = http.request(method, f"/us-east{path}", headers={"x-api-key": READ_KEY})
            assert reply.status_code == 405, (method, path, reply.status_code)
            assert set(reply.headers["allow"].split(", ")) == listed, (method, path)
            assert len(reply.headers.get_list("x-request-id")) == 1
    assert http.get("/us-east/v1/nowhere").status_code == 404
