"""Region stores against the real session stack: per-region Redis with ACL users, moto DynamoDB.

Round trips are counted on the client (packets handed to the socket) and cross-checked on the server
with an ``INFO commandstats`` delta read by the admin user.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from cluster.services.dynamodb import dynamodb_client
from cluster.services.redis import RedisService
from cluster.stack import Stack
from features.blocks import block_field
from features.errors import StoreTimeout, StoreUnavailable, TransportError
from features.shards import Shard
from regions.config import RegionConfig
from regions.dynamodb_reader import DynamoTileReader
from regions.dynamodb_store import DynamoTileWriter
from regions.exceptions import StoreNotReady, StoreRejected
from regions.redis_store import (
    STORE_READY,
    STORE_REHYDRATING,
    ApplyResult,
    AsyncRedisTileReader,
    RedisRole,
    RedisTileReader,
    RedisTileWriter,
    RedisTimeouts,
    async_redis_client,
    redis_client,
)
from regions.rehydration import REHYDRATING_ELSEWHERE
from regions.resilience import Deadline
from regions.tiles import TileWrite, decode_field

pytestmark = pytest.mark.integration

TTL_MS = 60_000
FAST = RedisTimeouts(connect_s=0.3, socket_s=0.3)


def _client(
    stack: Stack, region: str, role: RedisRole, timeouts: RedisTimeouts | None = None
) -> Any:
    config = stack.settings.topology.get(region)
    return redis_client(config, role, stack.settings.redis, stack.secrets, timeouts)


@pytest.fixture
def key() -> str:
    return f"fl:test:{uuid.uuid4().hex[:10]}"


@pytest.fixture
def us_east(stack: Stack) -> Iterator[tuple[RedisTileWriter, RedisTileReader, Any]]:
    writer = _client(stack, "us-east", RedisRole.WRITER)
    reader = _client(stack, "us-east", RedisRole.READER)
    admin = _client(stack, "us-east", RedisRole.ADMIN, RedisTimeouts(socket_s=5.0))
    yield RedisTileWriter(writer, "redis-us-east"), RedisTileReader(reader, "redis-us-east"), admin
    for client in (writer, reader, admin):
        client.close()


def _w(key: str, field: str, version: int, value: bytes | None, ttl_ms: int = TTL_MS) -> TileWrite:
    return TileWrite(key, field, value, version, ttl_ms)


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts writes to a Redis socket: one per round trip for these single-reply-batch calls."""
    counted: list[int] = []
    original: Callable[..., None] = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        counted.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return counted


def _calls(admin: Any, command: str) -> int:
    stats = admin.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


# --- Redis: guarded writes -------------------------------------------------------------------


def test_newer_wins_older_is_ignored_and_replay_is_a_no_op(us_east: Any, key: str) -> None:
    writer, reader, admin = us_east
    assert writer.apply([_w(key, "f", 2, b"two"), _w(key, "g", 1, b"g1")]) == ApplyResult(2, 0)
    assert writer.apply([_w(key, "f", 1, b"one")]) == ApplyResult(0, 1)
    assert reader.get_all([key]) == {key: {"f": b"two", "g": b"g1"}}

    batch = [_w(key, "f", 3, b"three"), _w(key, "g", 1, b"g1")]
    assert writer.apply(batch) == ApplyResult(1, 1)
    before = admin.hgetall(key)
    assert writer.apply(batch) == ApplyResult(0, 2)
    assert admin.hgetall(key) == before
    assert decode_field(before[b"f"]) == (3, b"three")


def test_delete_applies_at_equal_version_and_blocks_older_writes(us_east: Any, key: str) -> None:
    writer, reader, _ = us_east
    writer.apply([_w(key, "f", 5, b"five"), _w(key, "g", 1, b"g")])
    assert writer.apply([_w(key, "f", 4, None)]) == ApplyResult(0, 1)  # older delete: ignored
    assert writer.apply([_w(key, "f", 5, None)]) == ApplyResult(1, 0)
    assert reader.get_all([key]) == {key: {"g": b"g"}}
    assert writer.apply([_w(key, "f", 5, b"five")]) == ApplyResult(0, 1)  # no resurrection
    assert writer.apply([_w(key, "f", 6, b"six")]) == ApplyResult(1, 0)
    assert reader.get_fields({key: ["f", "nope"]}) == {key: {"f": b"six"}}


