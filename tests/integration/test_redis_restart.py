"""A region's Redis restarted by the stack comes back with every tile it acknowledged.

The tiles are written by a Lua script, so the AOF holds them as MULTI/EXEC blocks. Redis before
7.2.x (redis#14541, Debian's 7.0 included) re-checks ACLs at each EXEC while it replays the AOF,
as the ``default`` user. With the stack's first ACL (``user default off`` and no permissions) a
restart dropped every tile but kept the plain-SET completeness marker, so no sink rehydrated the
region and serving returned partial windows.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
import redis

from actors.processor import PartitionProcessor, RawRecord
from cluster.stack import Stack
from features.demo import SOURCE, card_transactions_catalog
from features.keys import DEFAULT_TENANT
from regions.redis_store import RedisRole, RedisTileWriter, redis_client
from regions.tiles import TileWrite
from tests.integration.conftest import isolated_settings

pytestmark = pytest.mark.integration


def _tile_writes(now_ms: int) -> list[TileWrite]:
    processor = PartitionProcessor(card_transactions_catalog(), SOURCE, 0, lambda: now_ms)
    events = [
        {
            "event_id": f"restart-{i}",
            "seq": i,
            "event_type": "card_tx",
            "user_id": f"u_{i % 10:06d}",
            "merchant_id": "m_00001",
            "amount": 10.0,
            "currency": "USD",
            "event_time_ms": now_ms - (300 - i) * 50,
        }
        for i in range(300)
    ]
    processor.process(
        RawRecord(i, e["user_id"].encode(), orjson.dumps(e)) for i, e in enumerate(events)
    )
    return [change.write for change in processor.drain_changes()]


def _contents(admin: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    return {key: admin.hgetall(key) for key in admin.keys(f"fl:{DEFAULT_TENANT}:*")}


def test_a_restarted_redis_keeps_every_tile_the_script_wrote(tmp_path: Path) -> None:
    stack = Stack.build(isolated_settings(tmp_path / "state", with_ray=False), environ={})
    service = stack.service("redis-us-east")
    service.start()
    try:
        region = stack.settings.topology.get("us-east")
        writer = redis_client(region, RedisRole.WRITER, stack.settings.redis, stack.secrets)
        result = RedisTileWriter(writer, "redis-us-east", guarded=False).apply(
            _tile_writes(int(time.time() * 1000))
        )
        writer.close()
        assert result.applied > 0
        before = _contents(service.admin_client())
        assert before, "the script wrote tiles"
        service.stop()
        service.start()
        admin = service.admin_client()
        assert _contents(admin) == before
        assert admin.get("fl:meta:epoch") == b"ready"
        assert all(admin.pttl(key) > 0 for key in before), "the tiles keep their TTL"
    finally:
        service.stop()
