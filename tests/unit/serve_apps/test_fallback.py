"""The fallback chain: order, one round trip per store, budgets, and breaker transitions."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import pytest

from features.demo import card_transactions_catalog
from features.errors import StoreTimeout
from regions.exceptions import AbandonedCall, StoreNotReady
from regions.resilience import BreakerState, CircuitBreaker, Deadline
from serve_apps.config import BreakerSettings
from serve_apps.exceptions import Overloaded
from serve_apps.fallback import FallbackChain, RedisStore, Step
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
REFS = ["user_spend:tx_count_1h", "user_spend:last_amount", "merchant_activity:tx_count_1h"]


def _chain() -> tuple[list[FakeStore], FakeClock, ServingHttp]:
    names = ["redis-us-east", "dynamodb-us-east", "redis-eu-west", "dynamodb-eu-west"]
    stores = [FakeStore(n) for n in names]
    writes = tiles_for(CATALOG, [event(0, "u_1", "m_1", 7.0, T0 - 1000)], T0)
    for store in stores:
        store.apply(writes)
    clock = FakeClock(wall=T0)
    breaker = BreakerSettings(min_calls=2, window_calls=4, open_s=2.0)
    http = build_http(
        config(breaker=breaker),
        monotonic=clock,
        wall_ms=clock.wall_ms,
        stores=[(s, 0.05 if s.name.startswith("redis") else 0.5) for s in stores],
    )
    return stores, clock, http


def _read(http: ServingHttp, **extra: Any) -> dict[str, Any]:
    async def chunks():  # type: ignore[no-untyped-def]
        yield orjson.dumps(
            {"entities": {"user": ["u_1", "u_2"], "merchant": ["m_1"]}, "features": REFS, **extra}
        )

    status, _, out = asyncio.run(
        http.handle("POST", "/v1/features", {"x-api-key": READ_KEY}, chunks)
    )
    assert status == 200
    return orjson.loads(out)


def _stores_of(body: dict[str, Any]) -> set[str]:
    return {v["store"] for r in body["results"] for v in r["features"].values()}


def test_one_round_trip_to_the_local_redis_for_all_keys() -> None:
    stores, _, http = _chain()
    body = _read(http)
    assert stores[0].calls == [
        [
            "fl:default:user_spend:v1:u_1",
            "fl:default:user_spend:v1:u_2",
            "fl:default:merchant_activity:v1:m_1",
        ]
    ]
    assert all(not s.calls for s in stores[1:])
    assert _stores_of(body) == {"redis-us-east"}


def test_each_step_of_the_chain_then_defaults() -> None:
    stores, _, http = _chain()
    expected = ["redis-us-east", "dynamodb-us-east", "redis-eu-west", "dynamodb-eu-west"]
    for n, name in enumerate(expected):
        body = _read(http)
        assert body["store"] == name and _stores_of(body) == {name}
        values = {(r["id"], ref): v for r in body["results"] for ref, v in r["features"].items()}
        assert values[("u_1", "user_spend:last_amount")]["value"] == 7.0
        assert [f["store"] for f in body["fallback"]] == expected[: n + 1]
        stores[n].fail = True
    body = _read(http)
    assert body["store"] == "defaults"
    values = [v for r in body["results"] for v in r["features"].values()]
    assert {(v["status"], v["store"]) for v in values} == {("default", "defaults")}
    assert {v["value"] for v in values} == {0, None}


def test_breaker_opens_skips_the_store_then_probes_and_closes() -> None:
    stores, clock, http = _chain()
    redis = stores[0]
    redis.fail, redis.error = True, StoreTimeout
    for _ in range(2):  # min_calls=2 failures at rate 1.0 open it
        assert _read(http)["store"] == "dynamodb-us-east"
    breakers = http.service.chain.steps[0].breaker
    assert breakers.state is BreakerState.OPEN
    calls = len(redis.calls)
    body = _read(http)
    assert len(redis.calls) == calls, "an open breaker never touches the store"
    assert body["fallback"][0] == {"store": "redis-us-east", "outcome": "circuit_open"}

    clock.advance(2.0)
    assert breakers.state is BreakerState.HALF_OPEN
    _read(http)  # the probe fails: open again
    assert breakers.state is BreakerState.OPEN and len(redis.calls) == calls + 1

    clock.advance(2.0)
    redis.fail = False
    assert _read(http)["store"] == "redis-us-east"  # the probe succeeds
    assert breakers.state is BreakerState.CLOSED


def test_timeouts_come_from_the_remaining_budget() -> None:
    stores, _, http = _chain()
    stores[0].fail = True
    _read(http, deadline_ms=40)
    # Redis: min(cap 50 ms, 34% of 40 ms); DynamoDB: min(cap 500 ms, 34% of what is left).
    assert abs(stores[0].timeouts[0] - 0.0136) < 1e-9
    assert abs(stores[1].timeouts[0] - 0.0136) < 1e-9
    _read(http, deadline_ms=1_000)
    assert stores[0].timeouts[1] == 0.05


def test_an_incomplete_redis_is_skipped_without_tripping_its_breaker_and_read_once_ready() -> None:
    stores, _, http = _chain()
    stores[0].fail, stores[0].error = True, StoreNotReady  # rehydrating: it answers "not ready"
    for _ in range(6):  # more than the breaker's min_calls: a failure count would open it
        body = _read(http)
        assert body["store"] == "dynamodb-us-east" and _stores_of(body) == {"dynamodb-us-east"}
        assert body["fallback"][0] == {"store": "redis-us-east", "outcome": "StoreNotReady"}
    assert http.service.chain.breakers()["redis-us-east"] == BreakerState.CLOSED.value
    stores[0].fail = False  # the sink marked it ready
    assert _read(http)["store"] == "redis-us-east"


def test_warming_opens_the_home_stores_connections_at_once_and_touches_nothing_else() -> None:
    stores, _, http = _chain()
    stores[0].delay_s = 0.02  # long enough for every read to be open at the same time
    assert asyncio.run(http.warm()) == 4  # the config's max_in_flight
    assert stores[0].peak_in_flight == 4
    assert stores[0].calls == [["fl:default:readiness:v1:probe"]] * 4
    assert all(not s.calls for s in stores[1:])
    assert set(http.service.chain.breakers().values()) == {BreakerState.CLOSED.value}


@pytest.mark.parametrize("error", [StoreTimeout, StoreNotReady])
def test_warming_counts_a_store_that_answered_even_if_incomplete(error: type[Exception]) -> None:
    stores, _, http = _chain()
    stores[0].fail, stores[0].error = True, error
    assert asyncio.run(http.warm()) == (4 if error is StoreNotReady else 0)


def test_a_dead_or_hung_home_store_does_not_stop_the_replica_starting() -> None:
    stores, _, http = _chain()
    stores[0].fail = True  # refused: the replica starts all the same, its breaker untouched
    assert asyncio.run(http.warm()) == 0
    assert http.service.chain.breakers()["redis-us-east"] == BreakerState.CLOSED.value
    stores[0].fail, stores[0].delay_s = False, 30.0  # hung: given up at the budget, not 30 s
    started = time.monotonic()
    assert asyncio.run(http.warm(budget_s=0.05)) == 0
    assert time.monotonic() - started < 10.0
    stores[0].delay_s = 0.0
    assert _read(http)["store"] == "redis-us-east"


class _MarkerReader:
    """Stands in for AsyncRedisTileReader: records which read the store adapter asks for."""

    def __init__(self) -> None:
        self.ready_reads: list[list[str]] = []

    async def get_all_ready(self, keys: Any, deadline: Any) -> dict[str, dict[str, bytes]]:
        self.ready_reads.append(list(keys))
        raise StoreNotReady("redis-us-east: store marker missing")


def test_the_redis_store_reads_the_marker_with_the_tiles() -> None:
    reader = _MarkerReader()
    store = RedisStore(reader, "redis-us-east", FakeClock())  # type: ignore[arg-type]
    try:
        asyncio.run(store.get_all(["fl:k"], 0.05))
    except StoreNotReady:
        pass
    else:
        raise AssertionError("an incomplete Redis must not answer")
    assert reader.ready_reads == [["fl:k"]]


def test_a_failing_store_is_logged_once_per_interval_with_the_count_it_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stores, clock, http = _chain()
    stores[0].fail, stores[0].error = True, StoreTimeout
    with caplog.at_level(logging.WARNING, logger="serve_apps.fallback"):
        for _ in range(2):  # two failures inside one interval (then the breaker opens)
            _read(http)
        clock.advance(5.0)
        _read(http)  # the half-open probe fails too: logged, with the one skipped before
    lines = [r.getMessage() for r in caplog.records if "redis-us-east" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].endswith("(0 more failures not logged)")
    assert lines[1].endswith("(1 more failures not logged)")


def test_a_step_cap_grows_with_the_keys_read_within_the_budget_share() -> None:
    """Reading 100 entities is not the same call as reading one: a fixed cap made a healthy but
    busy Redis look dead to big requests, opened its breaker and served defaults."""
    store = FakeStore("redis-us-east")
    clock = FakeClock()
    policy = BreakerSettings().policy()
    step = Step(store, CircuitBreaker(store.name, clock, policy), 0.05, 0.34, per_key_s=0.001)
    chain = FallbackChain([step], clock)
    asyncio.run(chain.read([f"k{i}" for i in range(100)], Deadline(10.0, clock)))
    asyncio.run(chain.read(["k0"], Deadline(10.0, clock)))
    asyncio.run(chain.read([f"k{i}" for i in range(100)], Deadline(0.1, clock)))
    assert store.timeouts[0] == pytest.approx(0.15)  # 50 ms + 100 x 1 ms
    assert store.timeouts[1] == pytest.approx(0.051)
    assert store.timeouts[2] == pytest.approx(0.1)  # the last step: capped by the whole budget


def test_a_timeout_that_fired_late_sheds_the_request_and_spares_the_breaker() -> None:
    """A store timeout that fires long after it was due means the replica's loop is overloaded:
    blaming the store opened every breaker and answered with defaults; now it is a 503."""
    stores, clock, http = _chain()
    redis = stores[0]
    redis.fail, redis.error = True, StoreTimeout
    calls = redis.get_all

    async def late(keys: Any, timeout_s: float) -> Any:
        clock.advance(timeout_s + 0.2)  # the timeout's callback ran 200 ms late
        return await calls(keys, timeout_s)

    redis.get_all = late  # type: ignore[method-assign]

    async def chunks():  # type: ignore[no-untyped-def]
        yield orjson.dumps({"entities": {"user": ["u_1"]}, "features": REFS[:1]})

    for _ in range(5):
        status, headers, out = asyncio.run(
            http.handle("POST", "/v1/features", {"x-api-key": READ_KEY}, chunks)
        )
        assert status == 503 and orjson.loads(out)["error"] == "overloaded"
        assert dict(headers).get("retry-after") in {"1", "2", "3"}  # 1 s plus jitter
    assert http.service.chain.steps[0].breaker.state is BreakerState.CLOSED
    assert not stores[1].calls, "an overloaded replica does not add fallback reads"
    redis.get_all = calls  # type: ignore[method-assign]
    stores[0].fail = True  # on time: a real store failure, the chain goes on as before
    assert _read(http)["store"] == "dynamodb-us-east"


def test_a_timeout_while_the_loop_lags_sheds_the_request_and_spares_the_breaker() -> None:
    """Under a flood the loop ran 20-100 ms late on every turn: a healthy Redis's replies timed
    out although no timer fired very late, every breaker opened and ~60 % of accepted answers
    were defaults. A timeout while the loop lags is now the replica's fault: a 503."""
    clock = FakeClock()
    policy = BreakerSettings(min_calls=1, window_calls=2).policy()
    redis, dynamodb = FakeStore("redis-us-east", fail=True, error=StoreTimeout), FakeStore("d")
    steps = [
        Step(store, CircuitBreaker(store.name, clock, policy), 0.05, 0.34)
        for store in (redis, dynamodb)
    ]
    lagging = [True]
    chain = FallbackChain(steps, clock, busy=lambda: lagging[0])
    for _ in range(3):
        with pytest.raises(Overloaded):
            asyncio.run(chain.read(["k"], Deadline(1.0, clock)))
    assert steps[0].breaker.state is BreakerState.CLOSED
    assert not dynamodb.calls, "an overloaded replica does not add fallback reads"
    lagging[0] = False  # the loop is on time again: the same timeout is the store's
    assert asyncio.run(chain.read(["k"], Deadline(1.0, clock))).store == "d"
    assert steps[0].breaker.state is BreakerState.OPEN


