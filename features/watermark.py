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

NO_WATERMARK = -(2**63)


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