# --- Redis: deletes drop the field, a per-(key, partition) floor blocks resurrection -----------

P3_OLD, P3_NEW, P4_OLD = "t10000_p3@0", "t10000_p3@10000", "t10000_p4@0"  # any field names
P3, P4 = block_field(3), block_field(4)  # the blocks of source partitions 3 and 4


def _changelog(key: str) -> list[TileWrite]:
    """The changelog of one key as the processors emit it: one block per source partition,
    rewritten at the newest offset folded in; partition 3's block is deleted at offset 5 when its
    entity lost every tile, then written again; partition 4 has its own, unrelated offsets."""
    return [
        _w(key, P3, 1, b"p3-1"),
        _w(key, P4, 2, b"p4-2"),
        _w(key, P3, 3, b"p3-3"),
        _w(key, P3, 5, None),
        _w(key, P3, 7, b"p3-7"),
    ]


def test_delete_drops_the_field_and_no_replayed_prefix_changes_anything(
    us_east: Any, key: str
) -> None:
    writer, reader, admin = us_east
    log = _changelog(key)
    for write in log:  # one batch per record: every record meets the state its predecessors left
        writer.apply([write])
    live = {P4: b"p4-2", P3: b"p3-7"}
    assert reader.get_all([key])[key] == live
    stored = admin.hgetall(key)
    # Only live blocks plus one floor for partition 3, at the delete's version: no tombstone.
    assert sorted(stored) == sorted([f.encode() for f in live] + [b"~p3"])
    assert decode_field(stored[b"~p3"]) == (5, None)
    for end in range(1, len(log) + 1):
        assert writer.apply(log[:end]).applied == 0  # a prefix as one batch
        for write in log[:end]:
            assert writer.apply([write]).applied == 0  # and record by record
        assert admin.hgetall(key) == stored


def test_a_replayed_older_write_never_resurrects_a_deleted_block(us_east: Any, key: str) -> None:
    writer, reader, admin = us_east
    writer.apply([_w(key, P3, 3, b"p3-3"), _w(key, P4, 2, b"p4")])
    assert writer.apply([_w(key, P3, 5, None)]) == ApplyResult(1, 0)
    assert writer.apply([_w(key, P3, 3, b"p3-3")]) == ApplyResult(0, 1)
    assert writer.apply([_w(key, P3, 5, b"tie")]) == ApplyResult(0, 1)  # a delete wins a tie
    assert writer.apply([_w(key, P3, 4, None)]) == ApplyResult(0, 1)  # older delete: no-op
    assert reader.get_all([key])[key] == {P4: b"p4"}
    # The floor is per partition: partition 4's offsets are not comparable with partition 3's.
    assert writer.apply([_w(key, P4, 3, b"p4-3")]) == ApplyResult(1, 0)
    # A newer write of partition 3 (a later commit) is accepted.
    assert writer.apply([_w(key, P3, 6, b"later")]) == ApplyResult(1, 0)
    assert decode_field(admin.hget(key, "~p3")) == (5, None)


def test_writes_that_precede_a_delete_in_the_same_batch_are_applied(us_east: Any, key: str) -> None:
    writer, reader, _ = us_east
    writer.apply([_w(key, P3_OLD, 1, b"old")])
    # One commit: write P3_NEW at 4, then evict P3_OLD at the commit's last offset, 9.
    assert writer.apply([_w(key, P3_NEW, 4, b"new"), _w(key, P3_OLD, 9, None)]) == ApplyResult(2, 0)
    assert reader.get_all([key])[key] == {P3_NEW: b"new"}


def test_a_legacy_tombstone_is_dropped_by_the_next_delete(us_east: Any, key: str) -> None:
    writer, reader, admin = us_east
    admin.hset(key, P3, (4).to_bytes(8, "big") + b"\x00")  # a legacy tombstone
    assert writer.apply([_w(key, P3, 3, b"older")]) == ApplyResult(0, 1)
    assert writer.apply([_w(key, P3, 8, None)]) == ApplyResult(1, 0)
    assert sorted(admin.hgetall(key)) == [b"~p3"]
    assert reader.get_all([key])[key] == {}


# --- Redis: the completeness marker ------------------------------------------------------------


