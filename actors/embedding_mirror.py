"""Each region's Redis holds the current vector of every entity, for lookup by entity id.

After a batch is applied to an index, the mirror writes, for every entity the batch touched, the
entity's current state in the index (its vector, or a delete when it has none), in one pipeline.
Writing the index's state rather than the events makes the mirror idempotent: a replay after a
crash writes the same values again, and an out-of-order event the index ignored is not written.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, SecretStr

from actors.embedding_index import EmbeddingIndex
from features.embeddings import vector_key
from regions.config import RegionConfig
from regions.redis_store import RedisRole, RedisTimeouts, redis_client


class RedisTarget(BaseModel):
    """Where a region's vectors go: its Redis, as the pipeline's writer user."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: RegionConfig
    writer_user: str
    redis_writer_password: SecretStr

    # ``RedisUsers`` and ``RedisPasswords`` with only the writer filled in.
    @property
    def reader_user(self) -> str:
        return self.writer_user

    @property
    def admin_user(self) -> str:
        return self.writer_user

    @property
    def redis_reader_password(self) -> SecretStr:
        return self.redis_writer_password

    @property
    def redis_admin_password(self) -> SecretStr:
        return self.redis_writer_password


class VectorMirror:
    def __init__(self, target: RedisTarget) -> None:
        self._client = redis_client(
            target.region, RedisRole.WRITER, target, target, RedisTimeouts()
        )

    def write(self, index: EmbeddingIndex, entity_ids: Iterable[str]) -> None:
        """Raises on a Redis error: the caller's loop dies and Ray restarts it, and the replay
        after the restore writes the batch again (nothing is acknowledged before this)."""
        pipe = self._client.pipeline(transaction=False)
        for entity_id in set(entity_ids):
            key = vector_key(index.view.name, index.version, entity_id)
            vector = index.vector_of(entity_id)
            if vector is None:
                pipe.delete(key)
            else:
                pipe.set(key, np.asarray(vector, dtype="<f4").tobytes())
        pipe.execute()

    def close(self) -> None:
        self._client.close()
