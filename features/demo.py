"""The demo catalog: card transactions, user and merchant features, a fraud feature service.

The event schema is fixed (the generator in ``cluster/`` is written against it): one JSON object
per Kafka message on ``fl.card_tx`` (8 partitions), message key = ``user_id``::

    event_id       string  "<run>-<seq>"
    seq            int     per-run sequence number
    event_type     string  only "card_tx" is valid
    user_id        string  "u_000123"
    merchant_id    string  "m_00042"
    amount         float   > 0
    currency       string  "USD" | "EUR" | "GBP"
    event_time_ms  int     epoch milliseconds, UTC

``merchant_activity`` is keyed by ``merchant_id`` while the topic is keyed by ``user_id``, so one
merchant's events arrive on every partition: each writes partial tiles that readers merge.
"""

from __future__ import annotations

from typing import Any

from features.catalog import Catalog
from features.embeddings import EmbeddingView

SOURCE = "card_tx"
TOPIC = "fl.card_tx"


def _f(name: str, aggregation: str, **kwargs: Any) -> dict[str, Any]:
    return {"name": name, "aggregation": aggregation, **kwargs}


def _count(name: str, window: str) -> dict[str, Any]:
    return _f(name, "count", window=window, default=0)


def card_transactions_catalog() -> Catalog:
    """The demo catalog, validated (building it is the test that it is consistent)."""
    return Catalog.from_dict(
        {
            "entities": [
                {"name": "user", "join_key": "user_id", "max_id_bytes": 64},
                {"name": "merchant", "join_key": "merchant_id", "max_id_bytes": 64},
            ],
            "sources": [
                {
                    "name": SOURCE,
                    "topic": TOPIC,
                    "partitions": 8,
                    "key_field": "user_id",
                    "event_time_field": "event_time_ms",
                    "event_type_field": "event_type",
                    "event_types": ["card_tx"],
                    "fields": {
                        "event_id": "string",
                        "seq": "int",
                        "event_type": "string",
                        "user_id": "string",
                        "merchant_id": "string",
                        "amount": "float",
                        "currency": "string",
                        "event_time_ms": "int",
                    },
                    "out_of_orderness": "5s",
                    "allowed_lateness": "30s",
                    "max_future_skew": "60s",
                    "max_payload_bytes": 4096,
                }
            ],
            "views": [_user_spend(), _merchant_activity()],
            "services": [
                {
                    "name": "fraud_v1",
                    "features": [
                        "user_spend:tx_count_5m",
                        "user_spend:tx_count_1h",
                        "user_spend:tx_count_24h",
                        "user_spend:spend_sum_1h",
                        "user_spend:spend_mean_24h",
                        "user_spend:spend_max_1h",
                        "user_spend:last_amount",
                        "user_spend:distinct_merchants_24h",
                        "user_spend:amount_cusum",
                        "merchant_activity:tx_count_1h",
                        "merchant_activity:distinct_users_1h",
                    ],
                }
            ],
        }
    )


def _user_spend() -> dict[str, Any]:
    return {
        "name": "user_spend",
        "version": 1,
        "entity": "user",
        "source": SOURCE,
        # Longest window is 7d; a day of slack so a quiet user's 7d tiles outlive the window.
        "ttl": "8d",
        "freshness_target": "5s",
        "features": [
            _count("tx_count_5m", "5m"),
            _count("tx_count_1h", "1h"),
            _count("tx_count_24h", "24h"),
            _f("spend_sum_1h", "sum", column="amount", window="1h", default=0.0),
            _f("spend_sum_24h", "sum", column="amount", window="24h", default=0.0),
            _f("spend_mean_24h", "mean", column="amount", window="24h"),
            _f("spend_max_1h", "max", column="amount", window="1h"),
            _f("spend_min_1h", "min", column="amount", window="1h"),
            _f("last_amount", "last", column="amount"),
            _f(
                "distinct_merchants_24h",
                "distinct_count",
                column="merchant_id",
                window="24h",
                default=0,
            ),
            _f("amount_cusum", "cusum", column="amount", default=0.0),
            _count("tx_count_7d", "7d"),
        ],
    }


def _merchant_activity() -> dict[str, Any]:
    return {
        "name": "merchant_activity",
        "version": 1,
        "entity": "merchant",
        "source": SOURCE,
        "ttl": "2d",
        "freshness_target": "10s",
        "features": [
            _count("tx_count_1h", "1h"),
            _f("spend_sum_24h", "sum", column="amount", window="24h", default=0.0),
            _f("distinct_users_1h", "distinct_count", column="user_id", window="1h", default=0),
        ],
    }


ITEM_EMBEDDINGS_TOPIC = "fl.items.embeddings"


def item_embedding_views() -> tuple[EmbeddingView, ...]:
    """The demo's embedding views: item vectors (``cluster/demo.py`` writes them) with a
    category and a price to filter on. Small lists: the demo holds a few thousand items."""
    return (
        EmbeddingView(
            name="items",
            topic=ITEM_EMBEDDINGS_TOPIC,
            dimension=32,
            model="item2vec",
            model_versions=("v1",),
            serving_version="v1",
            categories=frozenset({"category"}),
            numbers=frozenset({"price"}),
            nlist=16,
            nprobe=8,
        ),
    )
