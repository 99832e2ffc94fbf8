"""The commit interval grows while polls come back full, returns to its base once they do not,
drops to its minimum on a trickle, and never leaves its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.commit_pacing import CommitPacing
from features.errors import ConfigError

PACING = CommitPacing(base_ms=250, min_ms=100, max_ms=1_000, trickle_events=100)


def test_behind_doubles_up_to_the_maximum_then_keeping_up_returns_to_the_base() -> None:
    interval, seen = PACING.min_ms, []
    for _ in range(5):
        interval = PACING.next_ms(interval, events=20_000, full_polls=4)
        seen.append(interval)
    assert seen == [250, 500, 1_000, 1_000, 1_000]
    assert PACING.next_ms(interval, events=1_250, full_polls=0) == 250


def test_a_trickle_commits_at_the_minimum_and_a_stream_at_the_base() -> None:
    assert PACING.next_ms(250, events=99, full_polls=0) == 100
    assert PACING.next_ms(100, events=0, full_polls=0) == 100
    assert PACING.next_ms(100, events=100, full_polls=0) == 250


@given(
    st.integers(1, 2_000),
    st.integers(0, 10**6),
    st.integers(0, 50),
)
def test_the_interval_stays_within_its_bounds(interval: int, events: int, full: int) -> None:
    assert PACING.min_ms <= PACING.next_ms(interval, events=events, full_polls=full) <= 1_000


@pytest.mark.parametrize(("low", "base", "high"), [(0, 250, 1_000), (300, 250, 1_000), (1, 9, 5)])
def test_bounds_out_of_order_are_refused(low: int, base: int, high: int) -> None:
    with pytest.raises(ConfigError, match="commit_interval_ms"):
        CommitPacing(base_ms=base, min_ms=low, max_ms=high)
