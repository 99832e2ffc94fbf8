"""Judging a run: what Kafka holds, what every region's stores and HTTP answers say, against the
oracle (:mod:`chaos.oracle`). Used by the chaos drills and by the pipeline's integration tests.

Nothing here trusts the code under test for the expected side: expected values come from
``chaos.oracle`` over the records the broker holds; served values are read back through the
product's own readers (that is what a model would see).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chaos.oracle import LedgerEntry, accepted_events, expected_values
from cluster.settings import DEFAULT_EVENTS_TOPIC, DLQ_TOPIC, Secrets, StackSettings
from features.block_merge import merge_blocks
from features.blocks import BlockLayout, blocks_of
from features.catalog import Catalog
from features.demo import SOURCE, card_transactions_catalog
from features.keys import OnlineKey

CATALOG = card_transactions_catalog()
STORES = ("redis", "dynamodb")
VIEWS = (("user_spend", "user_id"), ("merchant_activity", "merchant_id"))
Target = tuple[str, str]  # (region, store)


def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every committed record of ``topic``, from its beginning to its end at call time."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=500).values():
                out += batch
        return out
    finally:
        consumer.close()


def topic_ledger(
    bootstrap: str, topic: str = DEFAULT_EVENTS_TOPIC, exclude: Iterable[tuple[int, int]] = ()
) -> list[LedgerEntry]:
    """The broker's own record of every event in ``topic`` (all runs count in the same windows)."""
    skip = set(exclude)
    return [
        LedgerEntry(r.partition, r.offset, r.value, r.timestamp)
        for r in read_topic(bootstrap, topic)
        if (r.partition, r.offset) not in skip
    ]


def dead_letters(bootstrap: str) -> list[dict[str, str]]:
    """The headers of every dead letter (reason, source.topic/partition/offset, error.*)."""
    return [{k: v.decode() for k, v in r.headers} for r in read_topic(bootstrap, DLQ_TOPIC)]


def accepted_in_topic(bootstrap: str, catalog: Catalog = CATALOG) -> list[dict[str, Any]]:
    return accepted_events(topic_ledger(bootstrap), catalog, SOURCE)


def served_views(
    settings: StackSettings,
    *,
    secrets: Secrets,
    target: Target,
    view_name: str,
    entities: Sequence[str],
    as_of_ms: int,
) -> dict[str, dict[str, Any]]:
    """``{entity: {feature: value}}`` as one region's store holds it, merged at ``as_of_ms``."""
    from regions.aws import dynamodb_client
    from regions.dynamodb_reader import DynamoTileReader
    from regions.redis_store import RedisRole, RedisTileReader, redis_client

    region, store = target
    view = CATALOG.view(view_name)
    max_id = CATALOG.entity(view.entity).max_id_bytes
    keys = {
        OnlineKey(settings.tenant, view.name, view.version, e).encode(max_id_bytes=max_id): e
        for e in entities
    }
    cfg = settings.topology.get(region)
    if store == "redis":
        client = redis_client(cfg, RedisRole.READER, settings.redis, secrets)
        try:
            fields = RedisTileReader(client, store).get_all(list(keys))
        finally:
            client.close()
    else:
        # One Scan, not a Query per entity: moto answers a Query in ~30 ms, and a settle that
        # read every entity of both regions that way spent 10-20 s per poll.
        fields = DynamoTileReader(cfg, cfg.dynamodb_table, dynamodb_client).scan_all(list(keys))
    layout = BlockLayout.for_view(view)
    stored = list(fields.items())
    merged = merge_blocks(layout, [blocks_of(layout, f) for _, f in stored], as_of_ms)
    return {keys[k]: merged.entity(i) for i, (k, _) in enumerate(stored)}


def close_enough(name: str, got: Any, want: Any) -> bool:
    """Exact, but floats to 1e-6 relative and HyperLogLog distinct counts to its 3 % bound."""
    if isinstance(want, float) and isinstance(got, float):
        return abs(got - want) <= 1e-6 * max(1.0, abs(want))
    if name.startswith("distinct") and isinstance(want, int) and isinstance(got, int):
        return abs(got - want) <= max(1, round(0.03 * want))
    return bool(got == want)


def all_targets(settings: StackSettings) -> list[Target]:
    return [(r, s) for r in settings.topology.names for s in STORES]


def by_entity(
    accepted: Iterable[dict[str, Any]], key_field: str
) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in accepted:
        grouped[event[key_field]].append(event)
    return grouped


def mismatches(
    settings: StackSettings,
    secrets: Secrets,
    accepted: list[dict[str, Any]],
    targets: Sequence[Target] | None = None,
) -> list[str]:
    """Every (store, feature, entity) whose value differs from the oracle; empty when all agree."""
    if not accepted:
        return []
    as_of = max(e["event_time_ms"] for e in accepted)
    problems = []
    for view_name, key_field in VIEWS:
        grouped = by_entity(accepted, key_field)
        expected = {
            entity: expected_values(rows, CATALOG, view_name, entity, as_of)
            for entity, rows in grouped.items()
        }
        for target in targets or all_targets(settings):
            served = served_views(
                settings,
                secrets=secrets,
                target=target,
                view_name=view_name,
                entities=sorted(grouped),
                as_of_ms=as_of,
            )
            for entity, values in expected.items():
                for name, want in values.items():
                    got = served.get(entity, {}).get(name)
                    if not close_enough(name, got, want):
                        problems.append(
                            f"{target[0]}/{target[1]} {view_name}:{name}[{entity}] {got} != {want}"
                        )
    return problems


def wrong_served_values(
    body: Mapping[str, Any], users: Mapping[str, list[dict[str, Any]]]
) -> list[str]:
    """Present values of a native ``/v1/features`` answer that differ from the oracle at the
    answer's own ``as_of_ms``. ``users`` is :func:`by_entity` over the accepted events.

    Only ``present`` values are judged: a default (stale, not found) is the documented answer
    when a store cannot say, whereas a present value that is wrong is the one thing serving must
    never do (for example from a half-rehydrated store)."""
    wrong = []
    as_of = int(body["as_of_ms"])
    for row in body["results"]:
        expected = expected_values(
            users.get(row["id"], []), CATALOG, "user_spend", row["id"], as_of
        )
        for ref, item in row["features"].items():
            name = ref.split(":", 1)[1]
            if item["status"] != "present" or name not in expected:
                continue
            if not close_enough(name, item["value"], expected[name]):
                wrong.append(f"{row['id']} {name}: served {item['value']} != {expected[name]}")
    return wrong


def wait_for_oracle(
    settings: StackSettings,
    secrets: Secrets,
    accepted: list[dict[str, Any]],
    *,
    timeout_s: float = 120,
    targets: Sequence[Target] | None = None,
) -> list[str]:
    """Poll until every target equals the oracle or ``timeout_s`` passes; the last mismatches."""
    deadline = time.monotonic() + timeout_s
    problems = mismatches(settings, secrets, accepted, targets)
    while problems and time.monotonic() < deadline:
        time.sleep(2)
        problems = mismatches(settings, secrets, accepted, targets)
    return problems


def lost_acknowledged(
    bootstrap: str, acknowledged: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Acknowledged (partition, offset) positions that the topic no longer holds."""
    held = {(e.partition, e.offset) for e in topic_ledger(bootstrap)}
    return [pos for pos in acknowledged if pos not in held]
