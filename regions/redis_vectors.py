"""A region's copy of one embedding view version's vectors in its Redis, for lookup by entity id.

On-store layout (``features.embeddings``): ``fl:emb:<view>:<version>:<entity id>`` holds the
entity's current vector as float32 little-endian bytes, without a TTL (the stack's Redis evicts
nothing: ``maxmemory-policy noeviction``). The marker ``fl:emb:<view>:<version>`` is ``ready``
when the store holds every vector of that version and ``syncing`` while a full copy is being
written; a Redis that came back empty has no marker, which is how a writer learns it must copy
everything again.

Error mapping as in ``regions.redis_store``: connection refused or reset -> ``StoreUnavailable``,
no answer in time -> ``StoreTimeout``, an error reply -> ``StoreRejected``. No retries here: the
caller's backoff decides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import redis

from features.embeddings import vector_marker_key
from regions.redis_store import _store_errors

VECTORS_READY = b"ready"
VECTORS_SYNCING = b"syncing"
_GLOB = re.compile(r"([*?\[\]\\])")


class RedisVectorStore:
    """The vectors of one (view, version) in one region's Redis."""

    def __init__(self, client: redis.Redis, store: str, view: str, version: str) -> None:
        self._client = client
        self._store = store
        self._marker = vector_marker_key(view, version)

    @property
    def store(self) -> str:
        return self._store

    def write(self, vectors: Mapping[str, bytes | None]) -> bool:
        """Sets each entity's vector, or deletes it for ``None``, in one pipelined round trip;
        returns whether the marker said ``ready`` (read in the same round trip, first)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._marker)
        for entity_id, vector in vectors.items():
            key = f"{self._marker}:{entity_id}"
            if vector is None:
                pipe.delete(key)
            else:
                pipe.set(key, vector)
        with _store_errors(self._store):
            replies = pipe.execute()
        return bool(replies[0] == VECTORS_READY)

    def begin_sync(self) -> None:
        """A full copy starts: the store is not complete until :meth:`end_sync`."""
        with _store_errors(self._store):
            self._client.set(self._marker, VECTORS_SYNCING)

    def end_sync(self) -> bool:
        """Marks the copy complete, unless the store lost the marker meanwhile (it was emptied
        again, so the copy is not complete): then ``False`` and nothing changes."""
        with _store_errors(self._store):
            return bool(self._client.set(self._marker, VECTORS_READY, xx=True))

    def drop(self, batch: int = 500) -> int:
        """Deletes every vector of the version and its marker; returns how many vectors.
        Idempotent: a second call finds nothing."""
        pattern = _GLOB.sub(r"\\\1", self._marker) + ":*"
        deleted = 0
        keys: list[bytes] = []
        with _store_errors(self._store):
            for key in self._client.scan_iter(match=pattern, count=batch):
                keys.append(key)
                if len(keys) >= batch:
                    deleted += int(self._client.unlink(*keys))
                    keys.clear()
            if keys:
                deleted += int(self._client.unlink(*keys))
            self._client.delete(self._marker)
        return deleted
