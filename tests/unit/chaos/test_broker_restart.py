"""The broker-restart drill's judgements on a hand-made timeline: reads during the fault, the
consumers' progress while the broker is down and after it."""

from __future__ import annotations

import math

from chaos.drills import broker_restart
from chaos.load import Sample
from chaos.report import Verdict
from chaos.timeline import OK, Timeline


def _timeline(events_in: list[tuple[float, float]], samples: list[Sample]) -> Timeline:
    timeline = Timeline(monotonic=lambda: 0.0)
    timeline.gauges["events in"] = events_in
    timeline.samples = samples
    return timeline


def _reads(statuses: list[int]) -> list[Sample]:
    return [
        Sample(sent_s=10.0 + i * 0.1, latency_s=0.002, status=s) for i, s in enumerate(statuses)
    ]


def test_reads_through_the_fault_pass_at_one_percent_errors_and_fail_above() -> None:
    for errors, passed in ((1, True), (2, False)):
        verdict = Verdict()
        timeline = _timeline([], _reads([OK] * (100 - errors) + [500] * errors))
        broker_restart._judge_reads(timeline, verdict, killed_at=10.0, end_s=30.0)
        assert [c.passed for c in verdict.criteria] == [passed]
        assert verdict.figures["reads_while_down"] == 100


def test_no_read_during_the_fault_is_a_failure_not_a_pass() -> None:
    verdict = Verdict()
    broker_restart._judge_reads(_timeline([], _reads([OK] * 10)), verdict, 50.0, 60.0)
    assert [c.passed for c in verdict.criteria] == [False]


def test_progress_is_read_from_the_consumers_counter() -> None:
    timeline = _timeline([(9.0, 100.0), (11.0, 100.0), (12.0, 180.0), (25.0, 400.0)], [])
    assert broker_restart._first_progress(timeline, 10.0) == 12.0
    assert broker_restart._progress(timeline, 10.0, 20.0) == 80.0
    assert math.isnan(broker_restart._first_progress(timeline, 13.0))
    assert math.isnan(broker_restart._progress(timeline, 30.0, 40.0))
