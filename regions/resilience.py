"""Resilience primitives: backoff, retry, circuit breaker and request deadline.

All four are pure: time comes from an injected monotonic clock ``now()`` (seconds) and waiting from
an injected ``sleep(seconds)``; nothing here reads the system clock or sleeps by itself, so tests
drive time explicitly. Modelled on redis-py's ``backoff.py``, ``retry.py`` and ``multidb/``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from features.errors import ConfigError, StoreTimeout, StoreUnavailable, TransportError
from regions.exceptions import CircuitOpen, DeadlineExceeded

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]

DEFAULT_BACKOFF_BASE_S = 0.008
DEFAULT_BACKOFF_CAP_S = 0.512
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_ON: tuple[type[Exception], ...] = (StoreUnavailable, StoreTimeout)

# The circuit breaker's defaults (serving's BreakerSettings takes them from here). A store that
# fails half of its recent calls is skipped; open_s is short because a skipped local store means
# slower cross-region reads, and one probe per open_s costs a healthy store next to nothing.
DEFAULT_FAILURE_RATE_THRESHOLD = 0.5
# Slow calls (answered, but after the caller had moved on) open the breaker only when every call
# of the window was slow: a store that is always slower than its timeout costs each read that
# timeout for nothing, while one that is sometimes slow (a busy machine) still answers most reads.
DEFAULT_SLOW_CALL_RATE_THRESHOLD = 1.0
DEFAULT_WINDOW_CALLS = 20
DEFAULT_WINDOW_S = 10.0
DEFAULT_MIN_CALLS = 5
DEFAULT_OPEN_S = 2.0
DEFAULT_HALF_OPEN_PROBES = 1


def equal_jitter() -> float:
    """A factor in [0.5, 1): spreads retries of many clients but keeps at least half the delay."""
    return 0.5 + random.random() / 2  # noqa: S311 - jitter, not cryptography


def no_jitter() -> float:
    return 1.0


@dataclass(frozen=True)
class ExponentialBackoff:
    """Delay before retry ``n`` (1-based): ``min(cap_s, base_s * 2**(n-1)) * jitter()``.

    Invariants: ``0 <= delay(n) <= cap_s``; without jitter the delay never decreases with ``n``.
    ``jitter`` returns a factor in [0, 1].
    """

    base_s: float = DEFAULT_BACKOFF_BASE_S
    cap_s: float = DEFAULT_BACKOFF_CAP_S
    jitter: Callable[[], float] = equal_jitter

    def __post_init__(self) -> None:
        if self.base_s <= 0:
            raise ConfigError("must be positive", field="base_s")
        if self.cap_s < self.base_s:
            raise ConfigError("must be at least base_s", field="cap_s")

    def delay(self, retry: int) -> float:
        # The exponent is bounded so that a large retry count cannot overflow the float.
        raw = self.base_s * 2.0 ** min(max(retry - 1, 0), 62)
        factor = min(max(self.jitter(), 0.0), 1.0)
        return min(self.cap_s, raw) * factor


@dataclass(frozen=True)
class RetryPolicy:
    """Run a call up to ``max_attempts`` times, backing off between attempts on ``retry_on`` errors.

    Invariants: ``fn`` runs at most ``max_attempts`` times; errors outside ``retry_on`` propagate at
    once; with a deadline, it never sleeps past the budget (the last error is raised instead).
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: ExponentialBackoff = field(default_factory=ExponentialBackoff)
    retry_on: tuple[type[Exception], ...] = DEFAULT_RETRY_ON

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("must be at least 1", field="max_attempts")

    def run(self, fn: Callable[[], T], sleep: Sleep, deadline: Deadline | None = None) -> T:
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except self.retry_on:
                delay = self.backoff.delay(attempt)
                if attempt == self.max_attempts or not _fits(delay, deadline):
                    raise
            sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