def test_marker_guards_writes_and_reads(stack: Stack, key: str) -> None:
    """A guarded writer refuses to write into a store that lost its marker; serving's reader (the
    read-only user) reads the marker in the same round trip and refuses an incomplete store."""
    marker = f"{key}:marker"
    writer_client = _client(stack, "us-east", RedisRole.WRITER)
    reader_client = _client(stack, "us-east", RedisRole.READER)
    try:
        guarded = RedisTileWriter(writer_client, "redis-us-east", guarded=True, marker=marker)
        with pytest.raises(StoreNotReady):
            guarded.apply([_w(key, P3_OLD, 1, b"x")])
        assert writer_client.exists(key) == 0  # refused atomically: nothing written
        assert guarded.store_state() is None
        assert guarded.mark_ready() is False  # never declares a store it did not rehydrate ready
        guarded.begin_rehydration()
        assert guarded.apply([_w(key, P3_OLD, 1, b"x")]) == ApplyResult(1, 0)
        assert _ready_read(stack, key, marker) == "StoreNotReady"
        assert guarded.mark_ready() is True
        assert _ready_read(stack, key, marker) == {P3_OLD: b"x"}
        writer_client.delete(marker)  # the store "lost its data"
        assert _ready_read(stack, key, marker) == "StoreNotReady"
        assert reader_client.get(marker) is None  # the reader may read the marker...
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader_client.set(marker, b"ready")  # ...and never forge it
        seeding = RedisTileWriter(writer_client, "redis-us-east", marker=marker)
        seeding.apply([_w(key, P3_NEW, 2, b"y")])
        assert seeding.store_state() == STORE_READY  # a seeding tool declares its data complete
    finally:
        writer_client.delete(marker)
        writer_client.close()
        reader_client.close()


def test_sink_shards_share_a_rehydration_and_the_last_one_out_marks_it_ready(
    stack: Stack, key: str
) -> None:
    """Two sink shards of one Redis (``regions.rehydration``) on the real server: the store is
    served again only once both replayed; a shard whose epoch was lost since declares nothing."""
    marker = f"{key}:marker"
    client = _client(stack, "us-east", RedisRole.WRITER)
    try:
        first, second = (
            RedisTileWriter(client, "redis-us-east", guarded=True, marker=marker, shard=Shard(i, 2))
            for i in range(2)
        )
        first.begin_rehydration()
        assert second.shard_states() == {0: STORE_REHYDRATING}, "its part is still to do"
        second.begin_rehydration()  # joins the epoch the first began
        assert first.apply([_w(key, P3_OLD, 1, b"x")]) == ApplyResult(1, 0)
        assert first.mark_ready() is True
        assert first.shard_states() == {0: REHYDRATING_ELSEWHERE}
        assert _ready_read(stack, key, marker) == "StoreNotReady", "the second is not done"
        client.delete(marker, f"{marker}:pending")  # lost again, mid-replay
        first.begin_rehydration()  # the first to notice starts a new epoch
        assert second.mark_ready() is False, "its replay went into data lost since"
        assert second.shard_states() == {0: STORE_REHYDRATING}
        second.begin_rehydration()
        assert [second.mark_ready(), first.mark_ready()] == [True, True]
        assert client.get(marker) == STORE_READY
        assert client.exists(f"{marker}:pending") == 0, "a finished rehydration leaves nothing"
    finally:
        client.delete(marker, f"{marker}:pending", key)
        client.close()


def _ready_read(stack: Stack, key: str, marker: str) -> Any:
    async def read() -> Any:
        client = async_redis_client(
            stack.settings.topology.get("us-east"),
            RedisRole.READER,
            stack.settings.redis,
            stack.secrets,
        )
        try:
            reader = AsyncRedisTileReader(client, "redis-us-east", marker=marker)
            return (await reader.get_all_ready([key]))[key]
        except StoreNotReady as exc:
            return type(exc).__name__
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_versions_above_2_pow_53_compare_exactly(us_east: Any, key: str) -> None:
    writer, reader, _ = us_east
    big = 2**60
    writer.apply([_w(key, "f", big + 1, b"newer")])
    assert writer.apply([_w(key, "f", big, b"older")]) == ApplyResult(0, 1)
    assert reader.get_all([key])[key] == {"f": b"newer"}


