"""POST /v1/similar over real in-process indexes: answers, errors, batching and the document."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import jsonschema_rs
import numpy as np
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case

from actors.embedding_index import EmbeddingIndex
from features.embedding_catalog import ViewCatalog
from features.embedding_search import Query, SearchAnswer, StrategyPolicy
from features.embeddings import EmbeddingEvent, EmbeddingView, IndexNotReady, Op
from features.errors import StoreUnavailable
from serve_apps.config import Limits
from serve_apps.http import ServingHttp
from serve_apps.similar import RegionIndexBackend, SimilarSearch
from serve_apps.wiring import build_http
from tests.unit.serve_apps.fakes import READ_KEY, T0, FakeClock, FakeStore, config

DIM = 4
VIEW = EmbeddingView(
    name="items",
    topic="fl.items.embeddings",
    dimension=DIM,
    model="item2vec",
    model_versions=("v1", "v2"),
    serving_version="v1",
    categories=frozenset({"colour"}),
    numbers=frozenset({"price"}),
)
COLOURS = ("red", "blue", "green", "black")


class IndexBackend:
    """The index actor's answers without Ray: a real EmbeddingIndex per version."""

    def __init__(self, n: int = 200) -> None:
        rng = np.random.default_rng(0)
        self.events = [
            EmbeddingEvent(
                f"e{i}",
                "v1",
                Op.UPSERT,
                1,
                rng.standard_normal(DIM).astype(np.float32),
                {"colour": COLOURS[i % 4]},
                {"price": float(i)},
                ("boot",) if i % 10 == 0 else (),
            )
            for i in range(n)
        ]
        policy = StrategyPolicy(exact_max_rows=20, over_fetch_min_selectivity=0.5)
        self.indexes = {v: EmbeddingIndex(VIEW, v, policy) for v in VIEW.model_versions}
        self.indexes["v1"].apply(self.events)
        self.indexes["v2"].apply([_as_v2(e) for e in self.events[:50]])
        self.calls: list[int] = []
        self.fail: Exception | None = None

    async def search(self, view: str, version: str, queries: list[Query]) -> SearchAnswer:
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        self.calls.append(len(queries))
        index = self.indexes[version]
        return SearchAnswer(version, index.mutations, index.search_batch(queries))

    async def vector_of(self, view: str, version: str, entity_id: str) -> list[float] | None:
        vector = self.indexes[version].vector_of(entity_id)
        return None if vector is None else vector.tolist()

    def brute_force(
        self, query: list[float], k: int, keep: Callable[[EmbeddingEvent], bool]
    ) -> list[str]:
        q = np.asarray(query, dtype=np.float32)
        ranked = sorted(
            (e for e in self.events if keep(e)),
            key=lambda e: float(((e.vector - q) ** 2).sum()),  # type: ignore[operator]
        )
        return [e.entity_id for e in ranked[:k]]


def _as_v2(event: EmbeddingEvent) -> EmbeddingEvent:
    return EmbeddingEvent(
        event.entity_id, "v2", Op.UPSERT, 1, event.vector, event.categories, event.numbers, ()
    )


def _server(backend: IndexBackend) -> ServingHttp:
    clock = FakeClock(wall=T0)
    base = build_http(
        config(limits=Limits(max_in_flight=16, min_in_flight=16)),  # all of a batch admitted
        monotonic=clock,
        wall_ms=clock.wall_ms,
        stores=[(FakeStore("redis-us-east"), 0.05), (FakeStore("dynamodb-us-east"), 0.5)],
    )
    return ServingHttp(
        base.config, base.service, similar=SimilarSearch({"items": VIEW}, "us-east", backend)
    )


