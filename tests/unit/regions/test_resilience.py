from __future__ import annotations

import pytest

from features.errors import ConfigError, StoreTimeout, StoreUnavailable
from regions.exceptions import CircuitOpen, DeadlineExceeded
from regions.resilience import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Deadline,
    ExponentialBackoff,
    RetryPolicy,
    no_jitter,
    step_timeout,
)
from tests.unit.regions.fakes import FakeClock

POLICY = BreakerPolicy(
    failure_rate_threshold=0.5, window_calls=10, window_s=30.0, min_calls=4, open_s=5.0
)


def _breaker(clock: FakeClock, policy: BreakerPolicy = POLICY) -> CircuitBreaker:
    return CircuitBreaker("redis-us-east", clock, policy)


def _state(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property, so that mypy does not narrow the state across clock moves.
    return breaker.state


def _trip(breaker: CircuitBreaker) -> None:
    for _ in range(2):
        breaker.record_success()
    for _ in range(2):
        breaker.record_failure()


# --- backoff ---------------------------------------------------------------------------------


def test_backoff_doubles_then_caps() -> None:
    backoff = ExponentialBackoff(base_s=0.01, cap_s=0.08, jitter=no_jitter)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]


def test_backoff_jitter_scales_and_is_clamped() -> None:
    assert ExponentialBackoff(0.1, 1.0, jitter=lambda: 0.5).delay(2) == pytest.approx(0.1)
    assert ExponentialBackoff(0.1, 1.0, jitter=lambda: 7.0).delay(1) == pytest.approx(0.1)
    assert ExponentialBackoff(0.1, 1.0, jitter=lambda: -1.0).delay(1) == 0.0


def test_backoff_huge_retry_count_stays_at_cap() -> None:
    assert ExponentialBackoff(0.01, 2.0, jitter=no_jitter).delay(10_000) == 2.0


def test_default_backoff_stays_within_cap() -> None:
    backoff = ExponentialBackoff()
    assert all(0.0 <= backoff.delay(n) <= backoff.cap_s for n in range(1, 50))


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (0.5, 0.1)])
def test_backoff_rejects_bad_bounds(base: float, cap: float) -> None:
    with pytest.raises(ConfigError):
        ExponentialBackoff(base, cap)


# --- retry -----------------------------------------------------------------------------------


def _flaky(failures: list[Exception]) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "ok"

    return calls, fn


def test_retry_recovers_with_growing_sleeps() -> None:
    clock = FakeClock()
    policy = RetryPolicy(4, ExponentialBackoff(0.1, 1.0, jitter=no_jitter))
    calls, fn = _flaky([StoreTimeout("t"), StoreUnavailable("u")])
    assert policy.run(fn, clock.sleep) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 3
    assert clock.slept == [0.1, 0.2]


def test_retry_gives_up_after_max_attempts_with_the_last_error() -> None:
    clock = FakeClock()
    policy = RetryPolicy(3, ExponentialBackoff(0.1, 1.0, jitter=no_jitter))
    calls, fn = _flaky([StoreTimeout("1"), StoreTimeout("2"), StoreTimeout("3"), StoreTimeout("4")])
    with pytest.raises(StoreTimeout, match="3"):
        policy.run(fn, clock.sleep)  # type: ignore[arg-type]
    assert len(calls) == 3
    assert len(clock.slept) == 2


def test_retry_does_not_retry_other_errors() -> None:
    clock = FakeClock()
    calls, fn = _flaky([ValueError("bad request")])
    with pytest.raises(ValueError, match="bad request"):
        RetryPolicy().run(fn, clock.sleep)  # type: ignore[arg-type]
    assert len(calls) == 1
    assert clock.slept == []


def test_retry_never_sleeps_past_the_deadline() -> None:
    clock = FakeClock()
    policy = RetryPolicy(10, ExponentialBackoff(0.1, 1.0, jitter=no_jitter))
    calls, fn = _flaky([StoreTimeout(str(n)) for n in range(10)])
    with pytest.raises(StoreTimeout):
        policy.run(fn, clock.sleep, Deadline(0.35, clock))  # type: ignore[arg-type]
    assert clock.slept == [0.1, 0.2]  # 0.4 would overrun the 0.05 s left
    assert len(calls) == 3


