"""Open-loop pacing with a fake clock and a fake sleep: nothing here really sleeps."""

from __future__ import annotations

import time

import pytest

from cluster.events.pacing import Pacer
from cluster.events.producer import ProducerSettings
from cluster.events.runner import run_generator
from cluster.events.synth import GeneratorConfig
from tests.unit.events.fakes import FakeClock, FakeKafkaProducer


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(seconds: float) -> None:
        raise AssertionError(f"real sleep({seconds})")

    monkeypatch.setattr(time, "sleep", forbidden)


def test_the_schedule_is_one_event_every_one_over_rate_seconds() -> None:
    pacer = Pacer(rate_per_s=100.0, total=1_000, interval_s=0.05)
    assert pacer.batch == 5
    assert pacer.scheduled(0.0) == 1
    assert pacer.scheduled(0.0999) == 10
    assert pacer.scheduled(0.1) == 11
    assert pacer.scheduled(1e6) == 1_000
    assert pacer.due(0.1, sent=4) == 7
    assert pacer.wait_s(0.1, sent=11) == pytest.approx(0.05)
    assert pacer.wait_s(10.0, sent=11) == 0.0
    assert pacer.wait_s(0.0, sent=1_000) == 0.0


def test_a_producer_that_fell_behind_catches_up_in_bounded_bursts() -> None:
    pacer = Pacer(rate_per_s=10_000.0, total=100_000, interval_s=0.05, max_burst=2_000)
    assert pacer.due(5.0, sent=0) == 2_000


def test_invalid_pacing_is_refused() -> None:
    with pytest.raises(ValueError):
        Pacer(rate_per_s=0.0, total=1)


def paced_run(
    rate: float, events: int, *, send_cost_s: float = 0.0
) -> tuple[FakeClock, dict[int, float]]:
    clock = FakeClock()
    sent_at: dict[int, float] = {}

    def record(key: bytes, value: bytes) -> None:
        sent_at[len(sent_at)] = clock.t
        clock.t += send_cost_s

    fake = FakeKafkaProducer(on_send=record)
    config = GeneratorConfig(max_events=events, rate_per_s=rate)
    report = run_generator(
        config,
        "unused:9092",
        "fl.test",
        "/dev/null",
        settings=ProducerSettings(pacing_interval_s=0.05, max_burst_events=500),
        clock=clock.clock(),
        producer_factory=lambda settings, bootstrap: fake,
    )
    assert report.acked == events == len(sent_at)
    return clock, sent_at


def test_events_are_sent_on_schedule_in_batches_with_one_sleep_per_batch() -> None:
    clock, sent_at = paced_run(rate=1_000.0, events=2_000)
    for seq, t in sent_at.items():
        assert seq / 1_000.0 - 1e-9 <= t <= seq / 1_000.0 + 0.05 + 1e-9, seq
    assert len(clock.sleeps) <= 2_000 / 50 + 1
    assert clock.t == pytest.approx(1.999, abs=0.06)


def test_a_slow_sender_never_sleeps_and_still_sends_everything() -> None:
    clock, _ = paced_run(rate=1_000.0, events=2_000, send_cost_s=0.002)
    assert len(clock.sleeps) <= 1  # only before the first full batch was due
    assert clock.t == pytest.approx(4.0, abs=0.05)  # 2 ms a send, back to back


def test_the_report_gives_the_achieved_rate_and_counts_by_kind() -> None:
    clock = FakeClock()
    config = GeneratorConfig(
        max_events=5_000, rate_per_s=2_500.0, malformed_share=0.1, late_warmup_events=0
    )
    report = run_generator(
        config,
        "unused:9092",
        "fl.test",
        "/dev/null",
        clock=clock.clock(),
        producer_factory=lambda settings, bootstrap: FakeKafkaProducer(),
    )
    assert sum(report.counts_by_kind.values()) == report.acked == report.sent == 5_000
    assert report.counts_by_kind["valid"] > 4_000 and report.failed == 0
    assert report.events_per_s == pytest.approx(2_500.0, rel=0.03)