def _outage_chain(lagging: list[bool]) -> tuple[FallbackChain, list[FakeStore], FakeClock]:
    """Local Redis dead (fails at once), local DynamoDB timing out, the other region healthy."""
    clock = FakeClock()
    policy = BreakerSettings(min_calls=1, window_calls=2).policy()
    stores = [
        FakeStore("redis-us-east", fail=True),
        FakeStore("dynamodb-us-east", fail=True, error=StoreTimeout),
        FakeStore("redis-eu-west"),
    ]
    steps = [Step(s, CircuitBreaker(s.name, clock, policy), 0.05, 0.34) for s in stores]
    return FallbackChain(steps, clock, busy=lambda: lagging[0]), stores, clock


def test_in_an_outage_a_timeout_while_the_loop_lags_goes_on_down_the_chain() -> None:
    """redis-kill: the local Redis died, the local DynamoDB read timed out while the replica's
    loop lagged (its boto3 threads share the GIL), and the replica shed the request although the
    other region's Redis would have answered: a dead Redis became client errors. Now the request
    goes on, and the lagged timeout is recorded on no breaker."""
    chain, stores, clock = _outage_chain([True])
    result = asyncio.run(chain.read(["k"], Deadline(1.0, clock)))
    assert result.store == "redis-eu-west"
    assert result.tried == [
        ("redis-us-east", "StoreUnavailable"),
        ("dynamodb-us-east", "loop_lagged"),
        ("redis-eu-west", "ok"),
    ]
    breakers = chain.breakers()
    assert breakers["dynamodb-us-east"] == BreakerState.CLOSED.value
    assert breakers["redis-us-east"] == BreakerState.OPEN.value  # its own failure counts
    # The next read skips the open local Redis: the DynamoDB timeout is still not the store's.
    assert asyncio.run(chain.read(["k"], Deadline(1.0, clock))).store == "redis-eu-west"
    assert chain.breakers()["dynamodb-us-east"] == BreakerState.CLOSED.value
    assert len(stores[1].calls) == 2


