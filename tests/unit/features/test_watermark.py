from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.watermark import NO_WATERMARK, SAFE_TIME_MS, WatermarkPolicy, WatermarkState

POLICY = WatermarkPolicy(out_of_orderness_ms=5_000, allowed_lateness_ms=30_000)


def test_first_event_is_never_late_and_sets_the_watermark() -> None:
    state = WatermarkState()
    assert POLICY.watermark(state) == NO_WATERMARK
    assert POLICY.observe(state, 1_000_000)
    assert POLICY.watermark(state) == 995_000


def test_out_of_order_within_lateness_is_accepted_and_does_not_move_the_watermark() -> None:
    state = WatermarkState()
    POLICY.observe(state, 1_000_000)
    assert POLICY.observe(state, 1_000_000 - 34_999)  # 995_000 - 30_000 = 965_000 < 965_001
    assert POLICY.watermark(state) == 995_000


def test_boundary_is_exact() -> None:
    state = WatermarkState()
    POLICY.observe(state, 1_000_000)
    assert POLICY.observe(state, 965_000), "exactly at watermark - lateness is still on time"
    assert not POLICY.observe(state, 964_999)


def test_late_events_do_not_move_the_watermark_and_replay_reproduces_decisions() -> None:
    rng = random.Random(7)
    times = [1_000_000 + i * 100 - rng.choice([0, 0, 0, 3_000, 60_000]) for i in range(2_000)]
    first, second = WatermarkState(), WatermarkState()
    decisions = [POLICY.observe(first, t) for t in times]
    assert decisions == [POLICY.observe(second, t) for t in times]
    assert 0 < decisions.count(False) < len(times)
    # Oracle: brute force over the prefix, independent of the state object.
    for i, t in enumerate(times):
        prior = [u for u, ok in zip(times[:i], decisions[:i], strict=True) if ok]
        late = bool(prior) and t < max(prior) - 5_000 - 30_000
        assert decisions[i] is (not late)


def test_state_round_trips() -> None:
    state = WatermarkState()
    POLICY.observe(state, 123_456)
    assert WatermarkState.from_dict(state.to_dict()) == state


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-(10**12), 10**12) | st.sampled_from([0, 35_000, 35_001]), max_size=60),
    st.sampled_from([NO_WATERMARK, 0, 10**12]),
    st.sampled_from([(0, 0), (5_000, 30_000), (0, 1)]),
)
def test_a_batch_is_decided_as_one_observe_per_event(
    times: list[int], seen: int, delays: tuple[int, int]
) -> None:
    policy = WatermarkPolicy(*delays)
    one_by_one, batch = WatermarkState(seen), WatermarkState(seen)
    expected = [policy.observe(one_by_one, t) for t in times]
    accepted = policy.observe_many(batch, np.array(times, dtype=np.int64))
    assert accepted.tolist() == expected
    assert batch == one_by_one


def test_a_batch_outside_the_safe_range_is_refused_untouched() -> None:
    state = WatermarkState(1_000)
    with pytest.raises(ValueError, match="range"):
        POLICY.observe_many(state, np.array([2_000, SAFE_TIME_MS], dtype=np.int64))
    assert state == WatermarkState(1_000)
