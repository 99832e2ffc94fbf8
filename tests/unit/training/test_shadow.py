"""The shadow report's comparison: which values count as equal, the shares and mean differences
per feature, features the previous version lacks, and which entities are sampled."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from training.shadow import compare, equal, of_entities, recent_entities


def test_floats_are_equal_within_1e_9_relative_and_other_values_exactly() -> None:
    assert equal(1.0, 1.0 + 1e-12)
    assert not equal(1.0, 1.0 + 1e-6)
    assert equal(np.float64(2.5), 2.5) and equal(np.int64(3), 3.0)
    assert equal(float("nan"), float("nan")) and not equal(float("nan"), 0.0)
    assert equal(None, None) and not equal(None, 0)
    assert equal([1.0, "a"], (1.0 + 1e-13, "a")) and not equal([1.0], [1.0, 2.0])
    assert equal("x", "x") and not equal("x", "y")


def test_each_candidate_feature_gets_its_shares_and_mean_absolute_differences() -> None:
    candidate = {"count_5m": [3, 4, 0, 2], "last_amount": [1.5, None, 2.0, 9.0]}
    offline = {"count_5m": [3, 4, 0, 5], "last_amount": [1.5, None, 2.0, 9.0]}
    previous = {"count_5m": [3, 6, 1, 2]}  # last_amount is new in the candidate
    lines = {line.feature: line for line in compare(candidate, offline, previous)}
    count = lines["count_5m"]
    assert count.entities == 4
    assert count.equal_offline == 0.75 and count.mean_abs_diff_offline == 0.75
    assert count.equal_previous == 0.5 and count.mean_abs_diff_previous == 0.75
    last = lines["last_amount"]
    assert last.equal_offline == 1.0 and last.mean_abs_diff_offline == 0.0
    assert last.equal_previous is None and last.mean_abs_diff_previous is None
    assert set(last.to_dict()) >= {"feature", "entities", "equal_offline", "equal_previous"}


def test_no_numeric_pair_has_no_mean_difference_and_no_entity_counts_as_all_equal() -> None:
    (line,) = compare({"top": [["a"], None]}, {"top": [["a"], None]}, {})
    assert line.equal_offline == 1.0 and line.mean_abs_diff_offline is None
    (empty,) = compare({"n": []}, {"n": []}, {"n": []})
    assert empty.entities == 0 and empty.equal_offline == 1.0


def test_the_sample_is_the_entities_with_the_newest_events() -> None:
    events = pa.table(
        {
            "user_id": ["a", "b", "a", "c", "d", "b"],
            "event_time_ms": [10, 50, 70, 30, 70, 20],
        }
    )
    assert recent_entities(events, "user_id", "event_time_ms", 3) == ["a", "d", "b"]
    assert recent_entities(events, "user_id", "event_time_ms", 0) == []
    assert recent_entities(events.slice(0, 0), "user_id", "event_time_ms", 5) == []
    mine = of_entities(events, "user_id", ["b", "c"])
    assert mine.column("user_id").to_pylist() == ["b", "c", "b"]
