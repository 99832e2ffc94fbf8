"""Shedding on the event loop's lag (serve_apps.overload) and its use by the HTTP handler."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from features.errors import ConfigError, StoreTimeout
from serve_apps.config import Limits
from serve_apps.exceptions import Overloaded
from serve_apps.http import ServingHttp
from serve_apps.overload import AdaptiveLimit, LagGauge, LagTicker
from tests.unit.serve_apps.fakes import FakeClock
from tests.unit.serve_apps.test_http import _call, _server


def test_one_late_tick_does_not_shed_but_a_sustained_lag_does_and_it_recovers() -> None:
    gauge = LagGauge(limit_s=0.1)
    gauge.observe(0.25)  # one slow request or a GC pause
    assert not gauge.overloaded() and gauge.worst_s == 0.25
    for _ in range(5):
        gauge.observe(0.2)
    assert gauge.overloaded()
    for _ in range(10):
        gauge.observe(0.0)
    assert not gauge.overloaded()


def test_a_zero_limit_measures_but_never_sheds_and_bad_settings_are_refused() -> None:
    gauge = LagGauge(limit_s=0.0)
    for _ in range(20):
        gauge.observe(5.0)
    assert gauge.lag_s > 4.0 and not gauge.overloaded()
    with pytest.raises(ConfigError, match="limit_s"):
        LagGauge(limit_s=-1.0)
    with pytest.raises(ConfigError, match="weight"):
        LagGauge(limit_s=0.1, weight=0.0)


def test_busy_is_a_lower_bar_than_shedding_and_zero_turns_it_off() -> None:
    gauge, never = LagGauge(limit_s=0.1, busy_s=0.02), LagGauge(limit_s=0.1)
    for g in (gauge, never):
        for _ in range(10):
            g.observe(0.05)  # late enough to blame ourselves for a timeout, not to shed
    assert gauge.busy() and not gauge.overloaded()
    assert not never.busy()
    with pytest.raises(ConfigError, match="busy_s"):
        LagGauge(limit_s=0.1, busy_s=-0.01)


def _refusals(limits: Limits, rng: random.Random, n: int) -> set[int]:
    http, _ = _server(limits=limits)
    late = LagTicker(LagGauge(limit_s=0.1, lag_s=0.5), FakeClock(), interval_s=3600.0)
    spread = ServingHttp(http.config, http.service, late, rng=rng)
    body = {"entities": {"user": ["u_1"]}, "features": ["user_spend:tx_count_1h"]}
    return {int(_call(spread, "/v1/features", body)[1]["retry-after"]) for _ in range(n)}


def test_retry_after_is_spread_so_refused_clients_do_not_come_back_together() -> None:
    """Clients that wait exactly what they are told would return as one wave a second."""
    assert _refusals(Limits(retry_after_s=2, retry_after_jitter_s=3), random.Random(3), 60) == {
        2,
        3,
        4,
        5,
    }
    assert _refusals(Limits(retry_after_s=2, retry_after_jitter_s=0), random.Random(3), 20) == {2}


def test_the_ticker_sees_a_blocked_loop() -> None:
    gauge = LagGauge(limit_s=0.1)
    ticker = LagTicker(gauge, time.monotonic, interval_s=0.01)

    async def scenario() -> None:
        ticker.ensure_started()
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # a callback that holds the loop for 200 ms
        await asyncio.sleep(0.03)

    asyncio.run(scenario())
    assert gauge.worst_s >= 0.15


def test_the_handler_sheds_reads_with_503_while_the_loop_is_late_but_answers_health() -> None:
    http, store = _server()
    gauge = LagGauge(limit_s=0.1, lag_s=0.5)
    http.lag = LagTicker(gauge, FakeClock(), interval_s=3600.0)
    body = {"entities": {"user": ["u_1"]}, "features": ["user_spend:tx_count_1h"]}
    status, headers, out = _call(http, "/v1/features", body)
    assert status == 503 and out["error"] == "overloaded"
    assert headers["retry-after"] in {"1", "2", "3"}  # retry_after_s 1 plus up to 2 s of jitter
    assert headers["x-freshline-shed"] == "loop-lag"
    assert not store.calls, "a shed request costs no store read"
    assert _call(http, "/v1/health", method="GET", key=None)[0] == 200
    gauge.lag_s = 0.0
    assert _call(http, "/v1/features", body)[0] == 200


def test_the_in_flight_limit_cuts_once_per_overload_and_climbs_back_while_healthy() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(max_limit=32, clock=clock, min_limit=4)
    started = [limit.acquire() for _ in range(32)]
    assert None not in started and limit.acquire() is None, "the 33rd is refused"
    clock.advance(0.05)
    for start in started:  # all 32 met the same overload: one cut, not 32
        limit.release(start, dropped=True)  # type: ignore[arg-type]
    assert limit.limit == pytest.approx(28.8) and limit.in_flight == 0
    for _ in range(40):  # each new overload cuts again, down to the floor
        clock.advance(0.05)
        limit.release(limit.acquire(), dropped=True)  # type: ignore[arg-type]
    assert limit.limit == 4.0
    for _ in range(4):
        assert limit.acquire() is not None
    assert limit.acquire() is None, "at the floor, only 4 in flight"
    for _ in range(600):  # healthy and using its limit: back up to the ceiling, never past it
        limit.release(clock(), dropped=False)
        while limit.acquire() is not None:
            pass
    assert limit.limit == 32.0 and limit.in_flight == 32


def test_an_idle_replica_does_not_grow_its_limit_and_bad_settings_are_refused() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(max_limit=32, clock=clock, min_limit=4)
    limit.release(limit.acquire(), dropped=True)  # type: ignore[arg-type]
    cut = limit.limit
    for _ in range(100):  # one request at a time: the limit is not what holds it back
        limit.release(limit.acquire(), dropped=False)  # type: ignore[arg-type]
    assert limit.limit == cut
    with pytest.raises(ConfigError, match="min_limit"):
        AdaptiveLimit(max_limit=4, clock=clock, min_limit=8)
    with pytest.raises(ConfigError, match="backoff"):
        AdaptiveLimit(max_limit=4, clock=clock, backoff=1.0)


def test_a_lagging_loop_shrinks_the_limit_but_slow_stores_and_bad_requests_do_not() -> None:
    """Requests that finish while the loop lags cut the limit; past it the handler answers 503
    before any store read. A store that times out is the chain's business (it answers from the
    next store; region-partition refused 8.5 % of such requests when it counted), and a client
    sending garbage does not shrink everyone else's limit."""
    http, store = _server()
    body = {"entities": {"user": ["u_1"]}, "features": ["user_spend:tx_count_1h"]}
    gauge = LagGauge(limit_s=0.1, busy_s=0.02)  # lagging, but not enough to shed outright
    http.lag = LagTicker(gauge, FakeClock(), interval_s=3600.0)
    clock = http.admission.clock
    for _ in range(10):
        assert _call(http, "/v1/features", {"entities": 3})[0] == 422
    store.fail, store.error = True, StoreTimeout
    for _ in range(10):
        clock.advance(0.05)  # type: ignore[attr-defined]
        assert _call(http, "/v1/features", body)[0] == 200  # the DynamoDB step answers
    assert http.admission.limit == http.limits.max_in_flight
    gauge.lag_s = 0.05
    for _ in range(10):
        clock.advance(0.05)  # type: ignore[attr-defined]
        assert _call(http, "/v1/features", body)[0] == 200
    assert http.admission.limit == http.limits.min_in_flight == 4
    http.admission.in_flight = 4  # four requests in flight already
    calls = len(store.calls)
    status, headers, out = _call(http, "/v1/features", body)
    assert status == 503 and out["error"] == "overloaded" and "retry-after" in headers
    assert len(store.calls) == calls, "a refused request costs no store read"


def test_a_read_the_chain_calls_the_replicas_own_overload_is_shed_as_late_read() -> None:
    """The chain raises Overloaded when a store timeout was the replica's lagging loop; the 503
    names that gate, so an operator (and serve-overload) can tell it from an admission refusal."""
    http, store = _server()
    store.fail, store.error = True, _overloaded
    body = {"entities": {"user": ["u_1"]}, "features": ["user_spend:tx_count_1h"]}
    status, headers, out = _call(http, "/v1/features", body)
    assert (status, out["error"], headers["x-freshline-shed"]) == (503, "overloaded", "late-read")
    assert store.calls, "admitted: the refusal came after a store read"


def _overloaded(message: str) -> Overloaded:
    return Overloaded(1.0, message)
