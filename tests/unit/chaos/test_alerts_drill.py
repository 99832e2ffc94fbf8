"""The alerts drill's judgement (chaos/drills/alerts.py) on alert episodes built from API answers:
fired or not, seconds from the fault to firing and from recovery to resolved, baseline alerts."""

from __future__ import annotations

import math
from typing import Any

from chaos.drills.alerts import BREAKER, LAG, Window, _judge, _judge_baseline, _report_all
from chaos.prometheus import AlertLog, parse_alerts
from chaos.report import Verdict


def _poll(log: AlertLog, t_s: float, *alerts: tuple[str, str, dict[str, str]]) -> None:
    payload: dict[str, Any] = {
        "status": "success",
        "data": {
            "alerts": [
                {"labels": {"alertname": name, **labels}, "state": state, "value": "1"}
                for name, state, labels in alerts
            ]
        },
    }
    log.observe(t_s, parse_alerts(payload))


BREAKER_LABELS = {"region": "us-east", "store": "redis-us-east", "severity": "ticket"}


def _checks(verdict: Verdict) -> dict[str, bool]:
    return {c.name: c.passed for c in verdict.criteria}


def test_an_alert_that_fired_in_the_fault_and_left_after_it_passes_with_its_times() -> None:
    log = AlertLog()
    _poll(log, 10.0)  # the fault begins at 10 s
    _poll(log, 12.0, ("FreshlineBreakerOpen", "pending", BREAKER_LABELS))
    _poll(log, 13.5, ("FreshlineBreakerOpen", "firing", BREAKER_LABELS))
    _poll(log, 14.0, ("FreshlineBreakerOpen", "firing", BREAKER_LABELS))
    _poll(log, 20.5)
    verdict = Verdict()
    window = Window(began_s=10.0, ended_s=14.0, resolved_s=20.5)
    _judge(verdict, log, BREAKER, window, during="while Redis hangs", fire_within_s=30)
    assert all(_checks(verdict).values()), verdict.criteria
    assert verdict.figures["breaker_open_fired"] is True
    assert verdict.figures["breaker_open_fire_s"] == 3.5
    assert verdict.figures["breaker_open_resolve_s"] == 6.5
    assert verdict.figures["breaker_open_fault_s"] == 4.0


def test_an_alert_that_never_fired_fails_both_criteria() -> None:
    log = AlertLog()
    _poll(log, 10.0, ("FreshlineSinkLagging", "pending", {"region": "eu-west", "store": "redis"}))
    _poll(log, 40.0)
    verdict = Verdict()
    window = Window(began_s=10.0, ended_s=40.0, resolved_s=math.nan)
    _judge(verdict, log, LAG, window, during="while writes stall", fire_within_s=90)
    assert not any(_checks(verdict).values())
    assert verdict.figures["sink_lagging_fired"] is False
    assert verdict.figures["sink_lagging_fire_s"] is None  # NaN is written as null


def test_firing_later_than_allowed_or_for_another_store_does_not_pass() -> None:
    log = AlertLog()
    other = {**BREAKER_LABELS, "store": "dynamodb-us-east"}
    _poll(log, 11.0, ("FreshlineBreakerOpen", "firing", other))
    _poll(
        log,
        50.0,
        ("FreshlineBreakerOpen", "firing", other),
        ("FreshlineBreakerOpen", "firing", BREAKER_LABELS),
    )
    _poll(log, 55.0)
    verdict = Verdict()
    window = Window(began_s=10.0, ended_s=50.0, resolved_s=55.0)
    _judge(verdict, log, BREAKER, window, during="while Redis hangs", fire_within_s=30)
    assert _checks(verdict) == {
        "FreshlineBreakerOpen fires while Redis hangs": False,
        "FreshlineBreakerOpen resolves after recovery": True,
    }
    assert verdict.figures["breaker_open_fire_s"] == 40.0


def test_an_alert_firing_before_the_first_fault_fails_the_baseline() -> None:
    quiet, noisy = AlertLog(), AlertLog()
    for log in (quiet, noisy):
        _poll(log, 1.0, ("FreshlineDefaultsServed", "pending", {"region": "us-east"}))
    _poll(quiet, 2.0)
    _poll(noisy, 2.0, ("FreshlineDefaultsServed", "firing", {"region": "us-east"}))
    passed = []
    for log in (quiet, noisy):
        verdict = Verdict()
        _judge_baseline(verdict, log, 0.0, 8.0)
        passed.append(verdict.criteria[0].passed)
    assert passed == [True, False]


def test_every_alert_that_fired_is_reported_against_its_fault() -> None:
    log = AlertLog()
    _poll(log, 21.0, ("FreshlineBreakerOpen", "firing", BREAKER_LABELS))
    _poll(log, 25.0)
    _poll(log, 45.0, ("FreshlineBreakerOpen", "firing", {"region": "us-east", "store": "d"}))
    _poll(log, 47.5)
    _poll(log, 62.0, ("FreshlineFreshnessTargetMissed", "firing", {"region": "eu-west"}))
    verdict = Verdict()
    _report_all(
        verdict,
        log,
        Window(began_s=20.0, ended_s=22.0, resolved_s=25.0),
        Window(began_s=40.0, ended_s=60.0, resolved_s=70.0),
    )
    assert verdict.notes == [
        "FreshlineBreakerOpen{region=us-east,store=redis-us-east}: fired 1.0 s into the Redis "
        "hang, gone 3.0 s after recovery",
        "FreshlineBreakerOpen{region=us-east,store=d}: fired 5.0 s into the stall, gone 2.5 s "
        "after firing, in the fault",
        "FreshlineFreshnessTargetMissed{region=eu-west}: fired 22.0 s into the stall, still "
        "firing at the end",
    ]
