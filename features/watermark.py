"""Per-partition event-time watermark and the lateness rule.

watermark = (max event time seen in the partition) - out_of_orderness

An event is *late* when ``event_time < watermark - allowed_lateness``; late events are refused
(dead-lettered with reason ``late``), every other event updates its windows. The rule depends only
on the partition's order of arrival, so replaying a partition reproduces every decision exactly:
the offline path and the oracle in the tests apply the same rule to the same log.

Invariants: the watermark never decreases; an accepted event never moves it backwards; a late event
does not move it at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

NO_WATERMARK = -(2**63)
SAFE_TIME_MS = 2**62
"""Event times in ``(-SAFE_TIME_MS, SAFE_TIME_MS)`` leave int64 room for the watermark's
arithmetic (:meth:`WatermarkPolicy.observe_many`); a batch with others takes the scalar path."""


@dataclass
class WatermarkState:
    """Snapshot-able state of one partition's watermark (plain ints, JSON-able)."""

    max_event_time_ms: int = NO_WATERMARK

    def to_dict(self) -> dict[str, int]:
        return {"max_event_time_ms": self.max_event_time_ms}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> WatermarkState:
        return cls(max_event_time_ms=int(data["max_event_time_ms"]))


@dataclass(frozen=True)
class WatermarkPolicy:
    out_of_orderness_ms: int
    allowed_lateness_ms: int

    def __post_init__(self) -> None:
        if self.out_of_orderness_ms < 0 or self.allowed_lateness_ms < 0:
            raise ValueError("out_of_orderness_ms and allowed_lateness_ms must be >= 0")

    def watermark(self, state: WatermarkState) -> int:
        if state.max_event_time_ms == NO_WATERMARK:
            return NO_WATERMARK
        return state.max_event_time_ms - self.out_of_orderness_ms

    def is_late(self, state: WatermarkState, event_time_ms: int) -> bool:
        watermark = self.watermark(state)
        return watermark != NO_WATERMARK and event_time_ms < watermark - self.allowed_lateness_ms

    def observe(self, state: WatermarkState, event_time_ms: int) -> bool:
        """Apply one event in arrival order; returns True if accepted, False if late."""
        if self.is_late(state, event_time_ms):
            return False
        state.max_event_time_ms = max(state.max_event_time_ms, event_time_ms)
        return True

    def observe_many(
        self, state: WatermarkState, times: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """Apply events in arrival order; which were accepted. Equal to :meth:`observe` once per
        time, in order, for times and a state within ``SAFE_TIME_MS`` (``ValueError`` else).

        A late event could not have moved the watermark anyway (it is older than the newest
        time seen), so the newest time before each event is a running maximum over all of them.
        """
        seen = state.max_event_time_ms
        if len(times) == 0:
            return np.ones(0, dtype=np.bool_)
        if not _safe(seen) or int(times.min()) <= -SAFE_TIME_MS or int(times.max()) >= SAFE_TIME_MS:
            raise ValueError("event times outside the vectorised watermark's range")
        before = np.empty_like(times)
        before[0] = seen
        np.maximum(np.maximum.accumulate(times[:-1]), seen, out=before[1:])
        # NO_WATERMARK is the smallest int64: it stays the running maximum only until a time.
        slack = self.out_of_orderness_ms + self.allowed_lateness_ms
        late = (before != NO_WATERMARK) & (times < np.maximum(before, -SAFE_TIME_MS) - slack)
        state.max_event_time_ms = max(seen, int(times.max()))
        accepted: npt.NDArray[np.bool_] = ~late
        return accepted


def _safe(max_event_time_ms: int) -> bool:
    return max_event_time_ms == NO_WATERMARK or abs(max_event_time_ms) < SAFE_TIME_MS
