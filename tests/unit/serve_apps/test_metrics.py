"""What serving records for operators (serve_apps.metrics): every answer by route and status,
each refusal by the gate that refused it, which kind of store answered, each view's served age,
and breaker states, with label values that stay bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from features.demo import card_transactions_catalog
from features.durations import to_ms
from serve_apps.config import Limits
from serve_apps.http import SHED_IN_FLIGHT, ServingHttp
from serve_apps.metrics import DEFAULTS, LOCAL, OTHER_REGION, REPLICA, answer_source
from serve_apps.wiring import build_http
from tests.unit.serve_apps.fakes import READ_KEY, T0, FakeClock, FakeStore, config, event, tiles_for

CATALOG = card_transactions_catalog()
READ = {"entities": {"user": ["u_1", "u_2"]}, "features": ["user_spend:tx_count_1h"]}


@dataclass
class Recorder:
    requests: list[tuple[str, int]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    ages: list[tuple[str, int]] = field(default_factory=list)
    breaker_states: list[dict[str, str]] = field(default_factory=list)
    catalogs: list[tuple[dict[str, int], int | None]] = field(default_factory=list)

    def request(self, route: str, status: int, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((route, status))

    def refused(self, gate: str) -> None:
        self.refusals.append(gate)

    def answered(self, store: str) -> None:
        self.answers.append(store)

    def served_age(self, view: str, age_ms: int) -> None:
        self.ages.append((view, age_ms))

    def breakers(self, states: Mapping[str, str]) -> None:
        self.breaker_states.append(dict(states))

    def catalog(self, targets_ms: Mapping[str, int], registry_version: int | None) -> None:
        self.catalogs.append((dict(targets_ms), registry_version))


def _server(**overrides: Any) -> tuple[ServingHttp, Recorder, FakeClock]:
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(CATALOG, [event(0, "u_1", "m_1", 5.0, T0 - 1_000)], T0))
    clock = FakeClock(wall=T0)
    http = build_http(
        config(**overrides),
        monotonic=clock,
        wall_ms=clock.wall_ms,
        stores=[(store, 0.05), (FakeStore("dynamodb-us-east"), 0.5)],
    )
    recorder = Recorder()
    http.metrics = recorder
    return http, recorder, clock


def _stream(raw: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def chunks() -> AsyncIterator[bytes]:
        yield raw

    return chunks


def _call(http: ServingHttp, path: str, body: Any = None, method: str = "POST") -> int:
    headers = {"x-api-key": READ_KEY}
    raw = b"" if body is None else orjson.dumps(body)
    status, _, _ = asyncio.run(http.handle(method, path, headers, _stream(raw)))
    return status


def test_each_answer_is_counted_by_route_and_status_with_unknown_paths_pooled() -> None:
    http, rec, _ = _server()
    assert _call(http, "/v1/features", READ) == 200
    assert _call(http, "/v1/features", {"entities": {}}) == 422
    assert _call(http, "/v1/health", method="GET") == 200
    assert _call(http, "/v1/features", method="GET") == 405
    assert _call(http, "/wp-admin/x.php") == 404
    assert _call(http, "/../etc/passwd") == 404
    assert rec.requests == [
        ("/v1/features", 200),
        ("/v1/features", 422),
        ("/v1/health", 200),
        ("/v1/features", 405),
        ("unknown", 404),  # a scanner's paths must not each become a series
        ("unknown", 404),
    ]


def test_a_read_records_its_source_and_its_served_age() -> None:
    http, rec, _ = _server()
    _call(http, "/v1/features", READ)
    _call(http, "/v1/features", READ)
    assert rec.answers == ["redis-us-east", "redis-us-east"]
    # u_1's event is 1 s old when read; u_2 has none: the view's newest event is u_1's.
    assert rec.ages == [("user_spend", 1_000), ("user_spend", 1_000)]


def test_every_gauge_is_set_again_on_a_timer_with_or_without_requests() -> None:
    """Ray's agent drops a gauge not set for two exports: breakers, each view's freshness
    target and the registry version are set on every tick, not once or per request."""
    http, rec, _ = _server(registry_version=7)

    async def ticks() -> None:
        keeping = asyncio.ensure_future(http.keep_gauges(0.01))
        await asyncio.sleep(0.1)
        keeping.cancel()

    asyncio.run(ticks())
    assert len(rec.breaker_states) >= 3 and len(rec.catalogs) == len(rec.breaker_states)
    assert rec.breaker_states[-1] == {"redis-us-east": "closed", "dynamodb-us-east": "closed"}
    targets = {v.name: to_ms(v.freshness_target) for v in CATALOG.views}
    assert rec.catalogs[-1] == (targets, 7)


def test_a_view_with_no_dated_value_records_no_age() -> None:
    http, rec, _ = _server()
    _call(http, "/v1/features", {"entities": {"user": ["u_9"]}, "features": READ["features"]})
    assert rec.answers == ["redis-us-east"]
    assert rec.ages == []


def test_a_refusal_is_counted_under_the_gate_that_refused_it() -> None:
    http, rec, _ = _server(limits=Limits(max_in_flight=1, min_in_flight=1))
    held = http.admission.acquire()  # the only slot is taken
    assert held is not None
    assert _call(http, "/v1/features", READ) == 503
    assert rec.refusals == [SHED_IN_FLIGHT]
    assert rec.requests == [("/v1/features", 503)]


def test_store_names_map_to_the_source_an_operator_alerts_on() -> None:
    assert answer_source("redis-us-east", "us-east") == LOCAL
    assert answer_source("dynamodb-us-east", "us-east") == REPLICA
    assert answer_source("redis-eu-west", "us-east") == OTHER_REGION
    assert answer_source("dynamodb-eu-west", "us-east") == OTHER_REGION
    assert answer_source("defaults", "us-east") == DEFAULTS
