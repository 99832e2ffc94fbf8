"""Serving's answer log hook: what a client was sent is what is logged, for sampled entities
only, in both native shapes; a broken log never changes the answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from features.demo import card_transactions_catalog
from regions.answer_log import AnswerLog, decode
from serve_apps.answer_entries import answer_entries
from serve_apps.wiring import build_http
from tests.unit.regions.test_answer_log import StreamRedisFake
from tests.unit.serve_apps.fakes import READ_KEY, T0, FakeClock, FakeStore, config, event, tiles_for

CATALOG = card_transactions_catalog()
FEATURES = ["user_spend:tx_count_1h", "user_spend:last_amount"]


def _read(redis: StreamRedisFake, body: dict[str, Any]) -> tuple[int, Any]:
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(CATALOG, [event(0, "u_1", "m_1", 5.0, T0 - 1000)], T0))
    clock = FakeClock(wall=T0)
    http = build_http(
        config(),
        monotonic=clock,
        wall_ms=clock.wall_ms,
        stores=[(store, 0.05), (FakeStore("dynamodb-us-east"), 0.5)],
    )
    http.answers = AnswerLog(redis, "fl:default:answers:v1", 1.0)

    async def chunks() -> AsyncIterator[bytes]:
        yield orjson.dumps(body)

    async def go() -> tuple[int, Any]:
        status, _, out = await http.handle("POST", "/v1/features", {"x-api-key": READ_KEY}, chunks)
        assert http.answers is not None
        await http.answers.drain()
        return status, orjson.loads(out)

    return asyncio.run(go())


def test_every_value_sent_is_logged_as_sent_in_both_shapes() -> None:
    for shape in ("rows", "columns"):
        redis = StreamRedisFake()
        body = {"entities": {"user": ["u_1", "u_2"]}, "features": FEATURES, "format": shape}
        status, answer = _read(redis, body)
        assert status == 200
        logged = {(e.entity_id, e.ref): e for e in (decode(f) for _, f, _ in redis.added)}
        assert set(logged) == {(u, f) for u in ("u_1", "u_2") for f in FEATURES}
        one = logged[("u_1", "user_spend:last_amount")]
        assert (one.value, one.status, one.store) == (5.0, "present", "redis-us-east")
        assert (one.request_id, one.as_of_ms) == (answer["request_id"], answer["as_of_ms"])
        assert logged[("u_2", "user_spend:tx_count_1h")].status == "not_found"


def test_a_failing_log_leaves_the_answer_unchanged() -> None:
    body = {"entities": {"user": ["u_1"]}, "features": FEATURES}
    _, clean = _read(StreamRedisFake(), body)
    status, broken = _read(StreamRedisFake(ConnectionError("down")), body)
    assert status == 200
    assert broken["results"] == clean["results"]


def test_only_wanted_entities_are_turned_into_entries() -> None:
    body = {
        "request_id": "r",
        "region": "us-east",
        "as_of_ms": 1,
        "results": [
            {
                "entity": "user",
                "id": i,
                "features": {
                    "v:f": {
                        "value": 1,
                        "status": "present",
                        "event_time_ms": None,
                        "age_ms": None,
                        "store": "s",
                    }
                },
            }
            for i in ("a", "b")
        ],
    }
    asked: list[str] = []

    def wanted(entity_id: str) -> bool:
        asked.append(entity_id)
        return entity_id == "b"

    assert [e.entity_id for e in answer_entries(body, wanted)] == ["b"]
    assert asked == ["a", "b"]
