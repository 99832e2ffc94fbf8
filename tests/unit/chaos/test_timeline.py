"""Per-second statistics and windows: what every drill's verdict is computed from."""

from __future__ import annotations

import math

from chaos.drills.base import gauge_back_to
from chaos.load import TRANSPORT_ERROR, Sample
from chaos.timeline import (
    PROBE_ERRORS,
    Sampler,
    Timeline,
    error_rate,
    per_second,
    percentile,
    within,
)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert math.isnan(percentile([], 0.5))


def test_per_second_counts_errors_shed_and_stores_and_times_only_successes() -> None:
    samples = [
        Sample(0.1, 0.002, 200, "redis-us-east"),
        Sample(0.5, 0.004, 200, "dynamodb-us-east"),
        Sample(0.9, 1.500, 503, "", retry_after=True),
        Sample(0.95, 0.001, 503, "", shed_by="loop-lag"),
        Sample(1.2, 0.003, TRANSPORT_ERROR),
    ]
    first, second = per_second(samples)
    assert (first.t_s, first.requests, first.errors, first.shed) == (0, 4, 2, 2)
    assert first.shed_by == {"serve": 1, "loop-lag": 1}, "which gate shed, Serve's own unnamed"
    assert first.stores == {"redis-us-east": 1, "dynamodb-us-east": 1}
    assert first.p99_ms == 4.0, "a shed 503's latency is not a served latency"
    assert (second.requests, second.errors, second.error_rate) == (1, 1, 1.0)


def test_within_and_error_rate_select_the_fault_window() -> None:
    samples = [Sample(t, 0.001, 200 if t < 5 else 0) for t in (1.0, 4.9, 5.0, 7.0, 9.0)]
    during = within(samples, 5.0, 9.0)
    assert [s.sent_s for s in during] == [5.0, 7.0]
    assert error_rate(during) == 1.0
    assert error_rate(within(samples, 0, 5)) == 0.0
    assert error_rate([]) == 0.0


def test_timeline_uses_the_injected_clock_and_shifts_load_samples() -> None:
    clock = iter([100.0, 103.0, 104.5])
    timeline = Timeline(monotonic=lambda: next(clock))
    timeline.record("lag", 7)
    window = timeline.fault("kill", 1.0)
    assert timeline.gauges["lag"] == [(3.0, 7.0)]
    assert (window.start_s, window.end_s) == (1.0, 4.5)
    timeline.add_load([Sample(0.5, 0.01, 200)], started_at_monotonic=102.0)
    assert timeline.samples[0].sent_s == 2.5


def test_a_failing_probe_is_counted_not_fatal() -> None:
    timeline = Timeline()
    calls = iter([{"lag": 1.0}, RuntimeError("head unreachable"), {"lag": 2.0}])

    def probe() -> dict[str, float]:
        value = next(calls, {"lag": 2.0})
        if isinstance(value, Exception):
            raise value
        return value

    with Sampler(timeline, probe, interval_s=0.01) as sampler:
        while len(timeline.gauges.get("lag", [])) < 2:
            pass
    assert sampler.probe_errors == 1
    assert [v for _, v in timeline.gauges["lag"][:2]] == [1.0, 2.0]
    assert [v for _, v in timeline.gauges[PROBE_ERRORS]] == [1.0]  # the report shows it


def test_a_gauge_back_to_its_level_is_timed_from_the_given_moment() -> None:
    """dynamodb-down's ``sink_caught_up_s``: the sink's lag back at 0 after the fault."""
    timeline = Timeline()
    timeline.gauges["lag"] = [(1.0, 0.0), (5.0, 900.0), (10.0, 400.0), (12.5, 0.0), (14.0, 0.0)]
    assert gauge_back_to(timeline, "lag", 0, after_s=8.0) == 4.5  # not the 0 before the fault
    assert gauge_back_to(timeline, "lag", 500, after_s=8.0) == 2.0
    assert math.isnan(gauge_back_to(timeline, "lag", 0, after_s=20.0))  # never seen again
    assert math.isnan(gauge_back_to(timeline, "missing", 0, after_s=0.0))