def test_ttl_is_set_and_never_shortened(us_east: Any, key: str) -> None:
    writer, _, admin = us_east
    writer.apply([_w(key, "f", 1, b"x", ttl_ms=30_000)])
    assert 25_000 < admin.pttl(key) <= 30_000
    writer.apply([_w(key, "f", 2, b"y", ttl_ms=5_000)])
    assert admin.pttl(key) > 25_000
    writer.apply([_w(key, "f", 3, b"z", ttl_ms=90_000)])
    assert admin.pttl(key) > 85_000


def test_a_full_redis_refuses_new_tiles_and_evicts_none_it_holds(us_east: Any, key: str) -> None:
    """The online store is not a cache: past maxmemory a write is refused (the sink backs off and
    retries it, nothing lost), and no tile it acknowledged is dropped to make room."""
    writer, _, admin = us_east
    held = [_w(f"{key}:held:{i}", "f", 1, b"x" * 256) for i in range(50)]
    writer.apply(held)
    evicted = int(admin.info("stats")["evicted_keys"])
    limit = admin.config_get("maxmemory")["maxmemory"]
    used = int(admin.info("memory")["used_memory"])
    try:
        admin.config_set("maxmemory", used // 2)  # full, whatever else the stack holds
        more = [_w(f"{key}:more:{i}", "f", 1, b"y" * 10_240) for i in range(100)]
        with pytest.raises(StoreRejected, match="OutOfMemory"):
            writer.apply(more)
        assert int(admin.info("stats")["evicted_keys"]) == evicted, "tiles were evicted"
    finally:
        admin.config_set("maxmemory", limit)
    assert all(admin.exists(w.key) for w in held), "an acknowledged tile is gone"
    writer.apply(more)  # room again: the retried batch lands whole
    assert all(admin.exists(w.key) for w in more)


def test_a_batch_is_one_round_trip(us_east: Any, key: str, sends: list[int]) -> None:
    writer, reader, admin = us_east
    # Warm up: connect and authenticate both pools, and load the script if the server lacks it.
    sends.clear()
    writer.apply([_w(key, "warm", 1, b"")])
    reader.get_all([key])
    batch = [_w(f"{key}:{n}", f"f{m}", 1, b"v") for n in range(20) for m in range(5)]
    evalsha_before = _calls(admin, "evalsha")
    sends.clear()
    assert writer.apply(batch) == ApplyResult(100, 0)
    assert len(sends) == 1
    assert _calls(admin, "evalsha") - evalsha_before == 1

    keys = [f"{key}:{n}" for n in range(20)]
    hgetall_before = _calls(admin, "hgetall")
    sends.clear()
    got = reader.get_all(keys)
    assert len(sends) == 1
    assert _calls(admin, "hgetall") - hgetall_before == 20
    assert all(len(fields) == 5 for fields in got.values())
    sends.clear()
    reader.get_fields({k: ["f0", "f4"] for k in keys})
    assert len(sends) == 1


def test_reader_role_reads_but_cannot_write(stack: Stack, us_east: Any, key: str) -> None:
    writer, _, _ = us_east
    writer.apply([_w(key, "f", 1, b"x")])
    reader_client = _client(stack, "us-east", RedisRole.READER)
    try:
        assert RedisTileReader(reader_client, "redis-us-east").get_all([key])[key] == {"f": b"x"}
        with pytest.raises(StoreRejected, match="NoPermission"):
            RedisTileWriter(reader_client, "redis-us-east").apply([_w(key, "f", 2, b"y")])
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader_client.hset(key, "f", b"raw")
    finally:
        reader_client.close()


# --- Redis: a server that does not answer ----------------------------------------------------


def test_client_pause_surfaces_as_store_timeout(stack: Stack, us_east: Any, key: str) -> None:
    _, _, admin = us_east
    reader_client = _client(stack, "us-east", RedisRole.READER, FAST)
    reader = RedisTileReader(reader_client, "redis-us-east")
    reader.get_all([key])  # connected and authenticated before the pause
    admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    try:
        started = time.monotonic()
        with pytest.raises(StoreTimeout):
            reader.get_all([key])
        assert time.monotonic() - started < FAST.socket_s + 0.2
    finally:
        reader_client.close()
        admin.execute_command("CLIENT", "UNPAUSE")


def test_an_async_read_past_its_deadline_keeps_its_connection_for_the_next_read(
    stack: Stack, us_east: Any, key: str
) -> None:
    """A timed-out serving read is abandoned, not cancelled mid-reply: its connection returns to
    the pool when the reply lands. Cancelling cost a reconnect per timeout, and under a flood
    that churn (4 to 60 connections and back, each with AUTH) slowed the Redis further."""
    _, _, admin = us_east

    async def scenario() -> tuple[int, dict[str, Any]]:
        client = async_redis_client(
            stack.settings.topology.get("us-east"),
            RedisRole.READER,
            stack.settings.redis,
            stack.secrets,
            RedisTimeouts(connect_s=0.3, socket_s=2.0),
        )
        try:
            reader = AsyncRedisTileReader(client, "redis-us-east")
            await reader.get_all([key])  # one connection, authenticated
            admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
            with pytest.raises(StoreTimeout):
                await reader.get_all([key], Deadline(0.05, time.monotonic))
            await asyncio.sleep(0.6)  # the pause is over and the abandoned reply has landed
            after = await reader.get_all([key], Deadline(0.5, time.monotonic))
            pool = client.connection_pool
            return len(pool._available_connections) + len(pool._in_use_connections), after
        finally:
            await client.aclose()

    connections, after = asyncio.run(scenario())
    assert after == {key: {}}
    assert connections == 1, "the timed-out read's connection was reused, not replaced"


def test_stopped_redis_surfaces_as_a_transport_error(stack: Stack, key: str) -> None:
    service = stack.service("redis-eu-west")
    assert isinstance(service, RedisService)
    process = service.process
    reader_client = _client(stack, "eu-west", RedisRole.READER, FAST)
    writer_client = _client(stack, "eu-west", RedisRole.WRITER, FAST)
    reader = RedisTileReader(reader_client, "redis-eu-west")
    writer = RedisTileWriter(writer_client, "redis-eu-west")
    assert process.signal(signal.SIGSTOP)
    try:
        for call in (lambda: reader.get_all([key]), lambda: writer.apply([_w(key, "f", 1, b"x")])):
            started = time.monotonic()
            with pytest.raises((StoreTimeout, StoreUnavailable)):
                call()
            assert time.monotonic() - started < FAST.connect_s + FAST.socket_s + 0.3
    finally:
        process.signal(signal.SIGCONT)
    try:
        assert writer.apply([_w(key, "f", 1, b"x")]) == ApplyResult(1, 0)  # recovered
        assert reader.get_all([key]) == {key: {"f": b"x"}}
    finally:
        reader_client.close()
        writer_client.close()


# --- DynamoDB --------------------------------------------------------------------------------


@pytest.mark.parametrize("region_name", ["us-east", "eu-west"])
def test_dynamodb_round_trip_and_coalescing(stack: Stack, region_name: str, key: str) -> None:
    region: RegionConfig = stack.settings.topology.get(region_name)
    writer = DynamoTileWriter(region, region.dynamodb_table, dynamodb_client)
    reader = DynamoTileReader(region, region.dynamodb_table, dynamodb_client, consistent=True)
    batch = [_w(key, "f", 1, b"one"), _w(key, "f", 3, b"three"), _w(key, "f", 2, b"two")]
    batch += [_w(f"{key}:{n}", "g", 1, b"%d" % n) for n in range(40)]  # two BatchWriteItem calls
    assert writer.apply(batch) == 41
    assert reader.get_all([key]) == {key: {"f": b"three"}}
    wanted = {f"{key}:{n}": ["g", "absent"] for n in range(40)}
    assert reader.get_fields(wanted) == {f"{key}:{n}": {"g": b"%d" % n} for n in range(40)}

    raw = dynamodb_client(region).get_item(
        TableName=region.dynamodb_table, Key={"pk": {"S": key}, "sk": {"S": "f"}}
    )["Item"]
    assert raw["ver"] == {"N": "3"}
    assert 0 < int(raw["expires_at"]["N"]) - time.time() <= TTL_MS / 1000 + 1

    writer.apply([_w(key, "f", 4, None)])
    assert reader.get_all([key]) == {key: {}}


def test_dynamodb_unreachable_endpoint_is_unavailable(stack: Stack) -> None:
    region = stack.settings.topology.get("us-east").model_copy(update={"dynamodb_port": 1})
    writer = DynamoTileWriter(region, region.dynamodb_table, dynamodb_client, sleep=lambda _: None)
    with pytest.raises(TransportError):
        writer.apply([_w("fl:x", "f", 1, b"x")])
