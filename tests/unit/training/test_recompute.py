"""The offline recomputation of logged answers: the truth as of the request from every event,
what was known (ingested before the request), what the store had (up to the served watermark)
and by how long the store lagged; each class arises from real events."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from features.demo import card_transactions_catalog
from features.tiles import HOUR_MS, MINUTE_MS
from regions.answer_log import AnswerEntry
from training.recompute import recompute
from training.validate import (
    EQUAL,
    FALLBACK,
    FRESHNESS_LAG,
    LATE_DATA,
    REAL_SKEW,
    Recomputed,
    Tolerance,
    tally,
)

CATALOG = card_transactions_catalog()
EXACT = Tolerance()
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (4 * HOUR_MS)
AT = T0 + HOUR_MS
TARGETS = {"user_spend": 5_000}


def _entry(feature: str, value: Any, status: str = "present", **over: Any) -> AnswerEntry:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "region": "us-east",
        "store": "redis-us-east",
        "as_of_ms": AT,
        "entity": "user",
        "entity_id": "u_1",
        "view": "user_spend",
        "feature": feature,
        "value": value,
        "status": status,
        "event_time_ms": None,
        "watermark_ms": None,
    }
    return AnswerEntry(**{**fields, **over})


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


EVENTS = _events(
    [
        ("u_1", AT - 10 * MINUTE_MS, 5.0, AT - 10 * MINUTE_MS + 100),
        ("u_1", AT - 3_000, 7.0, AT - 2_000),  # arrived 2 s before the request
        ("u_1", AT - 2 * MINUTE_MS, 100.0, AT + MINUTE_MS),  # late: ingested after the request
        ("u_1", AT + MINUTE_MS, 1.0, AT + MINUTE_MS),  # after the request
        ("u_2", AT - 20 * MINUTE_MS, 2.0, AT - 20 * MINUTE_MS + 100),
        ("u_2", AT - 1 * MINUTE_MS, 3.0, AT - 1 * MINUTE_MS + 100),  # arrived a minute before
    ]
)


def _kinds(entries: list[AnswerEntry]) -> tuple[list[Recomputed], list[str]]:
    offline = recompute(entries, CATALOG, EVENTS, EXACT)
    out = []
    for e, r in zip(entries, offline, strict=True):
        (t,) = tally([e], [r], TARGETS, EXACT).values()
        out += [k for k, n in t.counts.items() if n]
    return offline, out


def test_the_truth_counts_every_event_up_to_the_request_including_late_ones() -> None:
    offline, kinds = _kinds(
        [
            _entry("tx_count_1h", 3),
            _entry("spend_sum_1h", 112.0),
            _entry("tx_count_1h", 0, "not_found", entity_id="u_9"),
            _entry("tx_count_1h", 1, as_of_ms=AT - 8 * MINUTE_MS),
        ]
    )
    assert [r.truth for r in offline] == [(3, "present"), (112.0, "present"), (0, "not_found"),
                                          (1, "present")]  # fmt: skip
    assert kinds == [EQUAL] * 4
    assert all(r.known is None for r in offline)  # not computed when not needed


def test_an_answer_without_the_late_event_is_late_data() -> None:
    offline, kinds = _kinds([_entry("tx_count_1h", 2), _entry("spend_sum_1h", 12.0)])
    assert kinds == [LATE_DATA, LATE_DATA]
    assert offline[1].known == (12.0, "present")


def test_a_store_behind_by_an_event_within_the_target_is_freshness_lag() -> None:
    watermark = AT - 10 * MINUTE_MS  # the store has applied the first event only
    offline, kinds = _kinds([_entry("spend_sum_1h", 5.0, watermark_ms=watermark)])
    assert kinds == [FRESHNESS_LAG]
    assert (offline[0].watermark, offline[0].lag_ms) == ((5.0, "present"), 2_000)


def test_a_store_behind_by_more_than_the_target_is_real_skew() -> None:
    watermark = AT - 20 * MINUTE_MS
    offline, kinds = _kinds([_entry("spend_sum_1h", 2.0, entity_id="u_2", watermark_ms=watermark)])
    assert (offline[0].watermark, offline[0].lag_ms) == ((2.0, "present"), MINUTE_MS - 100)
    assert kinds == [REAL_SKEW]


def test_nothing_served_with_no_watermark_is_the_store_missing_the_entity() -> None:
    offline, kinds = _kinds([_entry("tx_count_1h", 0, "not_found", entity_id="u_2")])
    assert offline[0].watermark == (0, "not_found")
    assert kinds == [REAL_SKEW]  # the first event arrived 20 minutes before: far beyond 5 s


def test_defaults_and_other_stores_are_fallback_and_a_wrong_value_is_skew() -> None:
    _, kinds = _kinds(
        [
            _entry("tx_count_1h", 0, "default", store="defaults"),
            _entry("tx_count_1h", 7, store="redis-eu-west"),
            _entry("tx_count_1h", 7, watermark_ms=AT - 3_000),
        ]
    )
    assert kinds == [FALLBACK, FALLBACK, REAL_SKEW]
