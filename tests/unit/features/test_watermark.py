from __future__ import annotations

import random

from features.watermark import NO_WATERMARK, WatermarkPolicy, WatermarkState

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