# --- circuit breaker -------------------------------------------------------------------------


def test_breaker_stays_closed_below_min_calls() -> None:
    breaker = _breaker(FakeClock())
    for _ in range(3):
        breaker.record_failure()
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.allow()


def test_breaker_opens_at_the_threshold_and_rejects() -> None:
    breaker = _breaker(FakeClock())
    breaker.record_success()
    breaker.record_success()
    breaker.record_failure()
    assert _state(breaker) is BreakerState.CLOSED  # 1/3 failed, and under min_calls
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN  # 2/4 = threshold
    assert not breaker.allow()


def test_breaker_opens_when_every_call_of_the_window_was_slow() -> None:
    breaker = _breaker(FakeClock())
    for _ in range(3):
        breaker.record_slow()
    assert _state(breaker) is BreakerState.CLOSED  # under min_calls
    breaker.record_slow()
    assert _state(breaker) is BreakerState.OPEN  # 4/4 slow: each read paid a timeout for nothing


def test_breaker_stays_closed_while_some_calls_answer_in_time() -> None:
    breaker = _breaker(FakeClock())
    breaker.record_success()
    for _ in range(9):
        breaker.record_slow()  # 9/10 slow: a busy machine, and the store still answers in time
    assert _state(breaker) is BreakerState.CLOSED
    breaker.record_slow()  # the one success has left the 10-call window
    assert _state(breaker) is BreakerState.OPEN


