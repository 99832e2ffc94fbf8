"""Shedding on the event loop's lag (serve_apps.overload) and its use by the HTTP handler."""

from __future__ import annotations

import asyncio
import time

import pytest

from features.errors import ConfigError
from serve_apps.overload import LagGauge, LagTicker
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
    assert headers["retry-after"] == "1"
    assert not store.calls, "a shed request costs no store read"
    assert _call(http, "/v1/health", method="GET", key=None)[0] == 200
    gauge.lag_s = 0.0
    assert _call(http, "/v1/features", body)[0] == 200
