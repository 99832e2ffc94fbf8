"""The embedding index actor: consumes one view's topic into one index per model version.

Recovery (crash-only, like the pipeline's actors): at start each version's index is restored
from its snapshot in ``state_dir/<region>/<view>/<version>`` and every partition is sought to the
smallest offset any version's snapshot recorded (the beginning when there is none), then
replayed. Replaying an event a version has already applied changes nothing
(``EmbeddingIndex.apply`` ignores events no newer than the entity's last), so after a restore and
a replay each index holds exactly the latest event of every entity up to the consumer's position:
no id missing, none twice.

The snapshot protocol (:meth:`EmbeddingIngest.snapshot`), in order: (1) apply every polled event,
so the offsets about to be written cover only applied events; (2) write each version's snapshot
with the next offset per partition; Kafka offsets are never committed, the snapshot is the
position. Dead letters are sent as they are found and may repeat after a crash (at least once);
they carry the headers of ``actors.dlq``.

The view can change under a running actor (a model version added or dropped, the serving version
switched: ``features.embedding_catalog``): the catalog actor pushes it (:meth:`reconfigure`), and
a (re)starting actor reads it from ``state_dir/catalog/<view>.json``, so a restart never brings an
old view back. Only the actor of the view's reporting version (its first) in a region configured
with ``dead_letters`` sends dead letters.

Vectors are mirrored to the region's Redis by ``actors.embedding_mirror`` outside the actor's lock;
a Redis outage delays the mirror (retried with backoff) and never the index.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import ray
from kafka import KafkaProducer, TopicPartition
from pydantic import BaseModel, ConfigDict, Field

from actors.config import DLQ_TOPIC
from actors.dlq import dead_letter
from actors.embedding_catalog_file import catalog_path, read_catalog
from actors.embedding_index import EmbeddingIndex
from actors.embedding_mirror import RedisTarget, VectorMirror
from actors.embedding_snapshot import read_snapshot, write_snapshot
from actors.kafka_io import read_committed_consumer, topic_partitions
from actors.metrics import IndexMetrics
from features.embedding_search import Query, SearchAnswer
from features.embeddings import (
    INDEX_ACTOR_NAMESPACE,
    EmbeddingEvent,
    EmbeddingRejected,
    EmbeddingValidator,
    EmbeddingView,
    IndexNotReady,
    UnknownModelVersion,
    index_actor_name,
)
from features.errors import ConfigError

log = logging.getLogger("freshline.actors.embeddings")


SNAPSHOT_INTERVAL_S = 30.0
RECONFIGURE_WAIT_S = 30.0
METRICS_INTERVAL_S = 1.0


class EmbeddingIngestConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str
    state_dir: Path
    dlq_topic: str = DLQ_TOPIC
    # A snapshot costs a full write of every index: longer intervals mean a longer replay after
    # a crash, shorter ones more disk writes.
    snapshot_interval_s: float = Field(default=SNAPSHOT_INTERVAL_S, gt=0)
    max_poll_records: int = Field(default=2000, ge=1)
    # The region this actor serves (answers name it) and the versions it indexes (``None``: every
    # version the view declares). The pipeline starts one actor per (region, view, version).
    region: str = "local"
    versions: tuple[str, ...] | None = None
    # Several actors read one topic; only one sends refused events to the DLQ: the actor of the
    # view's reporting version (its first) in the one region where this is set.
    dead_letters: bool = True
    # The region's Redis, which mirrors every current vector (None: no mirror).
    redis: RedisTarget | None = None


def snapshot_directory(config: EmbeddingIngestConfig, view: str, version: str) -> Path:
    """Where the actor of ``config`` snapshots ``view``'s index at ``version``."""
    return config.state_dir / config.region / view / version


