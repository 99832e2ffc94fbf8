"""Splitting a topic's partitions among several actors of one kind (sink shards, offline writers).

Pure: a shard is its index and the count of its kind; its partitions follow from those alone, so
every actor, and every restart of one, derives the same split without asking anyone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: need 0 <= index < count")

    def partitions(self, available: Iterable[int]) -> list[int]:
        """This shard's partitions: round-robin, every partition owned exactly once."""
        return [p for p in sorted(available) if p % self.count == self.index]


SOLE = Shard()
