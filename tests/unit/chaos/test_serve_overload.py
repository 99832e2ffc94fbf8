"""serve-overload's diagnostic splits of shed latency: 503s sent while a replica was being
replaced are told apart from the rest, on the timeline's clock, and each layer's 503s (front
door, Serve, our gates) and each gate's from the others'."""

from __future__ import annotations

import math

from chaos.drills.serve_overload import _report_shed_by_gate, _report_shed_by_window
from chaos.load import Sample
from chaos.report import Verdict


def _shed(
    sent_s: float, latency_ms: float, shed_by: str = "loop-lag", served_by: str = "us-east"
) -> Sample:
    return Sample(
        sent_s,
        latency_ms / 1e3,
        503,
        retry_after=1.0,
        error="overloaded",
        shed_by=shed_by,
        served_by=served_by,
    )


def test_shed_latency_is_split_at_the_replacement_window() -> None:
    # The flood's clock starts 2 s after the timeline's; the kill is at 10 s and takes 3 s.
    shed = [_shed(9.0, 900.0), _shed(8.5, 800.0), _shed(3.0, 40.0), _shed(12.0, 50.0)]
    verdict = Verdict()
    _report_shed_by_window(verdict, shed, killed_at=10.0, replaced_s=3.0, shift_s=2.0)
    assert verdict.figures["shed_p99_during_replacement_ms"] == 900.0
    assert verdict.figures["shed_p99_outside_replacement_ms"] == 50.0


def test_a_replica_never_replaced_leaves_no_window() -> None:
    verdict = Verdict()
    _report_shed_by_window(
        verdict, [_shed(1.0, 30.0)], killed_at=0.5, replaced_s=math.nan, shift_s=0.0
    )
    assert verdict.figures["shed_p99_during_replacement_ms"] is None  # no 503 in it
    assert verdict.figures["shed_p99_outside_replacement_ms"] == 30.0


def test_shed_latency_is_split_by_the_layer_and_the_gate_that_refused() -> None:
    shed = [
        _shed(1.0, 120.0, "loop-lag"),
        _shed(1.1, 5.0, "in-flight"),
        _shed(1.2, 7.0, "in-flight"),
        _shed(1.3, 400.0, "late-read"),
        _shed(1.4, 2.0, ""),  # Serve's own backpressure answer names no gate
        _shed(1.5, 101.0, "", served_by="front-door"),  # the door's own refusal
        _shed(1.6, 103.0, "", served_by="front-door"),
    ]
    verdict = Verdict()
    _report_shed_by_gate(verdict, shed)
    figures = verdict.figures
    assert (figures["shed_front_door_count"], figures["shed_front_door_p99_ms"]) == (2, 103.0)
    assert (figures["shed_serve_count"], figures["shed_serve_p99_ms"]) == (1, 2.0)
    assert (figures["shed_gates_count"], figures["shed_gates_p99_ms"]) == (4, 400.0)
    assert (figures["shed_loop_lag_count"], figures["shed_loop_lag_p99_ms"]) == (1, 120.0)
    assert (figures["shed_in_flight_count"], figures["shed_in_flight_p99_ms"]) == (2, 7.0)
    assert (figures["shed_late_read_count"], figures["shed_late_read_p99_ms"]) == (1, 400.0)
