"""The registry version a region serves, mirrored into that region's Redis.

The registry's record of truth is its compacted Kafka topic (``cluster/registry.py``). Serving
may not speak Kafka, and a region cut off from the others must keep serving the version it has,
so the version to serve is copied into each region's Redis: a hash ``fl:<tenant>:registry`` with
``number`` and ``record`` (the version's encoded registry record, digest included). Whoever knows
that a version is being computed (the pipeline, once its consumers run it) publishes it; Serve
replicas poll ``number`` (one ``HGET``) and read ``record`` only when it moved.

Invariants: the number never goes back (a rollback is a new, higher version with the old
definitions), so a late or repeated publish of an older version changes nothing; ``number`` and
``record`` change together (one script call); a record that does not decode, or whose digest does
not match, is refused by the reader and the replica keeps what it serves.
"""

from __future__ import annotations

from typing import Any

from features.registry import RegistryVersion

# KEYS[1] the hash; ARGV[1] the number, ARGV[2] the record, ARGV[3] the number the hash must hold
# ('' for any lower one). 1 when written, 0 when the hash already holds this number or a higher
# one, or not the one ARGV[3] asks for.
_PUBLISH = """
local current = tonumber(redis.call('HGET', KEYS[1], 'number') or '0')
if current >= tonumber(ARGV[1]) then return 0 end
if ARGV[3] ~= '' and current ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'number', ARGV[1], 'record', ARGV[2])
return 1
"""


def registry_key(tenant: str) -> str:
    """The hash of ``tenant``'s served registry version in a region's Redis."""
    return f"fl:{tenant}:registry"


def publish(
    client: Any, tenant: str, version: RegistryVersion, *, after_parent: bool = False
) -> bool:
    """Make ``version`` the one ``tenant``'s replicas in this region follow, unless the region
    already serves it or a newer one; True when written. ``after_parent``: only where the region
    serves ``version``'s parent, so a rollout step published by the CLI (it changes what is read,
    not what is computed) reaches a region only once the pipeline has rolled it to that parent.
    ``client`` is a synchronous redis-py client of a user allowed to write ``fl:*`` keys."""
    parent = version.parent if after_parent else ""
    args = (registry_key(tenant), version.number, version.encode(), parent)
    return bool(client.eval(_PUBLISH, 1, *args))


async def served_number(client: Any, tenant: str) -> int | None:
    """The number of the version published for ``tenant`` (None: none yet). ``client`` is an
    asyncio redis-py client."""
    raw = await client.hget(registry_key(tenant), "number")
    return None if raw is None else int(raw)


async def served_version(client: Any, tenant: str) -> RegistryVersion | None:
    """The version published for ``tenant``, decoded and checked against its digest (None: none
    yet); ``features.errors.CatalogError`` when the record is unreadable."""
    raw = await client.hget(registry_key(tenant), "record")
    return None if raw is None else RegistryVersion.decode(raw)