class EmbeddingIngest:
    """Not thread-safe: the owner serialises ``step``, ``snapshot`` and ``search``."""

    def __init__(
        self,
        config: EmbeddingIngestConfig,
        view: EmbeddingView,
        *,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
        clients: Callable[[EmbeddingIngestConfig], tuple[Any, Any]] | None = None,
    ) -> None:
        self.config = config
        self._versions = config.versions or view.model_versions
        self._now_ms = now_ms
        self.view = view
        self._validator = EmbeddingValidator(view, now_ms)
        self._monotonic = monotonic
        self._clients = clients or kafka_clients
        self.indexes: dict[str, EmbeddingIndex] = {}
        self.mirrors: dict[str, VectorMirror] = {}
        self.positions: dict[int, int] = {}  # next offset to read per partition
        self.dead_lettered: dict[str, int] = {}
        self._consumer: Any = None
        self._producer: Any = None
        self._caught_up_at: dict[int, int] = {}  # the end of each partition when started
        self.snapshotted: dict[int, int] = {}  # the positions of this process's last snapshot
        self._last_snapshot = monotonic()

    @property
    def versions(self) -> tuple[str, ...]:
        return self._versions

    @property
    def reporting(self) -> bool:
        """Whether this actor sends the view's dead letters (see the module docstring)."""
        return self.config.dead_letters and self.view.model_versions[0] in self._versions

    def reconfigure(self, view: EmbeddingView) -> dict[int, int]:
        """Follows a catalog change of this actor's view (versions added or dropped, the serving
        version moved); returns the positions from which it validates with it. A view whose
        similarity space differs (dimension, metric, attributes, ...) is refused."""
        if _space(view) != _space(self.view):
            raise ConfigError(f"view {view.name!r} changed more than its versions", field="view")
        self.view = view
        self._validator = EmbeddingValidator(view, self._now_ms)
        return dict(self.positions)

    @property
    def ready(self) -> bool:
        """Restored and caught up with what the topic held when it started: a new version's
        index is not searched while it is still being built from the topic's history."""
        return bool(self.indexes) and all(
            self.positions.get(p, 0) >= end for p, end in self._caught_up_at.items()
        )

    def _directory(self, version: str) -> Path:
        return snapshot_directory(self.config, self.view.name, version)

    def start(self) -> None:
        """Restores every version's snapshot, then seeks each partition to the oldest offset."""
        self._follow_catalog_file()
        self._consumer, self._producer = self._clients(self.config)
        partitions = topic_partitions(self._consumer, [self.view.topic])[self.view.topic]
        restored_offsets: list[dict[int, int]] = []
        for version in self.versions:
            found = read_snapshot(self.view, version, self._directory(version))
            self.indexes[version] = found[0] if found else EmbeddingIndex(self.view, version)
            restored_offsets.append(found[1] if found else {})
            if self.config.redis is not None:
                store = self.config.redis.vector_store(self.view.name, version)
                self.mirrors[version] = VectorMirror(store, self._monotonic)
        tps = [TopicPartition(self.view.topic, p) for p in partitions]
        self._consumer.assign(tps)
        for tp in tps:
            offset = min(offsets.get(tp.partition, 0) for offsets in restored_offsets)
            self._consumer.seek(tp, offset)
            self.positions[tp.partition] = offset
        ends = self._consumer.end_offsets(tps) if hasattr(self._consumer, "end_offsets") else {}
        self._caught_up_at = {tp.partition: end for tp, end in ends.items()}

    def _follow_catalog_file(self) -> None:
        # A catalog that no longer lists this actor's versions is dropping them: the actor keeps
        # the view it was started with (and its dead-letter duty) until it is stopped.
        catalog = read_catalog(catalog_path(self.config.state_dir, self.view.name))
        if catalog is not None and set(self._versions) & set(catalog.view.model_versions):
            self.reconfigure(catalog.view)

    def step(self, poll_timeout_ms: int = 100) -> int:
        """Polls once, applies what it got, snapshots when the interval has passed."""
        return self.apply(self.poll(poll_timeout_ms))

    def poll(self, poll_timeout_ms: int) -> dict[Any, list[Any]]:
        """Records from the topic; touches no index, so searches may run meanwhile."""
        polled: dict[Any, list[Any]] = self._consumer.poll(
            timeout_ms=poll_timeout_ms, max_records=self.config.max_poll_records
        )
        return polled

    def apply(self, polled: dict[Any, list[Any]]) -> int:
        """Validates and applies polled records, then snapshots if the interval has passed."""
        by_version: dict[str, list[EmbeddingEvent]] = {}
        count = 0
        for tp, records in polled.items():
            for record in records:
                self._accept(record, tp.partition, by_version)
            self.positions[tp.partition] = records[-1].offset + 1
            count += len(records)
        for version, events in by_version.items():
            index = self.indexes.get(version)
            if index is None:  # a version another actor indexes
                continue
            index.apply(events)
            if version in self.mirrors:
                self.mirrors[version].touched(e.entity_id for e in events)
        self._advance_past_markers(polled)
        if self._monotonic() - self._last_snapshot >= self.config.snapshot_interval_s:
            self.snapshot()
        return count

    def _advance_past_markers(self, polled: dict[Any, list[Any]]) -> None:
        # A transaction's commit marker takes an offset no record has: the consumer's position
        # is past it, so readiness is measured against the position, not the last record.
        if hasattr(self._consumer, "position"):
            for tp in polled:
                self.positions[tp.partition] = max(
                    self.positions[tp.partition], self._consumer.position(tp)
                )

    def _accept(self, record: Any, partition: int, out: dict[str, list[EmbeddingEvent]]) -> None:
        try:
            event = self._validator.validate(record.value)
        except EmbeddingRejected as rejected:
            if self.reporting:
                self._dead_letter(record, partition, rejected)
            return
        out.setdefault(event.model_version, []).append(event)

    def _dead_letter(self, record: Any, partition: int, error: EmbeddingRejected) -> None:
        reason = error.reason.value
        self.dead_lettered[reason] = self.dead_lettered.get(reason, 0) + 1
        letter = dead_letter(
            record.key,
            record.value if record.value is not None else b"",
            topic=self.view.topic,
            partition=partition,
            offset=record.offset,
            error=error,
        )
        self._producer.send(
            self.config.dlq_topic, key=letter.key, value=letter.value, headers=letter.headers
        )

    def snapshot(self) -> None:
        """Every version's index with the offsets it reflects (see the module docstring)."""
        for version, index in self.indexes.items():
            write_snapshot(index, self._directory(version), self.positions)
        self.snapshotted = dict(self.positions)
        self._producer.flush()
        self._last_snapshot = self._monotonic()

    def _index(self, version: str | None) -> EmbeddingIndex:
        version = version or self.view.serving_version
        index = self.indexes.get(version)
        if index is None:
            raise UnknownModelVersion(f"view {self.view.name!r} has no index for {version!r}")
        return index

    def search(self, version: str | None, queries: Sequence[Query]) -> SearchAnswer:
        """``version`` ``None`` is the view's serving version."""
        index = self._index(version)
        store = f"index-{self.config.region}"
        return SearchAnswer(index.version, index.mutations, index.search_batch(queries), store)

    def vector_of(self, version: str | None, entity_id: str) -> list[float] | None:
        """The entity's current vector, ``None`` when it has none (never set, or deleted)."""
        vector = self._index(version).vector_of(entity_id)
        return None if vector is None else [float(x) for x in vector]

    def flush_mirrors(self, lock: AbstractContextManager[Any] | None = None) -> None:
        """Copies what changed to the region's Redis; the index is read under ``lock`` (the
        actor's), the Redis round trips are made outside it, so searches never wait for Redis."""
        for version, mirror in self.mirrors.items():
            mirror.flush(_LockedIndex(self.indexes[version], lock or contextlib.nullcontext()))

    def mirror_status(self) -> dict[str, Any]:
        return {
            v: {"state": m.state, "pending": len(m.pending), "failures": m.failures}
            for v, m in self.mirrors.items()
        }

    def close(self) -> None:
        if self._consumer is not None:
            self.snapshot()
            self._consumer.close()
            self._producer.close()