def test_breaker_slow_probe_reopens() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    _trip(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_slow()
    assert _state(breaker) is BreakerState.OPEN


def test_breaker_slow_threshold_is_validated() -> None:
    with pytest.raises(ConfigError):
        BreakerPolicy(slow_call_rate_threshold=0.0)


def test_breaker_half_opens_after_open_duration_then_success_closes() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    _trip(breaker)
    clock.advance(4.9)
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.retry_after() == pytest.approx(0.1)
    clock.advance(0.1)
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # one probe at a time
    breaker.record_success()
    assert _state(breaker) is BreakerState.CLOSED
    breaker.record_failure()  # the window was cleared: one failure does not re-open
    assert _state(breaker) is BreakerState.CLOSED


def test_breaker_probe_failure_reopens_for_a_full_period() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    _trip(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN
    clock.advance(4.0)
    assert _state(breaker) is BreakerState.OPEN
    clock.advance(1.0)
    assert _state(breaker) is BreakerState.HALF_OPEN


def test_breaker_needs_every_probe_to_pass() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(min_calls=2, window_calls=4, open_s=1.0, half_open_probes=2)
    breaker = _breaker(clock, policy)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.allow() and breaker.allow() and not breaker.allow()
    breaker.record_success()
    assert _state(breaker) is BreakerState.HALF_OPEN
    breaker.record_success()
    assert _state(breaker) is BreakerState.CLOSED


def test_breaker_forgets_lost_probes() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    _trip(breaker)
    clock.advance(5.0)
    assert breaker.allow()  # this probe never reports back
    assert not breaker.allow()
    clock.advance(5.0)
    assert breaker.allow()


def test_a_cancelled_call_counts_nothing_and_gives_its_probe_back() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    breaker.record_failure()
    breaker.record_failure()
    for _ in range(5):  # clients that went away while the store hung
        assert breaker.allow()
        breaker.record_cancelled()
    breaker.record_success()
    breaker.record_failure()
    assert _state(breaker) is BreakerState.OPEN  # 3 of 4 counted calls failed
    clock.advance(5.0)
    assert breaker.allow() and not breaker.allow()
    breaker.record_cancelled()
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # the next call probes at once
    breaker.record_success()
    assert _state(breaker) is BreakerState.CLOSED


def test_breaker_window_forgets_old_calls() -> None:
    clock = FakeClock()
    breaker = _breaker(clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(31.0)
    breaker.record_success()  # the three failures slid out of the 30 s window
    breaker.record_failure()
    assert _state(breaker) is BreakerState.CLOSED


def test_breaker_window_keeps_last_n_calls() -> None:
    policy = BreakerPolicy(failure_rate_threshold=0.4, window_calls=4, min_calls=4)
    breaker = _breaker(FakeClock(), policy)
    for _ in range(3):
        breaker.record_failure()  # under min_calls: cannot trip
    for _ in range(5):
        breaker.record_success()
    breaker.record_failure()
    # 4/9 failures overall would trip at 0.4; the last 4 calls hold only 1 failure
    assert _state(breaker) is BreakerState.CLOSED


def test_breaker_call_counts_transport_errors_only() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, BreakerPolicy(min_calls=1, window_calls=1))

    def bad_request() -> None:
        raise ValueError("client bug")

    def down() -> None:
        raise StoreUnavailable("refused")

    with pytest.raises(ValueError, match="client bug"):
        breaker.call(bad_request)
    assert _state(breaker) is BreakerState.CLOSED
    with pytest.raises(StoreUnavailable):
        breaker.call(down)
    with pytest.raises(CircuitOpen) as opened:
        breaker.call(lambda: "never runs")
    assert opened.value.retry_after == pytest.approx(breaker.policy.open_s)


def test_breaker_policy_validates() -> None:
    with pytest.raises(ConfigError):
        BreakerPolicy(failure_rate_threshold=0.0)
    with pytest.raises(ConfigError):
        BreakerPolicy(min_calls=30, window_calls=20)


# --- deadline --------------------------------------------------------------------------------


def test_deadline_remaining_shrinks_and_floors_at_zero() -> None:
    clock = FakeClock()
    deadline = Deadline(0.2, clock)
    assert deadline.remaining() == pytest.approx(0.2)
    clock.advance(0.15)
    assert deadline.remaining() == pytest.approx(0.05)
    clock.advance(1.0)
    assert deadline.remaining() == 0.0
    assert deadline.expired()


def test_deadline_timeout_for_takes_a_share_of_what_is_left() -> None:
    clock = FakeClock()
    deadline = Deadline(0.4, clock)
    assert deadline.timeout_for(0.5) == pytest.approx(0.2)
    clock.advance(0.2)
    assert deadline.timeout_for(0.5) == pytest.approx(0.1)
    assert deadline.timeout_for(1.0) == pytest.approx(0.2)


def test_a_step_timeout_is_its_cap_grown_per_key_or_its_share_if_smaller() -> None:
    assert step_timeout(0.05, 0.001, 0, 0.34, 1.0) == pytest.approx(0.05)
    assert step_timeout(0.05, 0.001, 100, 0.34, 1.0) == pytest.approx(0.15)
    assert step_timeout(0.05, 0.001, 100, 0.34, 0.2) == pytest.approx(0.068)


def test_a_deadline_gives_a_step_its_share_of_what_is_left() -> None:
    clock = FakeClock()
    deadline = Deadline(0.4, clock)
    assert deadline.step_timeout(1.0, 0.0, 3, 0.5) == pytest.approx(0.2)
    clock.advance(0.3)
    assert deadline.step_timeout(1.0, 0.0, 3, 0.5) == pytest.approx(0.05)
    assert deadline.step_timeout(0.01, 0.001, 3, 0.5) == pytest.approx(0.013)
    clock.advance(1.0)
    assert deadline.step_timeout(1.0, 0.0, 3, 0.5) == 0.0  # spent: the chain stops before this


def test_deadline_spent_raises_instead_of_a_zero_timeout() -> None:
    clock = FakeClock()
    deadline = Deadline(0.1, clock)
    clock.advance(0.1)
    with pytest.raises(DeadlineExceeded):
        deadline.timeout_for(0.5)
    assert issubclass(DeadlineExceeded, StoreTimeout)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_deadline_rejects_bad_shares(share: float) -> None:
    with pytest.raises(ConfigError):
        Deadline(1.0, FakeClock()).timeout_for(share)
