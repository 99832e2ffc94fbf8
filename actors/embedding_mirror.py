"""Each region's Redis holds the current vector of every entity, for lookup by entity id.

After a batch is applied to an index, the ids it touched are noted (:meth:`VectorMirror.touched`);
:meth:`VectorMirror.flush` then writes, for every noted entity, its current state in the index
(its vector, or a delete when it has none) in one pipeline. Writing the index's state rather than
the events makes the mirror idempotent: a replay after a crash writes the same values again, and
an out-of-order event the index ignored is not written.

A Redis that is down never stops the index: a failed flush keeps the noted ids and is retried
with exponential backoff (``ExponentialBackoff``, up to ``MIRROR_BACKOFF_CAP_S``), while the actor
keeps consuming and answering searches. A Redis that came back empty has lost the version's marker
(``regions.redis_vectors``): the next flush, or the periodic check every ``check_s`` when nothing
changes, finds it missing and copies every live vector again before marking the copy complete.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict, SecretStr

from features.errors import TransportError
from regions.config import RegionConfig
from regions.redis_store import RedisRole, RedisTimeouts, redis_client
from regions.redis_vectors import RedisVectorStore
from regions.resilience import ExponentialBackoff

log = logging.getLogger("freshline.actors.embeddings")

MIRROR_BACKOFF_BASE_S = 0.1
MIRROR_BACKOFF_CAP_S = 10.0
MIRROR_CHECK_S = 5.0
SYNC_CHUNK = 1000


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

    def vector_store(self, view: str, version: str) -> RedisVectorStore:
        client = redis_client(self.region, RedisRole.WRITER, self, self, RedisTimeouts())
        return RedisVectorStore(client, f"redis-{self.region.name}", view, version)


class VectorStore(Protocol):
    """``regions.redis_vectors.RedisVectorStore``, or a fake."""

    def write(self, vectors: dict[str, bytes | None]) -> bool: ...

    def begin_sync(self) -> None: ...

    def end_sync(self) -> bool: ...


class IndexSource(Protocol):
    """The index a mirror copies, read under its owner's lock."""

    def live_ids(self) -> list[str]: ...

    def vectors(self, ids: Sequence[str]) -> dict[str, bytes | None]: ...


@dataclass(frozen=True)
class MirrorPolicy:
    backoff: ExponentialBackoff = field(
        default_factory=lambda: ExponentialBackoff(MIRROR_BACKOFF_BASE_S, MIRROR_BACKOFF_CAP_S)
    )
    # How often an idle mirror checks the marker: the longest an emptied Redis goes unnoticed.
    check_s: float = MIRROR_CHECK_S
    sync_chunk: int = SYNC_CHUNK


class VectorMirror:
    """One index version's vectors in one region's Redis. Owned by one thread (the actor's
    loop); :meth:`flush` never raises a transport error."""

    def __init__(
        self,
        store: VectorStore,
        monotonic: Callable[[], float],
        policy: MirrorPolicy | None = None,
    ) -> None:
        self._store = store
        self._monotonic = monotonic
        self._policy = policy or MirrorPolicy()
        self.pending: set[str] = set()
        self.failures = 0  # consecutive failed flushes
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._check_at = 0.0  # the first flush checks the marker
        self._syncing = False

    @property
    def state(self) -> str:
        """``current``, ``retrying`` (Redis failing, changes kept) or ``syncing``."""
        if self.failures:
            return "retrying"
        return "syncing" if self._syncing else "current"

    def touched(self, entity_ids: Iterable[str]) -> None:
        self.pending.update(entity_ids)

    def flush(self, source: IndexSource) -> None:
        """Writes the noted entities' current state (or everything, when the store lost it),
        unless the last failure's backoff has not run out."""
        now = self._monotonic()
        idle = not self.pending and not self._syncing and now < self._check_at
        if idle or now < self._retry_at:
            return
        try:
            if not self._syncing:
                ids = list(self.pending)
                self._syncing = not self._store.write(source.vectors(ids))
                self.pending.difference_update(ids)
            if self._syncing:
                self._sync(source)
        except TransportError as exc:
            self._failed(now, exc)
            return
        if self.failures:
            log.warning("vector mirror: Redis answers again after %d failures", self.failures)
        self.failures, self.last_error = 0, None
        self._check_at = now + self._policy.check_s

    def _sync(self, source: IndexSource) -> None:
        """Every live vector and every noted delete, then the marker; ``_syncing`` stays set when
        the store was emptied again meanwhile."""
        self._store.begin_sync()
        ids = sorted(set(source.live_ids()) | self.pending)
        chunk = self._policy.sync_chunk
        for start in range(0, len(ids), chunk):
            self._store.write(source.vectors(ids[start : start + chunk]))
        self.pending.clear()
        self._syncing = not self._store.end_sync()

    def _failed(self, now: float, exc: TransportError) -> None:
        self.failures += 1
        self.last_error = type(exc).__name__
        delay = self._policy.backoff.delay(self.failures)
        self._retry_at = now + delay
        if self.failures == 1 or self.failures % 50 == 0:
            log.warning(
                "vector mirror: Redis write failed (%s, %d in a row); %d entities kept, "
                "retrying in %.2f s",
                exc,
                self.failures,
                len(self.pending),
                delay,
            )
