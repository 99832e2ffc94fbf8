"""How long a stream consumer waits between commits: longer while it is behind, shorter when its
stream is a trickle.

A commit is one Kafka transaction, and its cost is per commit, not per event: its round trips,
the broker's transaction markers, and one changelog record per entity changed since the previous
commit (a hot entity's block is written once per commit however many of its events it folded).
While a consumer is behind (a poll came back full, so more records were waiting) a longer interval
spreads that cost over more events and the backlog drains faster; freshness is lost anyway while
events wait in the backlog. Once it keeps up, the interval is the base again, measured best at
5,000 events/s on the development box (``docs/benchmarks.md``). When a whole interval brought only
a trickle of events, committing more often costs little and makes those few visible sooner.

Rule, after each commit, from what the polls since the previous commit brought:

* some poll was full: ``min(max_ms, 2 * interval)`` (so ``base_ms``, then twice, four times, ...);
* fewer than ``trickle_events`` events in all: ``min_ms``;
* otherwise: ``base_ms``.

Pure and clock-free: the consumer feeds it each commit's window and keeps the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.errors import ConfigError


@dataclass(frozen=True, slots=True)
class CommitPacing:
    """Bounds of the commit interval, in ms. Invariant: ``0 < min_ms <= base_ms <= max_ms``."""

    base_ms: int = 250
    min_ms: int = 100
    max_ms: int = 1_000
    trickle_events: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.min_ms <= self.base_ms <= self.max_ms:
            raise ConfigError(
                f"commit intervals must satisfy 0 < min ({self.min_ms}) <= base "
                f"({self.base_ms}) <= max ({self.max_ms})",
                field="commit_interval_ms",
            )
        if self.trickle_events < 0:
            raise ConfigError("must not be negative", field="trickle_events")

    def next_ms(self, interval_ms: int, *, events: int, full_polls: int) -> int:
        """The interval after a commit whose window polled ``events`` events, ``full_polls`` of
        its polls full; ``interval_ms`` is the interval that window had."""
        if full_polls:
            return min(self.max_ms, max(self.base_ms, 2 * interval_ms))
        if events < self.trickle_events:
            return self.min_ms
        return self.base_ms
