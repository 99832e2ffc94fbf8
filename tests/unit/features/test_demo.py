from __future__ import annotations

from datetime import timedelta

from features.catalog import Aggregation, FieldType
from features.demo import card_transactions_catalog
from features.tiles import TileSpec


def test_source_matches_the_fixed_event_schema() -> None:
    catalog = card_transactions_catalog()
    source = catalog.source("card_tx")
    assert (source.topic, source.partitions, source.key_field) == ("fl.card_tx", 8, "user_id")
    assert source.fields == {
        "event_id": FieldType.STRING,
        "seq": FieldType.INT,
        "event_type": FieldType.STRING,
        "user_id": FieldType.STRING,
        "merchant_id": FieldType.STRING,
        "amount": FieldType.FLOAT,
        "currency": FieldType.STRING,
        "event_time_ms": FieldType.INT,
    }
    assert source.event_types == frozenset({"card_tx"})
    assert (source.event_time_field, source.event_type_field) == ("event_time_ms", "event_type")
    assert (source.out_of_orderness_ms, source.allowed_lateness_ms) == (5_000, 30_000)
    assert (source.max_future_skew_ms, source.max_payload_bytes) == (60_000, 4096)


def test_views_and_defaults() -> None:
    catalog = card_transactions_catalog()
    user = catalog.view("user_spend")
    assert [f.name for f in user.features] == [
        "tx_count_5m",
        "tx_count_1h",
        "tx_count_24h",
        "spend_sum_1h",
        "spend_sum_24h",
        "spend_mean_24h",
        "spend_max_1h",
        "spend_min_1h",
        "last_amount",
        "distinct_merchants_24h",
        "amount_cusum",
        "tx_count_7d",
    ]
    assert user.ttl == timedelta(days=8) and user.version == 1
    for feature in user.features:
        if feature.aggregation in (Aggregation.COUNT, Aggregation.DISTINCT_COUNT):
            assert feature.default == 0
        if feature.aggregation is Aggregation.SUM:
            assert feature.default == 0.0
        if feature.aggregation in (Aggregation.MIN, Aggregation.MAX, Aggregation.LAST):
            assert feature.default is None
    assert user.feature("distinct_merchants_24h").column == "merchant_id"
    assert user.feature("amount_cusum").window is None
    assert user.feature("tx_count_7d").tile_spec == TileSpec(7 * 86_400_000, 4 * 3_600_000)
    merchant = catalog.view("merchant_activity")
    assert [f.name for f in merchant.features] == [
        "tx_count_1h",
        "spend_sum_24h",
        "distinct_users_1h",
    ]
    # Keyed by another field than the topic: one merchant's partial tiles come from every partition.
    source = catalog.source(merchant.source)
    assert merchant.key_field(catalog) == "merchant_id" != source.key_field
    assert user.key_field(catalog) == source.key_field == "user_id"


def test_fraud_service_resolves_and_needs_both_entities() -> None:
    catalog = card_transactions_catalog()
    refs = catalog.service("fraud_v1").features
    assert all(catalog.feature(ref) for ref in refs)
    assert {catalog.resolve(ref)[0].entity for ref in refs} == {"user", "merchant"}
