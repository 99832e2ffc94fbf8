"""The consistency validator's judgement: tolerances, statuses, the per-feature report, the exit
rule, and the offline recomputation (as of the answer, only events ingested before it)."""

from __future__ import annotations

import argparse
from typing import Any

import pyarrow as pa
import pytest

from cluster.validator_job import (
    Tolerance,
    add_arguments,
    build_report,
    compare,
    failing,
    recompute,
)
from features.demo import card_transactions_catalog
from features.tiles import HOUR_MS, MINUTE_MS
from regions.answer_log import AnswerEntry

CATALOG = card_transactions_catalog()
EXACT = Tolerance()
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (4 * HOUR_MS)


def _entry(feature: str, value: Any, status: str = "present", **over: Any) -> AnswerEntry:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "region": "us-east",
        "store": "redis-us-east",
        "as_of_ms": T0 + HOUR_MS,
        "entity": "user",
        "entity_id": "u_1",
        "view": "user_spend",
        "feature": feature,
        "value": value,
        "status": status,
        "event_time_ms": None,
    }
    return AnswerEntry(**{**fields, **over})


def test_numbers_match_within_either_tolerance_and_not_beyond() -> None:
    assert compare(1.0, "present", 1.0 + 1e-12, "present", EXACT).match
    assert not compare(1.0, "present", 1.001, "present", EXACT).match
    loose = Tolerance(abs_tol=0.01, rel_tol=0.0)
    assert compare(1.0, "present", 1.001, "present", loose).match
    verdict = compare(3, "present", 4, "present", EXACT)
    assert (verdict.match, verdict.abs_error, verdict.rel_error) == (False, 1.0, 0.25)


def test_a_status_difference_is_a_mismatch_even_with_equal_values() -> None:
    # A default served where offline has a value, and the catalog default equal to it.
    assert not compare(0, "default", 0, "present", EXACT).match
    assert not compare(5, "present", 0, "not_found", EXACT).match
    assert compare(None, "stale", None, "stale", EXACT).match


def test_non_numbers_compare_exactly_and_have_no_error() -> None:
    verdict = compare("gold", "present", "gold", "present", EXACT)
    assert (verdict.match, verdict.abs_error) == (True, None)
    assert not compare("gold", "present", "silver", "present", EXACT).match
    assert not compare(True, "present", 1, "present", EXACT).match


def test_relative_error_against_an_offline_zero_is_infinite_unless_equal() -> None:
    assert compare(0.0, "present", 0.0, "present", EXACT).rel_error == 0.0
    assert compare(2.0, "present", 0.0, "present", EXACT).rel_error == float("inf")


def test_the_report_counts_per_feature_and_keeps_mismatch_examples() -> None:
    entries = [
        _entry("tx_count_1h", 3),
        _entry("tx_count_1h", 4, entity_id="u_2"),
        _entry("spend_sum_1h", 10.0),
    ]
    offline = [(3, "present"), (2, "present"), (10.0, "present")]
    reports = build_report(entries, offline, EXACT)
    count = reports["user_spend:tx_count_1h"].figures()
    assert (count["samples"], count["matches"], count["mismatches"]) == (2, 1, 1)
    assert (count["max_abs_error"], count["mean_abs_error"]) == (2.0, 1.0)
    assert count["max_rel_error"] == 1.0
    assert [(e["entity_id"], e["served"], e["offline"]) for e in count["examples"]] == [
        ("u_2", 4, 2)
    ]
    assert reports["user_spend:spend_sum_1h"].figures()["mismatches"] == 0
    assert failing(reports, 0.4) == ["user_spend:tx_count_1h"]
    assert failing(reports, 0.5) == []


def _events(rows: list[tuple[str, int, float, int]]) -> pa.Table:
    """(user, event time, amount, ingested at) rows of the raw events table."""
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "merchant_id": ["m1"] * len(rows),
            "amount": [r[2] for r in rows],
            "event_time_ms": pa.array([r[1] for r in rows], pa.int64()),
            "_partition": pa.array([0] * len(rows), pa.int32()),
            "_offset": pa.array(range(len(rows)), pa.int64()),
            "_ingested_at_ms": pa.array([r[3] for r in rows], pa.int64()),
        }
    )


def test_recompute_is_as_of_the_answer_and_ignores_data_ingested_after_it() -> None:
    at = T0 + HOUR_MS
    events = _events(
        [
            ("u_1", at - 10 * MINUTE_MS, 5.0, at - 9 * MINUTE_MS),
            ("u_1", at - 5 * MINUTE_MS, 7.0, at - 4 * MINUTE_MS),
            ("u_1", at - 2 * MINUTE_MS, 100.0, at + MINUTE_MS),  # late: ingested after
            ("u_1", at + MINUTE_MS, 1.0, at + 2 * MINUTE_MS),  # after the answer
        ]
    )
    entries = [
        _entry("tx_count_1h", 2, as_of_ms=at),
        _entry("spend_sum_1h", 12.0, as_of_ms=at),
        _entry("tx_count_1h", 0, status="not_found", entity_id="u_9", as_of_ms=at),
        _entry("tx_count_1h", 1, as_of_ms=at - 8 * MINUTE_MS),
    ]
    offline = recompute(entries, CATALOG, events)
    assert offline == [(2, "present"), (12.0, "present"), (0, "not_found"), (1, "present")]
    reports = build_report(entries, offline, EXACT)
    assert all(r.mismatches == 0 for r in reports.values())


def test_a_skewed_answer_is_reported_on_its_feature_only() -> None:
    at = T0 + HOUR_MS
    events = _events([("u_1", at - 10 * MINUTE_MS, 5.0, at - 9 * MINUTE_MS)])
    entries = [_entry("tx_count_1h", 1, as_of_ms=at), _entry("spend_sum_1h", 6.0, as_of_ms=at)]
    reports = build_report(entries, recompute(entries, CATALOG, events), EXACT)
    assert {ref: r.mismatches for ref, r in reports.items()} == {
        "user_spend:spend_sum_1h": 1,
        "user_spend:tx_count_1h": 0,
    }


def test_the_cli_defaults_and_threshold() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--region", "eu-west", "--max-mismatch-share", "0"])
    assert (args.region, args.max_mismatch_share, args.since) == ("eu-west", 0.0, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-mismatch-share", "lots"])
