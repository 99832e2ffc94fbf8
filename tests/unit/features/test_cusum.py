from __future__ import annotations

import numpy as np
import pytest

from features.cusum import CusumConfig, CusumState
from features.errors import ConfigError, DataError
from features.exceptions import CorruptState


def _series(seed: int, shift: float, at: int = 500, n: int = 1_000) -> list[float]:
    values = np.random.default_rng(seed).normal(10.0, 2.0, n)
    values[at:] += shift * 2.0  # shift in units of the std (2.0)
    return [float(v) for v in values]


def _alarms(config: CusumConfig, values: list[float]) -> list[int]:
    logic = config.build()
    return [i for i, v in enumerate(values) if logic.update(v)[1]]


def test_known_change_point_is_detected_soon_after_and_not_before() -> None:
    alarms = _alarms(CusumConfig(), _series(seed=42, shift=3.0))
    assert alarms, "the shift must be detected"
    assert 500 <= alarms[0] <= 530


@pytest.mark.parametrize("seed", range(10))
def test_detection_holds_across_seeds(seed: int) -> None:
    # The defaults rarely alarm before a change (see features/cusum.py); these seeds never do.
    first = _alarms(CusumConfig(), _series(seed=seed, shift=-3.0))[0]
    assert 500 <= first <= 530


def test_no_alarm_on_an_in_control_series() -> None:
    assert _alarms(CusumConfig(), _series(seed=7, shift=0.0)) == []


def test_warmup_scores_zero_and_score_is_in_std_units() -> None:
    config = CusumConfig(drift=0.0, threshold=100.0, warmup=4)
    logic = config.build()
    for v in (1.0, 3.0, 1.0, 3.0):  # mean 2, sample std ~1.1547
        assert logic.update(v) == (0.0, False)
    score, alarm = logic.update(2.0 + 2 * 1.1547005383792515)
    assert score == pytest.approx(2.0)
    assert not alarm


def test_after_an_alarm_sums_reset_and_the_reference_is_relearned() -> None:
    config = CusumConfig(warmup=5)
    logic = config.build()
    for v in (1.0, 2.0, 1.0, 2.0, 1.5):
        logic.update(v)
    score, alarm = logic.update(100.0)
    assert alarm and score > config.threshold
    state = logic.snapshot()
    assert (state.n, state.s_pos, state.s_neg, state.alarms) == (0, 0.0, 0.0, 1)
    # The new level becomes the reference: staying there does not alarm again.
    assert not any(logic.update(100.0 + (i % 2))[1] for i in range(200))


def test_snapshot_and_resume_continue_exactly() -> None:
    values = _series(seed=3, shift=3.0)
    config = CusumConfig()
    straight = config.build()
    expected = [straight.update(v) for v in values]
    first = config.build()
    got = [first.update(v) for v in values[:510]]
    snapshot = first.snapshot().to_dict()
    resumed = config.build(CusumState.from_dict(snapshot))
    got += [resumed.update(v) for v in values[510:]]
    assert got == expected


def test_build_copies_the_resume_state() -> None:
    state = CusumState()
    CusumConfig().build(state).update(1.0)
    assert state.seen == 0


def test_state_from_dict_refuses_bad_snapshots() -> None:
    good = CusumState().to_dict()
    with pytest.raises(CorruptState):
        CusumState.from_dict({**good, "extra": 1})
    with pytest.raises(CorruptState):
        CusumState.from_dict({k: v for k, v in good.items() if k != "mean"})
    with pytest.raises(CorruptState):
        CusumState.from_dict({**good, "mean": "x"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"drift": -1.0}, "drift"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": float("inf")}, "threshold"),
        ({"warmup": 1}, "warmup"),
        ({"min_std": 0.0}, "min_std"),
    ],
)
def test_config_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        CusumConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_non_finite_input_is_refused() -> None:
    with pytest.raises(DataError):
        CusumConfig().build().update(float("nan"))


def test_update_many_leaves_the_state_one_update_per_value_leaves() -> None:
    """Bit for bit, through warm-ups, alarms and re-learning, and up to a non-finite value."""
    config = CusumConfig(drift=0.5, threshold=3.0, warmup=4)
    values = [*_series(5, 4.0, at=60, n=200), 0.1, 1e300, -1e300, 0.0, -0.0]
    one, many = config.build(), config.build()
    alarms = sum(one.update(v)[1] for v in values)
    many.update_many(values)
    assert alarms >= 2, "the series must alarm and re-learn"
    assert repr(many.state) == repr(one.state)
    with pytest.raises(DataError):
        many.update_many([1.0, float("nan"), 2.0])
    one.update(1.0)
    assert repr(many.state) == repr(one.state)
