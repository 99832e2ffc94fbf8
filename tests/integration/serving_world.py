"""Both regions' Serve applications on the session stack's Ray head, over tiles written by the
partition processor through the real Redis and DynamoDB writers: the world the serving tests and
the contract test read from (each module's ``world`` fixture deploys it and shuts Serve down)."""

from __future__ import annotations

import contextlib
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import orjson

from actors.processor import PartitionProcessor, RawRecord
from cluster.stack import Stack
from features.catalog import Catalog
from features.demo import SOURCE, card_transactions_catalog
from features.tiles import DAY_MS, MINUTE_MS
from regions.aws import LOCAL_CREDENTIALS, dynamodb_client
from regions.dynamodb_store import DynamoTileWriter
from regions.redis_store import RedisRole, RedisTileWriter, redis_client
from regions.tiles import TileWrite
from serve_apps.config import ApiKey, BreakerSettings, Scope, StoreTimeouts, new_api_key
from serve_apps.deploy import configs_for_stack, deploy

CATALOG = card_transactions_catalog()
READ_KEY = new_api_key()
ADMIN_KEY = new_api_key()
RUN = uuid.uuid4().hex[:8]
PARTITIONS = 4
OPEN_S = 8.0


def _ids(run: str) -> tuple[list[str], list[str], str]:
    """The users, merchants and quiet user of one world. Each world needs ids of its own: the
    stores keep the highest version per field, so a second world written over the same ids (same
    offsets, another ``now``) would be refused and the first world's tiles served instead."""
    return [f"u_{run}_{i}" for i in range(6)], [f"m_{run}_{i}" for i in range(3)], f"u_{run}_quiet"


USERS, MERCHANTS, QUIET_USER = _ids(RUN)


def _events(now_ms: int, run: str) -> list[dict[str, Any]]:
    """Two hours of card transactions ending a minute before ``now_ms``, ids and seqs unique."""
    users, merchants, _ = _ids(run)
    events, t = [], now_ms - 2 * 60 * MINUTE_MS
    for seq in range(400):
        t += 17_000 + (seq * 7919) % 5_000
        events.append(
            {
                "event_id": f"{run}-{seq}",
                "seq": seq,
                "event_type": "card_tx",
                "user_id": users[(seq * 5) % len(users)],
                "merchant_id": merchants[(seq * 3) % len(merchants)],
                "amount": round(1 + (seq * 37 % 1000) / 10, 2),
                "currency": "USD",
                "event_time_ms": min(t, now_ms - MINUTE_MS),
            }
        )
    return events


def _partition(user: str) -> int:
    return zlib.crc32(user.encode()) % PARTITIONS


def _tile_writes(
    catalog: Catalog, events: list[dict[str, Any]], now_ms: int, tenant: str
) -> list[TileWrite]:
    writes: list[TileWrite] = []
    for p in range(PARTITIONS):
        processor = PartitionProcessor(catalog, SOURCE, p, now_ms=lambda: now_ms, tenant=tenant)
        mine = [e for e in events if _partition(e["user_id"]) == p]
        processor.process(
            RawRecord(i, e["user_id"].encode(), orjson.dumps(e)) for i, e in enumerate(mine)
        )
        writes += [c.write for c in processor.drain_changes()]
    return writes


@contextlib.contextmanager
def serving_world(stack: Stack, run: str = RUN) -> Iterator[dict[str, Any]]:
    """Tiles in both regions' Redis and DynamoDB, serving deployed; Serve shut down at the end."""
    now = time.time_ns() // 1_000_000
    events = _events(now, run)
    quiet = [
        dict(
            events[0],
            event_id=f"{run}-q",
            seq=10_000,
            user_id=_ids(run)[2],
            event_time_ms=now - 9 * DAY_MS,
        )
    ]
    tenant = stack.settings.tenant
    writes = _tile_writes(CATALOG, events, now, tenant) + _tile_writes(CATALOG, quiet, now, tenant)
    for region in stack.settings.topology:
        client = redis_client(region, RedisRole.WRITER, stack.settings.redis, stack.secrets)
        RedisTileWriter(client, f"redis-{region.name}").apply(writes)
        client.close()
        DynamoTileWriter(region, region.dynamodb_table, dynamodb_client).apply(writes)
    configs = configs_for_stack(
        stack.settings,
        [
            ApiKey.from_raw("tests", READ_KEY),
            ApiKey.from_raw("ops", ADMIN_KEY, frozenset({Scope.ADMIN})),
        ],
        dynamodb_credentials=(
            LOCAL_CREDENTIALS["aws_access_key_id"],
            LOCAL_CREDENTIALS["aws_secret_access_key"],
        ),
        # moto answers a Query in milliseconds when idle but in hundreds of them on a loaded
        # 2-core machine; the fallback test checks the order of the chain, not moto's speed.
        timeouts=StoreTimeouts(dynamodb_s=2.0),
        # Open for 8 s, so that the first breaker to open is still open when the last one does,
        # whatever the machine's speed; 3 failures in a minute open one.
        breaker=BreakerSettings(min_calls=3, window_s=60.0, open_s=OPEN_S),
        # Breaker state is per replica, and the breaker tests read one replica's /v1/stores.
        replicas=1,
    )
    port = stack.settings.ray.serve_port
    deploy(configs, ray_address=stack.settings.ray.address, http_port=port)
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, timeout=10.0)
    try:
        for region in stack.settings.topology.names:
            wait_ready(http, region)
        yield {"events": events, "http": http, "base": base, "now": now, "configs": configs}
    finally:
        http.close()
        shutdown_serve()


def shutdown_serve(timeout_s: float = 60.0) -> None:
    """Shut Serve down and return only once its controller is gone: ``serve.shutdown`` kills the
    controller without waiting, and a module that deploys right after could be handed the dying
    controller (``ActorDiedError: ... killed by ray.kill``)."""
    import ray
    from ray import serve

    serve.shutdown()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
        except ValueError:
            break
        time.sleep(0.5)
    ray.shutdown()


def wait_ready(http: httpx.Client, region: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if http.get(f"/{region}/v1/ready").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{region} never became ready")