def _stream(raw: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def chunks() -> AsyncIterator[bytes]:
        yield raw

    return chunks


async def _ask(http: ServingHttp, body: Any) -> tuple[int, Any]:
    raw = json.dumps(body).encode()
    status, _, out = await http.handle("POST", "/v1/similar", {"x-api-key": READ_KEY}, _stream(raw))
    return status, orjson.loads(out)


def _post(http: ServingHttp, body: Any) -> tuple[int, Any]:
    return asyncio.run(_ask(http, body))


BACKEND = IndexBackend()
HTTP = _server(BACKEND)
DOCUMENT: dict[str, Any] = orjson.loads(HTTP._openapi)
ANSWER = jsonschema_rs.Draft202012Validator({**DOCUMENT, "$ref": "#/components/schemas/Similar"})
QUERY = [0.3, -1.0, 0.5, 2.0]


def test_a_vector_query_answers_the_brute_force_top_k_with_its_versions() -> None:
    status, body = _post(HTTP, {"view": "items", "vector": QUERY, "k": 5})
    assert status == 200 and ANSWER.is_valid(body)
    assert [hit["id"] for hit in body["results"]] == BACKEND.brute_force(QUERY, 5, lambda e: True)
    assert (body["region"], body["model_version"], body["index_version"]) == ("us-east", "v1", 200)
    assert (body["strategy"], body["hybrid"]) == ("unfiltered", False)


@pytest.mark.parametrize(
    ("filters", "strategy", "keep"),
    [
        (
            {"colour": "red", "price": {"lt": 40}},
            "exact",
            lambda e: e.categories["colour"] == "red" and e.numbers["price"] < 40,
        ),
        (
            {"price": {"gte": 50, "lt": 100}},
            "id_selector",
            lambda e: 50 <= e.numbers["price"] < 100,
        ),
        (
            {"colour": {"in": ["red", "blue", "green"]}},
            "over_fetch",
            lambda e: e.categories["colour"] != "black",
        ),
    ],
)
def test_a_filtered_query_says_which_strategy_it_used(
    filters: dict[str, Any], strategy: str, keep: Callable[[EmbeddingEvent], bool]
) -> None:
    status, body = _post(HTTP, {"view": "items", "vector": QUERY, "k": 5, "filters": filters})
    assert status == 200 and body["strategy"] == strategy
    assert [hit["id"] for hit in body["results"]] == BACKEND.brute_force(QUERY, 5, keep)


def test_an_entity_query_searches_from_its_vector_and_leaves_it_out() -> None:
    status, body = _post(HTTP, {"view": "items", "entity_id": "e7", "k": 4})
    own = BACKEND.events[7].vector.tolist()  # type: ignore[union-attr]
    assert status == 200
    assert [hit["id"] for hit in body["results"]] == BACKEND.brute_force(own, 5, lambda e: True)[1:]


def test_a_text_query_makes_the_search_hybrid() -> None:
    status, body = _post(HTTP, {"view": "items", "vector": QUERY, "k": 5, "text": "Boots"})
    assert status == 200 and body["hybrid"] is True
    assert any(int(hit["id"][1:]) % 10 == 0 for hit in body["results"])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"view": "users", "vector": QUERY}, "unknown_view"),
        ({"view": "items", "vector": QUERY[:3]}, "bad_vector"),
        ({"view": "items", "vector": [1e39, 0, 0, 0]}, "bad_vector"),
        ({"view": "items", "vector": [2e15, 0, 0, 0]}, "bad_vector"),
        ({"view": "items", "vector": QUERY, "entity_id": "e1"}, "bad_vector"),
        ({"view": "items"}, "bad_vector"),
        ({"view": "items", "vector": QUERY, "k": 0}, "bad_k"),
        ({"view": "items", "vector": QUERY, "k": 101}, "bad_k"),
        ({"view": "items", "vector": QUERY, "filters": {"brand": "x"}}, "bad_filter"),
        ({"view": "items", "vector": QUERY, "filters": []}, "bad_filter"),
        ({"view": "items", "vector": QUERY, "text": "x" * 300}, "bad_text"),
        ({"view": "items", "vector": QUERY, "version": "v9"}, "unknown_model_version"),
        ({"view": "items", "entity_id": "nobody"}, "unknown_entity"),
    ],
)
def test_a_bad_request_is_refused_with_its_code(body: dict[str, Any], code: str) -> None:
    status, out = _post(HTTP, body)
    assert (status, out["error"]) == (422, code)


def test_concurrent_queries_reach_the_index_in_one_call() -> None:
    backend = IndexBackend()
    http = _server(backend)

    async def many() -> list[tuple[int, Any]]:
        bodies = [{"view": "items", "vector": [float(i), 0, 0, 1], "k": 3} for i in range(8)]
        return await asyncio.gather(*(_ask(http, b) for b in bodies))

    answers = asyncio.run(many())
    assert backend.calls == [8]
    for i, (status, body) in enumerate(answers):
        assert status == 200
        assert [h["id"] for h in body["results"]] == backend.brute_force(
            [float(i), 0, 0, 1], 3, lambda e: True
        )


def test_an_unavailable_index_answers_503_to_every_waiter() -> None:
    backend = IndexBackend()
    backend.fail = StoreUnavailable("index actor gone")
    http = _server(backend)

    async def two() -> list[tuple[int, Any]]:
        body = {"view": "items", "vector": QUERY}
        return await asyncio.gather(_ask(http, body), _ask(http, body))

    assert [(s, b["error"]) for s, b in asyncio.run(two())] == [(503, "unavailable")] * 2


def test_the_route_and_its_document_exist_only_with_embedding_views() -> None:
    plain = build_http(
        config(),
        monotonic=FakeClock(wall=T0),
        wall_ms=lambda: T0,
        stores=[(FakeStore("redis-us-east"), 0.05)],
    )
    assert "/v1/similar" not in orjson.loads(plain._openapi)["paths"]
    status, _, _ = asyncio.run(
        plain.handle("POST", "/v1/similar", {"x-api-key": READ_KEY}, _stream(b"{}"))
    )
    assert status == 404
    assert "/v1/similar" in DOCUMENT["paths"]


SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)


