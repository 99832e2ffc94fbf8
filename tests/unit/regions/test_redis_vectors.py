"""A view version's vectors in a region's Redis: writes with the marker read in the same round trip,
a full copy's marker, dropping every key of the version and nothing else, errors mapped."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any

import pytest
import redis.exceptions as rex
from pydantic import SecretStr

from features.embeddings import vector_key, vector_marker_key
from features.errors import StoreUnavailable
from regions.config import RegionConfig
from regions.redis_store import RedisRole, RedisTimeouts, redis_client
from regions.redis_vectors import RedisVectorStore


class FakeRedis:
    """The commands the vector store uses, on a dict; ``down`` makes every command fail."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise rex.ConnectionError("Connection refused")

    def get(self, key: str) -> bytes | None:
        self._check()
        return self.data.get(key)

    def set(self, key: str, value: bytes | str, xx: bool = False) -> bool | None:
        self._check()
        if xx and key not in self.data:
            return None
        self.data[key] = value.encode() if isinstance(value, str) else value
        return True

    def delete(self, *keys: str) -> int:
        self._check()
        return sum(self.data.pop(k, None) is not None for k in keys)

    def unlink(self, *keys: bytes) -> int:
        return self.delete(*(k.decode() for k in keys))

    def scan_iter(self, match: str, count: int) -> Iterator[bytes]:
        self._check()
        pattern = match.replace("\\", "")  # our names hold no glob characters
        return iter([k.encode() for k in list(self.data) if fnmatch.fnmatchcase(k, pattern)])

    def pipeline(self, transaction: bool) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self._calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self._calls.append((name, args))

    def execute(self) -> list[Any]:
        self._redis._check()
        return [getattr(self._redis, name)(*args) for name, args in self._calls]


def test_writes_set_and_delete_vectors_and_say_whether_the_store_was_complete() -> None:
    fake = FakeRedis()
    fake.data[vector_key("items", "v1", "gone")] = b"old"
    store = RedisVectorStore(fake, "redis-us-east", "items", "v1")  # type: ignore[arg-type]
    assert store.write({"a": b"\x01\x02\x03\x04", "gone": None}) is False  # no marker yet
    assert fake.data == {vector_key("items", "v1", "a"): b"\x01\x02\x03\x04"}
    store.begin_sync()
    assert store.write({}) is False  # syncing is not complete
    assert store.end_sync() is True
    assert store.write({}) is True


def test_a_copy_is_not_marked_complete_when_the_store_was_emptied_meanwhile() -> None:
    fake = FakeRedis()
    store = RedisVectorStore(fake, "redis-us-east", "items", "v1")  # type: ignore[arg-type]
    store.begin_sync()
    fake.data.clear()  # Redis restarted empty during the copy
    assert store.end_sync() is False
    assert vector_marker_key("items", "v1") not in fake.data


def test_drop_deletes_every_vector_of_the_version_and_its_marker_only() -> None:
    fake = FakeRedis()
    store = RedisVectorStore(fake, "redis-us-east", "items", "v1")  # type: ignore[arg-type]
    store.write({f"e{i}": b"v" for i in range(1200)})
    store.begin_sync()
    other = RedisVectorStore(fake, "redis-us-east", "items", "v10")  # type: ignore[arg-type]
    other.write({"e1": b"w"})
    fake.data["fl:meta:epoch"] = b"ready"
    assert store.drop(batch=500) == 1200
    assert sorted(fake.data) == [
        "fl:emb:items:v10:e1",  # v1's pattern must not match v10
        "fl:meta:epoch",
    ]
    assert store.drop() == 0  # idempotent


def test_redis_errors_are_mapped_to_transport_errors() -> None:
    fake = FakeRedis()
    fake.down = True
    store = RedisVectorStore(fake, "redis-us-east", "items", "v1")  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable, match="redis-us-east"):
        store.write({"a": b"v"})
    with pytest.raises(StoreUnavailable):
        store.drop()


def test_a_real_client_to_a_closed_port_fails_as_unavailable() -> None:
    class Users:
        admin_user = writer_user = reader_user = "fl-writer"
        redis_admin_password = redis_writer_password = redis_reader_password = SecretStr("w")

    region = RegionConfig(name="us-east", aws_region="us-east-1", redis_port=1, dynamodb_port=2)
    client = redis_client(region, RedisRole.WRITER, Users(), Users(), RedisTimeouts())
    with pytest.raises(StoreUnavailable):
        RedisVectorStore(client, "redis-us-east", "items", "v1").write({"a": b"v"})
