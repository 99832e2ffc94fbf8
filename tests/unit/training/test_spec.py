"""Feature references, spine columns and the CLI's cutoff: bad input gets a clear error."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from cluster.training_job import parse_instant_ms
from features.demo import card_transactions_catalog
from features.errors import ConfigError
from training.exceptions import FeatureRefError, SpineError
from training.spec import check_keys, parse_features, spine_times

CATALOG = card_transactions_catalog()


def test_features_are_grouped_by_view_in_request_order() -> None:
    requests = parse_features(
        CATALOG,
        ["user_spend:tx_count_1h", "merchant_activity:tx_count_1h", "user_spend:last_amount"],
    )
    assert [(r.view.name, r.key_column, [f.name for f in r.features]) for r in requests] == [
        ("user_spend", "user_id", ["tx_count_1h", "last_amount"]),
        ("merchant_activity", "merchant_id", ["tx_count_1h"]),
    ]
    assert requests[0].column(requests[0].features[0]) == "user_spend__tx_count_1h"


@pytest.mark.parametrize(
    "refs",
    [
        [],
        ["tx_count_1h"],
        ["nope:tx_count_1h"],
        ["user_spend:nope"],
        ["user_spend:tx_count_1h"] * 2,
    ],
)
def test_bad_feature_references_are_refused(refs: list[str]) -> None:
    with pytest.raises(FeatureRefError):
        parse_features(CATALOG, refs)


def test_spine_timestamps_become_epoch_ms_from_ints_or_timestamps() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    ms = int(at.timestamp() * 1000)
    spine = pa.table(
        {"a": pa.array([ms], pa.int64()), "b": pa.array([at], pa.timestamp("us", tz="UTC"))}
    )
    assert spine_times(spine, "a").to_pylist() == [ms]
    assert spine_times(spine, "b").to_pylist() == [ms]


@pytest.mark.parametrize(
    ("spine", "column"),
    [
        (pa.table({"t": ["2026-01-01"]}), "t"),
        (pa.table({"t": pa.array([None], pa.int64())}), "t"),
        (pa.table({"x": [1]}), "t"),
    ],
)
def test_bad_spine_timestamps_are_refused(spine: pa.Table, column: str) -> None:
    with pytest.raises(SpineError):
        spine_times(spine, column)


def test_the_spine_must_hold_each_view_key_as_strings() -> None:
    requests = parse_features(CATALOG, ["user_spend:tx_count_1h"])
    with pytest.raises(SpineError, match="user_id"):
        check_keys(pa.table({"merchant_id": ["m"]}), requests)
    with pytest.raises(SpineError, match="strings"):
        check_keys(pa.table({"user_id": [1]}), requests)


def test_the_ingestion_cutoff_is_iso_and_utc_without_an_offset() -> None:
    assert parse_instant_ms("2026-01-01T00:00:00") == parse_instant_ms("2026-01-01T00:00:00+00:00")
    assert parse_instant_ms("2026-01-01T01:00:00+01:00") == 1_767_225_600_000
    with pytest.raises(ConfigError):
        parse_instant_ms("yesterday")
