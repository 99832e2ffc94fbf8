"""Open-loop rate control, pure: event ``i`` is due ``i / rate`` seconds after the start.

Open loop means the schedule never waits for the broker: a producer that fell behind sends
everything already due (in bursts of at most ``max_burst``) rather than stretching the run, so a
slow consumer downstream sees the offered load, not a politely reduced one. Events are sent in
batches of about ``interval_s`` worth, one sleep per batch, never one per event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Absorbs float error in elapsed * rate, so waking exactly at i / rate makes event i due.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Pacer:
    rate_per_s: float
    total: int
    interval_s: float = 0.05
    max_burst: int = 20_000

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.interval_s <= 0 or self.max_burst < 1 or self.total < 0:
            raise ValueError(f"invalid pacing: {self}")

    @property
    def batch(self) -> int:
        """Events per pacing step when on schedule."""
        return max(1, round(self.rate_per_s * self.interval_s))

    def scheduled(self, elapsed_s: float) -> int:
        """How many events are due by ``elapsed_s`` (events 0 .. n-1), capped at ``total``."""
        if elapsed_s < 0:
            return 0
        return min(self.total, math.floor(elapsed_s * self.rate_per_s + _EPSILON) + 1)

    def due(self, elapsed_s: float, sent: int) -> int:
        """How many to send now: every due event not sent yet, at most ``max_burst``."""
        return max(0, min(self.scheduled(elapsed_s) - sent, self.max_burst))

    def wait_s(self, elapsed_s: float, sent: int) -> float:
        """Seconds until the next full batch is due; 0 when behind schedule or done."""
        if sent >= self.total:
            return 0.0
        wake_index = min(self.total - 1, sent + self.batch - 1)
        return max(0.0, wake_index / self.rate_per_s - elapsed_s)