def test_in_an_outage_a_lagging_loop_with_no_store_answering_sheds_instead_of_defaults() -> None:
    """Defaults would be a wrong answer caused by the replica's own slowness: it is a 503."""
    chain, stores, clock = _outage_chain([True])
    stores[2].fail, stores[2].error = True, StoreTimeout
    with pytest.raises(Overloaded):
        asyncio.run(chain.read(["k"], Deadline(1.0, clock)))
    assert chain.breakers()["redis-eu-west"] == BreakerState.CLOSED.value
    # On time, the same timeouts are the stores': nothing answers, so defaults, breakers open.
    chain, stores, clock = _outage_chain([False])
    stores[2].fail, stores[2].error = True, StoreTimeout
    result = asyncio.run(chain.read(["k"], Deadline(1.0, clock)))
    assert result.fields is None and result.store == "defaults"
    assert chain.breakers()["dynamodb-us-east"] == BreakerState.OPEN.value


class _AbandoningStore:
    """Times out every call, leaving a pending call the test resolves (or never does)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending: list[asyncio.Future[Any]] = []

    async def get_all(self, keys: Any, timeout_s: float) -> Any:
        call: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(call)
        raise AbandonedCall(f"{self.name}: no answer in {timeout_s}s", call)


def _abandoning_chain(clock: FakeClock) -> tuple[FallbackChain, _AbandoningStore]:
    policy = BreakerSettings(min_calls=2, window_calls=4).policy()
    slow, backup = _AbandoningStore("redis-us-east"), FakeStore("dynamodb-us-east")
    steps = [
        Step(slow, CircuitBreaker(slow.name, clock, policy), 0.05, 0.34),  # type: ignore[arg-type]
        Step(backup, CircuitBreaker(backup.name, clock, policy), 0.5, 0.34),
    ]
    return FallbackChain(steps, clock, verdict_after_s=0.05), slow


def test_an_abandoned_call_is_judged_by_its_fate_slow_is_not_dead() -> None:
    """Judged at the timeout, a box short of CPU for 100 ms opened every breaker for 2 s and the
    replica answered defaults. A store that answers late is alive while it also answers in time
    now and then; one silent past the verdict delay, or failing, is not."""
    clock = FakeClock()
    chain, slow = _abandoning_chain(clock)
    breaker = chain.steps[0].breaker
    breaker.record_success()  # an answer in time, just before the machine got busy

    async def scenario() -> None:
        for _ in range(3):  # each request moves on to the next store at once
            result = await chain.read(["k"], Deadline(1.0, clock))
            assert result.store == "dynamodb-us-east"
            assert result.tried[0] == ("redis-us-east", "AbandonedCall")
        for call in slow.pending:
            call.set_result([])  # the late answers land
        await asyncio.sleep(0.1)
        assert breaker.state is BreakerState.CLOSED, "slow but answering: not dead"
        for _ in range(2):
            await chain.read(["k"], Deadline(1.0, clock))
        slow.pending[-1].set_exception(ConnectionError("reset"))  # the other stays silent
        await asyncio.sleep(0.1)
        assert breaker.state is BreakerState.OPEN

    asyncio.run(scenario())
    assert chain.timeouts == 5


def test_a_store_slower_than_its_timeout_on_every_call_is_skipped() -> None:
    """A Redis 150 ms away (a degraded link) answers every read, each one after the read moved
    on: every request paid its timeout first. A window of nothing but slow calls opens the
    breaker, and the next reads go straight to the next store."""
    clock = FakeClock()
    chain, slow = _abandoning_chain(clock)
    breaker = chain.steps[0].breaker

    async def scenario() -> None:
        for _ in range(2):
            await chain.read(["k"], Deadline(1.0, clock))
        for call in slow.pending:
            call.set_result([])
        await asyncio.sleep(0.1)
        assert breaker.state is BreakerState.OPEN
        result = await chain.read(["k"], Deadline(1.0, clock))
        assert result.tried[0] == ("redis-us-east", "circuit_open")
        assert result.store == "dynamodb-us-east"

    asyncio.run(scenario())


def test_reads_cancelled_while_a_store_hangs_do_not_heal_its_breaker() -> None:
    """Health checks and clients that give up before a hung store answers cancel the read; were
    that a success, the store's breaker would never open while every caller times out on it."""
    clock = FakeClock()
    policy = BreakerSettings(min_calls=2, window_calls=4).policy()
    hung = FakeStore("redis-us-east", delay_s=60.0)
    breaker = CircuitBreaker(hung.name, clock, policy)
    chain = FallbackChain([Step(hung, breaker, 30.0, 1.0)], clock)

    async def scenario() -> None:
        breaker.record_failure()
        for _ in range(3):
            read = asyncio.ensure_future(chain.read(["k"], Deadline(60.0, clock)))
            await asyncio.sleep(0.01)
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
        breaker.record_failure()

    asyncio.run(scenario())
    assert breaker.state is BreakerState.OPEN


