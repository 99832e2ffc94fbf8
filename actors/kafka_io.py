"""The Kafka readers every pipeline actor shares: one place for what all of them must agree on.

Invariants: every reader sees only committed transactions (``read_committed``: a consumer's
changelog records and offsets become visible together, or not at all) and never commits on its
own (``enable_auto_commit=False``: each actor commits its position in its own protocol, Kafka
offsets in a transaction, sink offsets after the store write, Iceberg snapshot properties).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer

from features.errors import ConfigError


def read_committed_consumer(bootstrap: str, group_id: str | None, **settings: Any) -> Any:
    """A ``KafkaConsumer`` with the shared invariants; ``settings`` are the actor's own."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        isolation_level="read_committed",
        **settings,
    )


def topic_partitions(consumer: Any, topics: Iterable[str]) -> dict[str, list[int]]:
    """Every partition of each topic, sorted; a missing topic is a configuration error."""
    out = {}
    for topic in topics:
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise ConfigError(f"topic {topic!r} does not exist or has no partitions")
        out[topic] = sorted(found)
    return out
