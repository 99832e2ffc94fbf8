from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as rex
from pydantic import SecretStr

from features.blocks import block_field, block_partition
from features.errors import DataError, StoreTimeout, StoreUnavailable
from regions.config import default_topology
from regions.exceptions import DeadlineExceeded, StoreRejected
from regions.redis_store import (
    RedisRole,
    RedisTileReader,
    RedisTileWriter,
    _live,
    _script_arguments,
    redis_client,
)
from regions.resilience import Deadline
from regions.tiles import (
    TAG_FLOOR,
    TileWrite,
    coalesce,
    decode_field,
    encode_field,
    floor_field,
    supersedes,
)
from tests.unit.regions.fakes import FakeClock


def _w(field: str, version: int, value: bytes | None = b"v", key: str = "fl:k") -> TileWrite:
    return TileWrite(key, field, value, version, ttl_ms=1000)


def test_field_encoding_round_trips_and_orders_by_version() -> None:
    encoded = encode_field(_w("f", 2**40 + 3, b"payload"))
    assert encoded[:8] == (2**40 + 3).to_bytes(8, "big")
    assert encoded[8] == 1
    assert decode_field(encoded) == (2**40 + 3, b"payload")
    assert decode_field(encode_field(_w("f", 9, None))) == (9, None)
    assert decode_field(encode_field(_w("f", 9, b""))) == (9, b"")  # empty is not a tombstone


def test_tile_write_validates_version_and_ttl() -> None:
    with pytest.raises(DataError):
        _w("f", -1)
    with pytest.raises(DataError):
        _w("f", 2**64)
    with pytest.raises(DataError):
        TileWrite("fl:k", "f", b"", 1, ttl_ms=0)


def test_supersedes_prefers_higher_version_and_deletes_on_ties() -> None:
    assert supersedes(_w("f", 2), _w("f", 1))
    assert not supersedes(_w("f", 1), _w("f", 2))
    assert supersedes(_w("f", 2, None), _w("f", 2))
    assert not supersedes(_w("f", 2), _w("f", 2, None))
    assert not supersedes(_w("f", 2), _w("f", 2))


def test_coalesce_is_order_independent() -> None:
    batch = [_w("f", 1, b"a"), _w("f", 3, b"c"), _w("f", 2, b"b"), _w("g", 1)]
    assert coalesce(batch) == coalesce(list(reversed(batch)))[::-1]
    assert [w.value for w in coalesce(batch) if w.field == "f"] == [b"c"]


def test_script_arguments_group_by_key_with_the_longest_ttl() -> None:
    writes = [
        TileWrite("fl:a", "f", b"1", 1, ttl_ms=500),
        TileWrite("fl:b", "f", None, 2, ttl_ms=700),
        TileWrite("fl:a", "g", b"2", 1, ttl_ms=900),
    ]
    keys, args = _script_arguments(writes, str)
    assert keys == ["fl:a", "fl:b"]
    assert args == [
        900,
        2,
        "f",
        encode_field(writes[0]),
        "~f:f",
        "g",
        encode_field(writes[2]),
        "~f:g",
        700,
        1,
        "f",
        encode_field(writes[1]),
        "~f:f",
    ]


def test_a_block_field_has_its_partitions_floor_and_floors_never_look_like_blocks() -> None:
    # The floor is per (key, source partition): that partition's changelog is in offset order.
    assert floor_field(block_field(3)) == "~p3"
    assert floor_field(block_field(4)) == "~p4"
    assert floor_field("f") == "~f:f"  # not a block field: its own guard, like a tombstone
    assert block_partition(floor_field(block_field(3))) is None  # never read as a block


def test_readers_skip_floors_and_legacy_tombstones() -> None:
    floor = (7).to_bytes(8, "big") + bytes([TAG_FLOOR])
    raw = {
        b"u_p1": encode_field(_w("u_p1", 3, b"x")),
        b"~p1": floor,
        b"t10_p1@0": encode_field(_w("t10_p1@0", 2, None)),
    }
    assert _live(raw) == {"u_p1": b"x"}
    assert decode_field(floor) == (7, None)
    with pytest.raises(DataError, match="shorter than its header"):
        _live({b"u_p1": b"\x01"})  # a corrupt field is an error, never a tombstone


class _FailingClient:
    """Stands in for redis.Redis: every command raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def register_script(self, _source: str) -> Any:
        def run(**_kwargs: Any) -> Any:
            raise self.error

        return run

    def pipeline(self, transaction: bool = True) -> Any:
        client = self

        class _Pipe:
            def hgetall(self, _key: str) -> None: ...

            def execute(self) -> Any:
                raise client.error

        return _Pipe()


@pytest.mark.parametrize(
    ("error", "mapped"),
    [
        (rex.TimeoutError("Timeout reading from socket"), StoreTimeout),
        (TimeoutError("timed out"), StoreTimeout),
        (rex.ConnectionError("Connection refused"), StoreUnavailable),
        (ConnectionResetError(104, "reset"), StoreUnavailable),
        (rex.NoPermissionError("NOPERM"), StoreRejected),
        (rex.AuthenticationError("WRONGPASS"), StoreRejected),
    ],
)
def test_redis_errors_are_mapped(error: Exception, mapped: type[Exception]) -> None:
    client: Any = _FailingClient(error)
    with pytest.raises(mapped):
        RedisTileWriter(client, "redis-test").apply([_w("f", 1)])
    with pytest.raises(mapped):
        RedisTileReader(client, "redis-test").get_all(["fl:k"])


def test_spent_deadline_skips_the_call() -> None:
    clock = FakeClock()
    deadline = Deadline(0.0, clock)
    client: Any = _FailingClient(AssertionError("must not be called"))
    with pytest.raises(DeadlineExceeded):
        RedisTileWriter(client, "redis-test").apply([_w("f", 1)], deadline)


def test_client_factory_picks_the_role_user_and_disables_builtin_retry() -> None:
    class Users:
        admin_user, writer_user, reader_user = "fl-admin", "fl-writer", "fl-reader"

    class Passwords:
        redis_admin_password = SecretStr("a")
        redis_writer_password = SecretStr("w")
        redis_reader_password = SecretStr("r")

    region = default_topology().get("eu-west")
    client = redis_client(region, RedisRole.READER, Users(), Passwords())
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("fl-reader", "r")
    assert kwargs["port"] == region.redis_port
    assert kwargs["socket_timeout"] == 0.5
    assert client.get_retry() is not None
    assert client.get_retry().get_retries() == 0  # type: ignore[union-attr]