def _fits(delay: float, deadline: Deadline | None) -> bool:
    return deadline is None or delay < deadline.remaining()


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class _Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SLOW = "slow"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers.

    The breaker opens when, over the calls of the last ``window_s`` seconds (at most the last
    ``window_calls`` of them), there are at least ``min_calls`` and the failure rate is at least
    ``failure_rate_threshold`` or the slow-call rate at least ``slow_call_rate_threshold``. It
    stays open ``open_s``, then admits ``half_open_probes`` calls.
    """

    failure_rate_threshold: float = DEFAULT_FAILURE_RATE_THRESHOLD
    slow_call_rate_threshold: float = DEFAULT_SLOW_CALL_RATE_THRESHOLD
    window_calls: int = DEFAULT_WINDOW_CALLS
    window_s: float = DEFAULT_WINDOW_S
    min_calls: int = DEFAULT_MIN_CALLS
    open_s: float = DEFAULT_OPEN_S
    half_open_probes: int = DEFAULT_HALF_OPEN_PROBES

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_rate_threshold <= 1.0:
            raise ConfigError("must be in (0, 1]", field="failure_rate_threshold")
        if not 0.0 < self.slow_call_rate_threshold <= 1.0:
            raise ConfigError("must be in (0, 1]", field="slow_call_rate_threshold")
        if not 1 <= self.min_calls <= self.window_calls:
            raise ConfigError("must be in 1..window_calls", field="min_calls")
        if self.window_s <= 0 or self.open_s <= 0:
            raise ConfigError("windows and open duration must be positive", field="window_s")
        if self.half_open_probes < 1:
            raise ConfigError("must be at least 1", field="half_open_probes")


class CircuitBreaker:
    """CLOSED -> OPEN -> HALF_OPEN -> CLOSED (or back to OPEN), driven by the injected clock.

    Invariants:
    - OPEN rejects every call (``allow()`` is False) until ``open_s`` has passed since it opened;
    - HALF_OPEN admits at most ``half_open_probes`` calls; all of them succeeding closes the
      breaker with an empty window, any failure re-opens it for another ``open_s``;
    - probes whose outcome is never recorded are forgotten after ``open_s``, so a lost probe cannot
      wedge the breaker half-open;
    - the caller records exactly one outcome per allowed call: a success, a failure, a slow call
      (answered after the caller's timeout), or :meth:`record_cancelled` when the caller gave up
      before the store answered.
    """

    def __init__(self, name: str, now: Clock, policy: BreakerPolicy | None = None) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self._now = now
        self._calls: deque[tuple[float, _Outcome]] = deque(maxlen=self.policy.window_calls)
        self._state = BreakerState.CLOSED
        self._changed_at = now()
        self._probes_issued = 0
        self._probes_passed = 0

    @property
    def state(self) -> BreakerState:
        now = self._now()
        if self._state is BreakerState.OPEN and now - self._changed_at >= self.policy.open_s:
            self._enter(BreakerState.HALF_OPEN, now)
        elif (
            self._state is BreakerState.HALF_OPEN
            and now - self._changed_at >= self.policy.open_s
            and self._probes_issued > self._probes_passed
        ):
            self._enter(BreakerState.HALF_OPEN, now)  # probes lost: re-arm them
        return self._state

    def retry_after(self) -> float:
        """Seconds until the breaker admits a probe; 0 unless OPEN."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.policy.open_s - (self._now() - self._changed_at))

    def allow(self) -> bool:
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes_issued < self.policy.half_open_probes:
            self._probes_issued += 1
            return True
        return False

    def record_success(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._probes_passed += 1
            if self._probes_passed >= self.policy.half_open_probes:
                self._enter(BreakerState.CLOSED, self._now())
            return
        self._record(_Outcome.OK)

    def record_slow(self) -> None:
        """The store answered, but only after the caller's timeout: alive, yet every read that
        tries it first pays that timeout. A slow probe keeps the breaker open."""
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._enter(BreakerState.OPEN, self._now())
        elif state is BreakerState.CLOSED:
            self._record(_Outcome.SLOW)
            if self._tripped():
                self._enter(BreakerState.OPEN, self._now())

    def record_cancelled(self) -> None:
        """The allowed call was cancelled by its own caller (a client went away) before the
        store answered: it says nothing of the store, so nothing is counted, and a half-open
        probe slot it held is given back for the next call."""
        if self.state is BreakerState.HALF_OPEN and self._probes_issued > self._probes_passed:
            self._probes_issued -= 1

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._enter(BreakerState.OPEN, self._now())
        elif state is BreakerState.CLOSED:
            self._record(_Outcome.FAILED)
            if self._tripped():
                self._enter(BreakerState.OPEN, self._now())

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` if allowed (else raise :class:`CircuitOpen`); a ``TransportError`` counts as a
        failure, any other outcome as a success (a bad request says nothing about the store)."""
        if not self.allow():
            raise CircuitOpen(self.name, self.retry_after())
        try:
            result = fn()
        except TransportError:
            self.record_failure()
            raise
        except Exception:
            self.record_success()
            raise
        self.record_success()
        return result

    def _record(self, outcome: _Outcome) -> None:
        now = self._now()
        self._calls.append((now, outcome))
        while self._calls and now - self._calls[0][0] > self.policy.window_s:
            self._calls.popleft()

    def _tripped(self) -> bool:
        calls = len(self._calls)
        if calls < self.policy.min_calls:
            return False
        failed = sum(1 for _, o in self._calls if o is _Outcome.FAILED)
        slow = sum(1 for _, o in self._calls if o is _Outcome.SLOW)
        return (
            failed / calls >= self.policy.failure_rate_threshold
            or slow / calls >= self.policy.slow_call_rate_threshold
        )

    def _enter(self, state: BreakerState, now: float) -> None:
        self._state = state
        self._changed_at = now
        self._probes_issued = 0
        self._probes_passed = 0
        if state is BreakerState.CLOSED:
            self._calls.clear()


def step_timeout(
    cap_s: float, per_key_s: float, keys: int, share: float, remaining_s: float
) -> float:
    """The timeout of one step of a fallback chain reading ``keys`` keys: its cap (``cap_s`` plus
    ``per_key_s`` per key, since a bigger reply takes longer to send and parse) or its ``share``
    of the ``remaining_s`` of the request's budget, whichever is smaller, so a slow early step
    leaves time for the later ones."""
    return min(cap_s + per_key_s * keys, share * remaining_s)


class Deadline:
    """A request's time budget, fixed when created; store timeouts are carved out of what is left.

    Invariants: ``remaining()`` never increases and is never negative; ``timeout_for`` never returns
    more than ``remaining()`` nor a non-positive value (it raises instead).
    """

    def __init__(self, budget_s: float, now: Clock) -> None:
        if budget_s < 0:
            raise ConfigError("must not be negative", field="budget_s")
        self._now = now
        self._expires_at = now() + budget_s

    def remaining(self) -> float:
        return max(0.0, self._expires_at - self._now())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def step_timeout(self, cap_s: float, per_key_s: float, keys: int, share: float) -> float:
        """:func:`step_timeout` with what is left of this budget (may be 0 when it is spent)."""
        return step_timeout(cap_s, per_key_s, keys, share, self.remaining())

    def timeout_for(self, step_share: float) -> float:
        """The timeout of one step allowed ``step_share`` (0..1] of what is left of the budget.

        Raises :class:`DeadlineExceeded` when nothing is left: a zero socket timeout would mean
        "non-blocking" to Python, not "give up".
        """
        if not 0.0 < step_share <= 1.0:
            raise ConfigError("must be in (0, 1]", field="step_share")
        left = self.remaining()
        if left <= 0.0:
            raise DeadlineExceeded("request budget exhausted before the store call")
        return left * step_share
