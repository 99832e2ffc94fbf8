from __future__ import annotations

import random

import pytest

from features.exceptions import CorruptState, InvalidEntityId
from features.keys import (
    OnlineKey,
    decode_entity_id,
    encode_entity_id,
    view_prefix,
)

HOSTILE = [
    "u_1:*",
    "*",
    "?",
    "[a-z]",
    "{u_1}",
    "x}{y",
    "a:b:c",
    "acme:user_spend:v1:u_1",
    "../../etc",
    "~",
    "~dV8x",  # looks like an encoded id
    "ü_1",
    "u 1",
    "🙂",
    "\\",
    "fl:other:view:v1:u_1",
]
FORBIDDEN_IN_ENCODED = set(":{}*?[]\\ \t\r\n\x00")


def _random_id(rng: random.Random) -> str:
    alphabet = "ab_-.:*?[]{}~\\ é🙂0"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


def test_plain_ids_are_kept_readable() -> None:
    assert (
        OnlineKey("acme", "user_spend", 1, "u_000123").encode() == "fl:acme:user_spend:v1:u_000123"
    )


@pytest.mark.parametrize("entity_id", HOSTILE)
def test_hostile_ids_stay_inside_their_prefix_and_round_trip(entity_id: str) -> None:
    key = OnlineKey("acme", "user_spend", 1, entity_id).encode()
    prefix = view_prefix("acme", "user_spend", 1)
    assert key.startswith(prefix)
    encoded = key[len(prefix) :]
    assert not FORBIDDEN_IN_ENCODED & set(encoded)
    assert OnlineKey.parse(key) == OnlineKey("acme", "user_spend", 1, entity_id)
    assert decode_entity_id(encoded) == entity_id


def test_random_ids_round_trip_and_never_collide() -> None:
    rng = random.Random(0)
    ids = {_random_id(rng) for _ in range(5_000)}
    keys = {OnlineKey("t", "v", 1, entity_id).encode(): entity_id for entity_id in ids}
    assert len(keys) == len(ids), "two different ids mapped to one key"
    for key, entity_id in keys.items():
        assert OnlineKey.parse(key).entity_id == entity_id
        assert key.count(":") == 4
        assert "{" not in key and "}" not in key  # no id can choose a Redis Cluster hash slot


@pytest.mark.parametrize(
    "entity_id", ["", "a\nb", "a\x00", "\r", "tab\there", "\x7f", "x" * 129, "é" * 65, "\ud800"]
)
def test_invalid_ids_are_refused(entity_id: str) -> None:
    with pytest.raises(InvalidEntityId):
        OnlineKey("acme", "user_spend", 1, entity_id).encode()


def test_max_id_bytes_counts_utf8_bytes() -> None:
    assert encode_entity_id("é" * 64, max_id_bytes=128)
    with pytest.raises(InvalidEntityId):
        encode_entity_id("é" * 64, max_id_bytes=127)
    with pytest.raises(InvalidEntityId):
        encode_entity_id(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tenant", "view", "version"),
    [("Acme", "v", 1), ("a:b", "v", 1), ("t", "v*", 1), ("t", "v", 0), ("t", "{v}", 1)],
)
def test_prefix_parts_are_validated(tenant: str, view: str, version: int) -> None:
    with pytest.raises(InvalidEntityId):
        OnlineKey(tenant, view, version, "u_1").encode()


@pytest.mark.parametrize(
    "key",
    [
        "fl:acme:user_spend:v1",
        "fl:acme:user_spend:v1:u:1",
        "xx:acme:user_spend:v1:u_1",
        "fl:acme:user_spend:v01:u_1",
        "fl:acme:user_spend:v1:~!!",
        "fl:acme:user_spend:v1:~dV8x",  # decodes to "u_1", which is written plain
        "fl:acme:user_spend:v1:~",
        "fl:Acme:user_spend:v1:u_1",
    ],
)
def test_non_canonical_keys_do_not_parse(key: str) -> None:
    with pytest.raises(CorruptState):
        OnlineKey.parse(key)