class _LockedIndex:
    """An index as ``actors.embedding_mirror.IndexSource``: each read holds the owner's lock."""

    def __init__(self, index: EmbeddingIndex, lock: AbstractContextManager[Any]) -> None:
        self._index = index
        self._lock = lock

    def live_ids(self) -> list[str]:
        with self._lock:
            return list(self._index.row_of)

    def vectors(self, ids: Sequence[str]) -> dict[str, bytes | None]:
        with self._lock:
            out: dict[str, bytes | None] = {}
            for entity_id in ids:
                vector = self._index.vector_of(entity_id)
                out[entity_id] = None if vector is None else vector.astype("<f4").tobytes()
            return out


def _space(view: EmbeddingView) -> dict[str, Any]:
    """What an index of ``view`` depends on: everything but its versions."""
    return view.model_dump(exclude={"model_versions", "serving_version"})


def kafka_clients(config: EmbeddingIngestConfig) -> tuple[Any, Any]:
    """An assigned consumer that never commits (the snapshot is the position) and a producer of
    dead letters."""
    consumer = read_committed_consumer(
        config.bootstrap,
        None,
        auto_offset_reset="earliest",
        max_poll_records=config.max_poll_records,
    )
    producer = KafkaProducer(bootstrap_servers=config.bootstrap, acks="all", linger_ms=5)
    return consumer, producer