def test_a_silent_call_is_not_judged_while_the_loop_lags_but_a_hung_store_still_is() -> None:
    """A lagging loop runs the verdict timer before the reply it already holds is parsed: the
    verdict waits for the loop (bounded), so a busy replica does not open a healthy breaker."""
    clock = FakeClock()
    policy = BreakerSettings(min_calls=1, window_calls=2).policy()
    hung = _AbandoningStore("redis-us-east")
    steps = [Step(hung, CircuitBreaker(hung.name, clock, policy), 0.05, 0.34)]  # type: ignore[arg-type]
    lagging = [False]
    chain = FallbackChain(steps, clock, busy=lambda: lagging[0], verdict_after_s=0.03)

    async def scenario() -> None:
        await chain.read(["k"], Deadline(1.0, clock))  # abandoned while the loop is on time
        lagging[0] = True
        await asyncio.sleep(0.1)
        assert steps[0].breaker.state is BreakerState.CLOSED, "no verdict while lagging"
        lagging[0] = False
        await asyncio.sleep(0.1)
        assert steps[0].breaker.state is BreakerState.OPEN, "still silent: hung, judged"

    asyncio.run(scenario())


def test_the_admin_view_names_each_stores_last_failure_without_its_message() -> None:
    """What an operator needs when breakers open under load: which error, how long ago."""
    stores, clock, http = _chain()
    stores[0].fail = True  # StoreUnavailable("redis-us-east is down")
    _read(http)
    clock.advance(1.5)
    status, _, raw = asyncio.run(
        http.handle("GET", "/v1/stores", {"x-api-key": ADMIN_KEY}, _no_body)
    )
    body = orjson.loads(raw)
    assert status == 200
    assert body["last_failures"] == {"redis-us-east": {"error": "StoreUnavailable", "age_s": 1.5}}
    assert b"is down" not in raw, "no exception text in a response"
    assert body["in_flight"] == {"limit": http.limits.max_in_flight, "now": 1}


async def _no_body():  # type: ignore[no-untyped-def]
    yield b""
