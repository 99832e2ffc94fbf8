"""A replica follows registry versions published in its region's Redis: newer ones replace the
catalog between requests, a request in flight keeps the catalog it was planned with, and a Redis
outage or a bad record leaves what it serves unchanged."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from features.catalog import Catalog
from features.demo import card_transactions_catalog
from features.errors import CatalogError
from features.registry import RegistryVersion
from serve_apps.http import ServingHttp
from serve_apps.plan import CatalogIndex
from serve_apps.registry_follow import CatalogFollower
from serve_apps.wiring import build_http
from tests.unit.serve_apps.fakes import READ_KEY, T0, FakeClock, FakeStore, config

DEMO = card_transactions_catalog()


def _bumped(catalog: Catalog, view: str) -> Catalog:
    """``catalog`` with ``view`` at the next version (its tiles live under new keys)."""
    data = catalog.model_dump(mode="json")
    for item in data["views"]:
        if item["name"] == view:
            item["version"] += 1
    return Catalog.from_dict(data)


def _version(number: int, catalog: Catalog = DEMO) -> RegistryVersion:
    return RegistryVersion(number, number - 1, catalog, datetime(2026, 12, 5, tzinfo=UTC))


class _Published:
    """What a region's Redis holds, as the follower reads it; ``down`` makes reads fail."""

    def __init__(self) -> None:
        self.version: RegistryVersion | None = None
        self.raw: bytes | None = None
        self.down = False
        self.record_reads = 0

    async def number(self) -> int | None:
        if self.down:
            raise ConnectionError("redis is down")
        return None if self.version is None else self.version.number

    async def record(self) -> RegistryVersion | None:
        self.record_reads += 1
        if self.raw is not None:
            return RegistryVersion.decode(self.raw)
        return self.version


def _follower(published: _Published, serving: int | None) -> tuple[CatalogFollower, list[int]]:
    used: list[int] = []
    follower = CatalogFollower(
        "default",
        serving,
        published.number,
        published.record,
        lambda index, number: used.append(number),
    )
    return follower, used


def test_moves_to_each_newer_version_and_reads_the_record_only_then() -> None:
    published = _Published()
    follower, used = _follower(published, serving=None)
    assert not asyncio.run(follower.refresh())  # nothing published: the catalog from code
    published.version = _version(3)
    assert asyncio.run(follower.refresh())
    assert asyncio.run(follower.refresh()) is False
    assert (used, follower.serving, published.record_reads) == ([3], 3, 1)
    published.version = _version(2)  # never backwards
    assert not asyncio.run(follower.refresh())
    published.version = _version(4, _bumped(DEMO, "user_spend"))
    assert asyncio.run(follower.refresh())
    assert used == [3, 4]


def test_an_outage_or_a_bad_record_keeps_what_is_served_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    published = _Published()
    published.version = _version(2)
    follower, used = _follower(published, serving=1)
    published.down = True
    with caplog.at_level(logging.WARNING, logger="serve_apps.registry_follow"):
        for _ in range(3):
            assert not asyncio.run(follower.refresh())
    assert [r.getMessage() for r in caplog.records] == [
        "registry version unreadable from Redis: ConnectionError"
    ]
    published.down = False
    published.raw = b'{"number": 2, "parent": 1, "catalog": {}}'  # no digest, no catalog
    with pytest.raises(CatalogError):
        RegistryVersion.decode(published.raw)
    assert not asyncio.run(follower.refresh())
    assert (used, follower.serving) == ([], 1)
    published.raw = None
    assert asyncio.run(follower.refresh())
    assert (used, follower.serving) == ([2], 2)


def _http(store: FakeStore) -> tuple[ServingHttp, FakeClock]:
    clock = FakeClock(wall=T0)
    http = build_http(
        config(registry_version=1),
        monotonic=clock,
        wall_ms=clock.wall_ms,
        stores=[(store, 5.0)],
    )
    return http, clock


async def _get(http: ServingHttp, path: str, body: dict[str, Any] | None = None) -> Any:
    async def chunks():  # type: ignore[no-untyped-def]
        yield orjson.dumps(body or {})

    method = "GET" if body is None else "POST"
    status, _, out = await http.handle(method, path, {"x-api-key": READ_KEY}, chunks)
    assert status == 200, out
    return orjson.loads(out)


def test_a_new_catalog_serves_from_the_next_request_and_a_read_in_flight_keeps_its_own() -> None:
    store = FakeStore("redis-us-east", delay_s=0.05)
    http, _ = _http(store)
    read = {"entities": {"user": ["u_1"]}, "features": ["user_spend:tx_count_1h"]}

    async def scenario() -> tuple[Any, Any, Any]:
        in_flight = asyncio.ensure_future(_get(http, "/v1/features", read))
        await asyncio.sleep(0.01)  # planned and waiting on the store
        http.use_catalog(CatalogIndex(_bumped(DEMO, "user_spend"), "default"), 2)
        first = await in_flight
        second = await _get(http, "/v1/features", read)
        return first, second, await _get(http, "/v1/catalog")

    first, second, catalog = asyncio.run(scenario())
    assert [key.split(":")[3] for call in store.calls for key in call] == ["v1", "v2"]
    # Each answer names the version of every view it read, and only that version's values.
    assert (first["view_versions"], second["view_versions"]) == (
        {"user_spend": [1]},
        {"user_spend": [2]},
    )
    assert catalog["registry_version"] == 2
    assert {v["name"]: v["version"] for v in catalog["views"]}["user_spend"] == 2