def test_every_schema_valid_request_is_served() -> None:
    sent: list[int] = []

    @given(case=SCHEMA["/v1/similar"]["POST"].as_strategy())
    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    def served(case: Case) -> None:
        body = dict(case.body)
        if "entity_id" in body:  # the schema cannot know which ids have vectors
            body["entity_id"] = "e3"
        status, out = _post(HTTP, body)
        assert status == 200, (body, out)
        assert ANSWER.is_valid(out)
        sent.append(status)

    served()
    assert len(sent) >= 30


class CatalogBackend(IndexBackend):
    """An index backend whose view follows a catalog the test changes (the catalog actor's long
    poll, on the test's loop)."""

    def __init__(self, catalog: ViewCatalog | None) -> None:
        super().__init__()
        self.catalog = catalog
        self.changed = asyncio.Event()
        self.watches = 0

    async def watch(self, view: str, generation: int, timeout_s: float) -> ViewCatalog | None:
        self.watches += 1
        while self.catalog is not None and self.catalog.generation == generation:
            self.changed.clear()
            await self.changed.wait()
        return self.catalog

    def publish(self, catalog: ViewCatalog) -> None:
        self.catalog = catalog
        self.changed.set()

    async def search(self, view: str, version: str, queries: list[Query]) -> SearchAnswer:
        if version not in self.indexes:
            raise IndexNotReady(f"{version} is being built")
        return await super().search(view, version, queries)


async def _followed(http: ServingHttp, generation: int) -> None:
    """Until the replica has taken ``generation`` (a wait on the loop, not a timing check)."""
    follower = http.similar.follower  # type: ignore[union-attr]
    while follower.generations.get("items") != generation:
        await asyncio.sleep(0)


def test_a_catalog_switch_moves_reads_without_a_restart() -> None:
    first = ViewCatalog.initial(VIEW)
    backend = CatalogBackend(first)
    http = _server(backend)
    plain = {"view": "items", "vector": QUERY, "k": 3}

    async def scenario() -> list[tuple[int, Any]]:
        seen = [await _ask(http, plain)]
        switched = first.switch("v2", now_ms=0, grace_ms=60_000)
        backend.publish(switched)
        await _followed(http, switched.generation)
        seen += [await _ask(http, plain), await _ask(http, {**plain, "version": "v1"})]
        building = switched.add("v3")  # declared, its index not built yet
        backend.publish(building)
        await _followed(http, building.generation)
        seen.append(await _ask(http, {**plain, "version": "v3"}))
        dropped = building.drop("v1")
        backend.publish(dropped)
        await _followed(http, dropped.generation)
        seen.append(await _ask(http, {**plain, "version": "v1"}))
        http.similar.follower.close()  # type: ignore[union-attr]
        return seen

    v1, v2, v1_named, v3, v1_dropped = asyncio.run(scenario())
    assert [a[1]["model_version"] for a in (v1, v2, v1_named)] == ["v1", "v2", "v1"]
    assert (v3[0], v3[1]["error"]) == (409, "version_not_ready")
    assert (v1_dropped[0], v1_dropped[1]["error"]) == (422, "unknown_model_version")


def test_a_new_replica_reads_the_catalogs_serving_version_from_its_first_request() -> None:
    backend = CatalogBackend(ViewCatalog.initial(VIEW).switch("v2", now_ms=0, grace_ms=1))
    http = _server(backend)  # deployed with VIEW, whose serving version is v1
    status, body = _post(http, {"view": "items", "vector": QUERY, "k": 3})
    assert (status, body["model_version"]) == (200, "v2")


def test_a_view_without_a_catalog_serves_as_deployed() -> None:
    backend = CatalogBackend(None)
    http = _server(backend)
    status, body = _post(http, {"view": "items", "vector": QUERY, "k": 3})
    assert (status, body["model_version"], backend.watches) == (200, "v1", 1)


class ActorsOnly(RegionIndexBackend):
    """The Ray backend with its actors replaced by a log of what they were asked."""

    def __init__(self, redis: Callable[[str], Any]) -> None:
        super().__init__(["us-east"], vectors=redis)
        self.asked: list[str] = []

    async def _first(self, view: str, version: str, method: str, *args: Any) -> Any:
        self.asked.append(args[0])
        return [9.0, 9.0, 9.0, 9.0]


@pytest.mark.parametrize(
    ("stored", "expected", "asked"),
    [
        (np.ones(DIM, dtype="<f4").tobytes(), [1.0] * DIM, []),
        (None, [9.0] * DIM, ["e1"]),  # not in Redis: it may be being copied again
        (ConnectionError("refused"), [9.0] * DIM, ["e1"]),
    ],
)
def test_a_vector_by_id_comes_from_redis_and_from_the_index_when_redis_has_none(
    stored: Any, expected: list[float], asked: list[str]
) -> None:
    async def get(key: str) -> Any:
        assert key == "fl:emb:items:v1:e1"
        if isinstance(stored, Exception):
            raise stored
        return stored

    backend = ActorsOnly(get)
    assert asyncio.run(backend.vector_of("items", "v1", "e1")) == expected
    assert backend.asked == asked
