"""Load shedding: refuse new reads while the replica itself is overloaded.

Two gates, both cheap enough to run before a request's body is read:
- :class:`AdaptiveLimit` caps requests in flight, and the cap shrinks while requests meet the
  replica's own overload and grows back while they do not;
- :class:`LagGauge`: a fixed in-flight count does not see cost (a 100-entity read costs many
  single ones) nor a loop slowed by the box; the loop's lag sees both. A ticker asks to wake
  every ``interval_s``; how late it actually wakes is the time any ready callback currently
  waits for the loop. While the smoothed lag is over the limit, a new read is refused with 503
  and ``Retry-After`` before it costs anything, instead of being accepted, timing out on its own
  stores and answered with defaults.

Invariants:
- :class:`LagGauge` is pure: it is fed observed lags and answers ``overloaded()``; the clock and
  the loop belong to :class:`LagTicker`;
- a single late tick (one slow request, a GC pause) does not shed: the gauge is an exponentially
  weighted mean, and it sheds only above ``limit_s``;
- ``limit_s == 0`` turns shedding off (the gauge still measures);
- ``busy()`` (smoothed lag over ``busy_s``, 0: never) is a lower bar than shedding: the lag at
  which a store's timeout is blamed on this replica, not on the store (``serve_apps.fallback``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from features.errors import ConfigError

Clock = Callable[[], float]


@dataclass
class LagGauge:
    """Smoothed event-loop lag in seconds. ``weight`` is the share of each new observation."""

    limit_s: float
    weight: float = 0.3
    busy_s: float = 0.0
    lag_s: float = 0.0
    worst_s: float = 0.0

    def __post_init__(self) -> None:
        if self.limit_s < 0:
            raise ConfigError("must not be negative", field="limit_s")
        if self.busy_s < 0:
            raise ConfigError("must not be negative", field="busy_s")
        if not 0 < self.weight <= 1:
            raise ConfigError("must be in (0, 1]", field="weight")

    def observe(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self.lag_s += self.weight * (lag_s - self.lag_s)
        self.worst_s = max(self.worst_s, lag_s)

    def overloaded(self) -> bool:
        return self.limit_s > 0 and self.lag_s > self.limit_s

    def busy(self) -> bool:
        return self.busy_s > 0 and self.lag_s > self.busy_s


class LagTicker:
    """Feeds a :class:`LagGauge` from the running loop; started by the first request (a task
    belongs to the loop that runs it, and the replica's loop exists only then)."""

    def __init__(self, gauge: LagGauge, clock: Clock, interval_s: float = 0.02) -> None:
        self.gauge = gauge
        self._clock = clock
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            asked = self._clock()
            await asyncio.sleep(self._interval_s)
            self.gauge.observe(self._clock() - asked - self._interval_s)


@dataclass
class AdaptiveLimit:
    """How many requests one replica works on at once: additive increase, multiplicative cut.

    A request that met this replica's own overload (``dropped``: refused by the chain as
    overloaded, or finished while the loop lags) cuts the limit by ``backoff``; any other adds
    ``1 / limit`` while the replica is using at least half its limit, so a healthy replica
    climbs back from ``min_limit`` to ``max_limit`` in about ``max_limit ** 2 / 2`` requests.
    Past the limit a request is refused at once, cheaply, with 503; admitted ones then find
    their stores answering (under a fixed cap, a flood slows the box's Redis until timeouts open
    the breakers and accepted requests are answered with defaults).

    Invariants: ``min_limit <= limit <= max_limit``; ``in_flight`` counts admitted, unreleased
    requests; one overload cuts once (TCP's once per round trip): a drop cuts only if its request
    started after the last cut, because the requests in flight at a cut saw the same overload.
    """

    max_limit: int
    clock: Clock
    min_limit: int = 4
    backoff: float = 0.9
    in_flight: int = 0
    limit: float = 0.0
    _last_cut_s: float = float("-inf")

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.max_limit:
            raise ConfigError("needs 1 <= min_limit <= max_limit", field="min_limit")
        if not 0 < self.backoff < 1:
            raise ConfigError("must be in (0, 1)", field="backoff")
        self.limit = float(self.max_limit)

    def acquire(self) -> float | None:
        """The request's start time when it is admitted, ``None`` when it must be refused."""
        if self.in_flight >= int(self.limit):
            return None
        self.in_flight += 1
        return self.clock()

    def release(self, started_s: float, *, dropped: bool) -> None:
        busy = self.in_flight * 2 >= self.limit
        self.in_flight -= 1
        if dropped:
            if started_s > self._last_cut_s:
                self.limit = max(float(self.min_limit), self.limit * self.backoff)
                self._last_cut_s = self.clock()
        elif busy:
            self.limit = min(float(self.max_limit), self.limit + 1.0 / self.limit)