class _EmbeddingIndexActor:
    """One view's indexes in a Ray actor: a loop thread ingests, Serve calls ``search``."""

    def __init__(self, config: EmbeddingIngestConfig, view: EmbeddingView) -> None:
        self._ingest = EmbeddingIngest(config, view)
        self._metrics = IndexMetrics(config.region, view.name)
        self._exported_at = 0.0
        self._lock = threading.Lock()  # the loop applies while Serve searches
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="embedding-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            self._export()  # not ready: an actor that dies while starting still shows up as such
            with self._lock:
                self._ingest.start()
            self._ready.set()
            while not self._stop.is_set():
                polled = self._ingest.poll(poll_timeout_ms=50)  # searches are not held up
                with self._lock:
                    self._ingest.apply(polled)
                self._ingest.flush_mirrors(self._lock)  # Redis round trips outside the lock
                self._export()
            with self._lock:
                self._ingest.close()
        except BaseException:
            log.exception("embedding index loop failed; exiting so that Ray restarts it")
            os._exit(1)

    def _export(self) -> None:
        now = time.monotonic()
        if now - self._exported_at < METRICS_INTERVAL_S:
            return
        self._exported_at = now
        with self._lock:
            indexes = self._ingest.indexes
            sizes = {v: indexes[v].size if v in indexes else 0 for v in self._ingest.versions}
        self._metrics.export(self._ingest.ready, sizes, self._ingest.mirror_status())

    def search(self, version: str | None, queries: list[Query]) -> SearchAnswer:
        with self._lock:
            self._check_ready()
            return self._ingest.search(version, queries)

    def vector_of(self, version: str | None, entity_id: str) -> list[float] | None:
        with self._lock:
            self._check_ready()
            return self._ingest.vector_of(version, entity_id)

    def _check_ready(self) -> None:
        if not (self._ready.is_set() and self._ingest.ready):
            raise IndexNotReady(f"index of {self._ingest.view.name!r} is still catching up")

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "ready": self._ready.is_set() and self._ingest.ready,
                "pid": os.getpid(),
                "region": self._ingest.config.region,
                "positions": dict(self._ingest.positions),
                "snapshotted": dict(self._ingest.snapshotted),
                "dead_lettered": dict(self._ingest.dead_lettered),
                "reporting": self._ingest.reporting,
                "serving_version": self._ingest.view.serving_version,
                "indexes": {
                    v: {"size": i.size, "kind": i.kind, "mutations": i.mutations}
                    for v, i in self._ingest.indexes.items()
                },
                "mirror": self._ingest.mirror_status(),
            }

    def reconfigure(self, view: EmbeddingView) -> dict[int, int]:
        """See :meth:`EmbeddingIngest.reconfigure`, once the actor has started (its start reads
        the catalog file, so a push that finds it starting is not lost either way)."""
        if not self._ready.wait(timeout=RECONFIGURE_WAIT_S):
            raise IndexNotReady(f"index of {self._ingest.view.name!r} is still starting")
        with self._lock:
            return self._ingest.reconfigure(view)

    def stop(self) -> None:
        """Ends the loop after a last snapshot; returns once it is written."""
        self._stop.set()
        self._thread.join(timeout=60)


_remote: Any = ray.remote
EmbeddingIndexActor: Any = _remote(
    max_restarts=-1, max_task_retries=-1, max_concurrency=4, num_cpus=0.25
)(_EmbeddingIndexActor)


def start_index_actor(config: EmbeddingIngestConfig, view: EmbeddingView) -> Any:
    """Starts (or finds) the named, detached index actor of ``config``'s region and (single)
    version; Serve finds it by that name."""
    versions = config.versions or view.model_versions
    if len(versions) != 1:
        raise ValueError("an index actor is named by one version: set config.versions")
    return EmbeddingIndexActor.options(
        name=index_actor_name(view.name, config.region, versions[0]),
        namespace=INDEX_ACTOR_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(config, view)


def main(argv: Sequence[str] | None = None) -> int:
    """Starts (or finds) a view's index actor on a running Ray cluster and prints its status::

    python -m actors.embedding_actor --view items.json --bootstrap localhost:9092 \
        --state-dir .state/embeddings
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--view", type=Path, required=True, help="an EmbeddingView as JSON")
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--state-dir", type=Path, required=True, help="where snapshots go")
    parser.add_argument("--address", default="auto", help="the Ray cluster to join")
    args = parser.parse_args(argv)
    view = EmbeddingView.model_validate_json(args.view.read_text(encoding="utf-8"))
    ray.init(address=args.address, namespace=INDEX_ACTOR_NAMESPACE)
    for version in view.model_versions:
        config = EmbeddingIngestConfig(
            bootstrap=args.bootstrap, state_dir=args.state_dir, versions=(version,)
        )
        actor = start_index_actor(config, view)
        print(json.dumps(ray.get(actor.status.remote())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
