"""The validator's classes: each logged answer lands in exactly the class its recomputations
explain (equal, late data, freshness lag, fallback, real skew), in that order of precedence; the
per-feature tally and the failing rule count real skew only."""

from __future__ import annotations

from typing import Any

import pytest

from regions.answer_log import AnswerEntry
from training.validate import (
    EQUAL,
    FALLBACK,
    FRESHNESS_LAG,
    LATE_DATA,
    REAL_SKEW,
    FeatureTally,
    Recomputed,
    Tolerance,
    classify,
    compare,
    failing,
    tally,
)

EXACT = Tolerance()
TARGET = 5_000


def entry(value: Any, status: str = "present", **over: Any) -> AnswerEntry:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "region": "us-east",
        "store": "redis-us-east",
        "as_of_ms": 1_000_000,
        "entity": "user",
        "entity_id": "u_1",
        "view": "user_spend",
        "feature": "tx_count_1h",
        "value": value,
        "status": status,
        "event_time_ms": None,
        "watermark_ms": 990_000,
    }
    return AnswerEntry(**{**fields, **over})


def kind(served: AnswerEntry, offline: Recomputed) -> str:
    return classify(served, offline, TARGET, EXACT).kind


def test_numbers_match_within_either_tolerance_and_statuses_must_agree() -> None:
    assert compare(1.0, "present", 1.0 + 1e-12, "present", EXACT).match
    assert not compare(1.0, "present", 1.001, "present", EXACT).match
    assert compare(1.0, "present", 1.001, "present", Tolerance(abs_tol=0.01, rel_tol=0)).match
    verdict = compare(3, "present", 4, "present", EXACT)
    assert (verdict.match, verdict.abs_error, verdict.rel_error) == (False, 1.0, 0.25)
    assert not compare(0, "default", 0, "present", EXACT).match  # a default equal to the value
    assert not compare(True, "present", 1, "present", EXACT).match  # a bool is not a number
    assert compare(2.0, "present", 0.0, "present", EXACT).rel_error == float("inf")


def test_an_answer_equal_to_the_truth_is_equal_whatever_else() -> None:
    assert kind(entry(3), Recomputed((3, "present"))) == EQUAL
    assert kind(entry(3, store="defaults"), Recomputed((3, "present"))) == EQUAL


def test_a_difference_explained_by_events_ingested_after_the_request_is_late_data() -> None:
    offline = Recomputed(truth=(4, "present"), known=(3, "present"))
    assert kind(entry(3), offline) == LATE_DATA


def test_a_store_behind_by_at_most_the_freshness_target_is_freshness_lag() -> None:
    behind = Recomputed((4, "present"), (4, "present"), watermark=(3, "present"), lag_ms=TARGET)
    assert kind(entry(3), behind) == FRESHNESS_LAG
    # One millisecond beyond the target, the same lag is a store that fell behind: real skew.
    too_late = Recomputed((4, "present"), (4, "present"), (3, "present"), lag_ms=TARGET + 1)
    assert kind(entry(3), too_late) == REAL_SKEW
    # Equal as of the watermark is required: a lagging store must serve the older value.
    wrong = Recomputed((4, "present"), (4, "present"), (2, "present"), lag_ms=10)
    assert kind(entry(3), wrong) == REAL_SKEW


@pytest.mark.parametrize("store", ["dynamodb-us-east", "redis-eu-west", "defaults"])
def test_an_unexplained_difference_served_by_another_store_or_the_defaults_is_fallback(
    store: str,
) -> None:
    offline = Recomputed((4, "present"), (4, "present"), (4, "present"), lag_ms=None)
    assert kind(entry(0, "default", store=store), offline) == FALLBACK


def test_anything_else_from_the_region_s_own_store_is_real_skew() -> None:
    offline = Recomputed((4, "present"), (4, "present"), (4, "present"), lag_ms=None)
    assert kind(entry(5), offline) == REAL_SKEW
    # The region decides which store is its own.
    assert kind(entry(5, region="eu-west", store="redis-eu-west"), offline) == REAL_SKEW


def test_the_tally_counts_every_class_and_the_largest_errors_and_fails_on_skew_only() -> None:
    entries = [
        entry(3),
        entry(3, entity_id="u_2"),
        entry(9, entity_id="u_3"),
        entry(1.0, feature="spend_sum_1h"),
    ]
    offline = [
        Recomputed((3, "present")),
        Recomputed((4, "present"), (3, "present")),
        Recomputed((6, "present"), (6, "present"), (6, "present"), None),
        Recomputed((1.0, "present")),
    ]
    tallies = tally(entries, offline, {"user_spend": TARGET}, EXACT)
    count = tallies["user_spend:tx_count_1h"].figures()
    assert (count["compared"], count[EQUAL], count[LATE_DATA], count[REAL_SKEW]) == (3, 1, 1, 1)
    assert (count["max_abs_error"], count["max_rel_error"]) == (3.0, 0.5)
    assert [(e["entity_id"], e["served"], e["offline"]) for e in count["examples"]] == [
        ("u_3", 9, 6)
    ]
    assert tallies["user_spend:spend_sum_1h"].figures()[EQUAL] == 1
    assert failing(tallies, 0.3) == ["user_spend:tx_count_1h"]
    assert failing(tallies, 0.5) == []


def test_a_tally_survives_its_figures_and_merges_cycles() -> None:
    one = FeatureTally()
    one.add(entry(9), Recomputed((6, "present")), classify(entry(9), Recomputed((6, "present"),
            (6, "present"), (6, "present")), TARGET, EXACT))  # fmt: skip
    again = FeatureTally.from_figures(one.figures())
    assert again.figures() == one.figures()
    again.merge(one)
    assert (again.counts[REAL_SKEW], again.max_abs_error) == (2, 3.0)
