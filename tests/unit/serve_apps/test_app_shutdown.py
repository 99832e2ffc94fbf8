"""A replica's graceful stop (Serve awaits ``RegionServer.__del__``) keeps the sampled answers
already on their way to the answer log, which the consistency validator reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from features.demo import card_transactions_catalog
from regions.answer_log import AnswerEntry, AnswerLog
from serve_apps import app
from serve_apps.wiring import build_http
from tests.unit.serve_apps.fakes import T0, FakeClock, FakeStore, config, event, tiles_for


class _SlowRedis:
    """An answer-log client whose writes land only once ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.added: list[str] = []

    def pipeline(self, transaction: bool = True) -> _SlowRedis:
        return self

    def xadd(self, key: str, fields: dict[str, str], **_: Any) -> None:
        self.added.append(fields["entity_id"])

    async def execute(self) -> list[Any]:
        await self.release.wait()
        return []


class _Follower:
    async def run(self, every_s: float) -> None:
        await asyncio.sleep(3600)


def _entry(entity_id: str) -> AnswerEntry:
    return AnswerEntry(
        request_id="r1",
        region="us-east",
        store="redis-us-east",
        as_of_ms=T0,
        entity="user",
        entity_id=entity_id,
        view="user_spend",
        feature="last_amount",
        value=5.0,
        status="ok",
        event_time_ms=T0,
    )


# When the object is collected, Python calls __del__ once more and drops the coroutine unrun:
# harmless (Serve awaited the real stop already), but it warns.
@pytest.mark.filterwarnings("ignore:coroutine 'RegionServer.__del__' was never awaited")
def test_a_graceful_stop_finishes_the_answer_writes_and_stops_the_background_loops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis = _SlowRedis()
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(card_transactions_catalog(), [event(0, "u_1", "m_1", 5.0, T0)], T0))
    clock = FakeClock(wall=T0)
    http = build_http(config(), monotonic=clock, wall_ms=clock.wall_ms, stores=[(store, 0.05)])
    http.answers = AnswerLog(redis, "fl:default:answers", share=1.0)
    monkeypatch.setattr(app, "build_http", lambda *a, **k: http)
    monkeypatch.setattr(app, "warm_dynamo_clients", lambda _: None)
    monkeypatch.setattr(app, "catalog_follower", lambda *_: _Follower())

    async def scenario() -> None:
        deployment: Any = app.RegionServer  # a serve.Deployment; the decorator hides that
        cls = deployment.func_or_class
        server = cls.__new__(cls)
        await server.__init__(config().model_dump(mode="python"), {"embeddings": []})
        assert http.answers is not None
        assert http.answers.offer([_entry("u_1"), _entry("u_2")]) == 2
        stopping = asyncio.create_task(server.__del__())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not stopping.done(), "the stop waits for the answer writes under way"
        redis.release.set()
        await asyncio.wait_for(stopping, timeout=5)
        assert http.answers.written == 2 and redis.added == ["u_1", "u_2"]
        await asyncio.sleep(0)
        assert server._gauges.cancelled() and server._follow.cancelled()

    asyncio.run(scenario())
