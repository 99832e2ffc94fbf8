"""Where tiles and completeness markers live in a region's Redis: one server or a Redis Cluster.

A Redis Cluster runs a script only when all its keys hash to one slot, so the tile keys of a batch
cannot share one global marker there. The layout groups keys into *buckets* instead, and each
bucket is a unit of storage and of completeness:

- ``SINGLE`` (one ``redis-server``): one bucket; keys are stored as ``features.keys`` spells them
  and the marker is ``fl:meta:epoch``, the layout single servers have always had.
- ``CLUSTER``: :data:`CLUSTER_BUCKETS` buckets. An entity's bucket comes from its encoded id (the
  key's last part), so every view of one entity shares a bucket. A stored key is the online key
  with the bucket's hash tag appended (``fl:default:user_spend:v1:u_42:{7154}``): the prefix of a
  view version still matches every key of it, and the tag alone picks the slot. The bucket's
  marker ``fl:meta:epoch:{7154}`` carries the same tag, so a guarded write of one bucket is one
  single-slot script.

Invariants: a key's bucket depends only on its entity part and :data:`CLUSTER_BUCKETS`; bucket
``b``'s tag hashes to a slot in the ``b``-th of ``CLUSTER_BUCKETS`` equal slot ranges, so the
contiguous ranges a cluster's masters own hold equal shares of the buckets; ``features.keys``
keys contain no braces, so the appended tag is the only one a stored key has.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from regions.tiles import TileWrite

# 64: more buckets than masters any sizing in docs/scale.md plans (a bucket is the smallest unit a
# resharding moves), few enough that a 100-entity read adds at most 64 marker GETs.
CLUSTER_BUCKETS = 64
SINGLE_MARKER = "fl:meta:epoch"


@cache
def bucket_tags(buckets: int) -> tuple[str, ...]:
    """Per bucket, the shortest decimal tag whose slot lies in that bucket's slot range."""
    span = REDIS_CLUSTER_HASH_SLOTS // buckets
    tags: list[str | None] = [None] * buckets
    missing, n = buckets, 0
    while missing:
        candidate = str(n)
        bucket = min(key_slot(candidate.encode()) // span, buckets - 1)
        if tags[bucket] is None:
            tags[bucket], missing = candidate, missing - 1
        n += 1
    return tuple(t for t in tags if t is not None)


def entity_bucket(key: str, buckets: int) -> int:
    """The bucket of an online key: a hash of its entity part (the text after the last ``:``)."""
    entity = key.rpartition(":")[2]
    return zlib.crc32(entity.encode()) % buckets


@dataclass(frozen=True)
class RedisLayout:
    """How logical online keys map to stored keys, buckets and markers (see the module doc)."""

    buckets: int
    marker: str = SINGLE_MARKER

    @property
    def tagged(self) -> bool:
        return self.buckets > 1

    def bucket_of(self, key: str) -> int:
        return entity_bucket(key, self.buckets) if self.tagged else 0

    def stored_key(self, key: str) -> str:
        if not self.tagged:
            return key
        return f"{key}:{{{bucket_tags(self.buckets)[self.bucket_of(key)]}}}"

    def marker_key(self, bucket: int) -> str:
        if not self.tagged:
            return self.marker
        return f"{self.marker}:{{{bucket_tags(self.buckets)[bucket]}}}"

    def pending_key(self, bucket: int) -> str:
        """The bucket's rehydration in force (``regions.rehydration``), in its marker's slot."""
        if not self.tagged:
            return f"{self.marker}:pending"
        return f"{self.marker}:pending:{{{bucket_tags(self.buckets)[bucket]}}}"

    @property
    def all_buckets(self) -> range:
        return range(self.buckets)

    def buckets_of(self, keys: Iterable[str]) -> list[int]:
        """The distinct buckets of ``keys``, in first-seen order."""
        return list(dict.fromkeys(self.bucket_of(key) for key in keys))

    def group(self, writes: Sequence[TileWrite]) -> dict[int, list[TileWrite]]:
        """``writes`` by bucket, each group in batch order (one guarded script call each)."""
        groups: dict[int, list[TileWrite]] = {}
        for write in writes:
            groups.setdefault(self.bucket_of(write.key), []).append(write)
        return groups


SINGLE = RedisLayout(buckets=1)
CLUSTER = RedisLayout(buckets=CLUSTER_BUCKETS)
