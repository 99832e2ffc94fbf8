"""Ray actors around the consumer and the sinks, and the supervisor that owns them.

Crash-only: a loop that meets an unexpected error exits its process, and Ray restarts the actor
(``max_restarts=-1``), which rebuilds its state from the changelog and committed offsets. There is
no in-process recovery path to get subtly wrong. A consumer's loop blocked in a commit that can no
longer finish raises nothing, so a watchdog thread exits the process for it
(``StreamConsumer.overdue_commit``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

import ray

from actors.backfill import offline_history
from actors.config import PipelineConfig
from actors.consumer import StreamConsumer
from actors.metrics import ConsumerMetrics, SinkMetrics
from actors.registry_feed import latest, publish_to_regions
from actors.sink import SinkStats, SinkWorker
from actors.sink_lag import CommittedLag
from features.catalog import Catalog
from features.errors import ConfigError
from features.registry import computation_digest
from features.shards import Shard

NAMESPACE = "freshline"
SUPERVISOR = "fl-supervisor"
# Consumers, sinks and the offline writer are spread over the cluster's nodes, one placement at a
# time round the nodes that have room, never pinned: a restart after a node's death goes to any
# node that survives. The supervisor stays on the head with the job's driver that owns it, since
# its children die with it (docs/pipeline.md, Placement).
STREAM_PLACEMENT = "SPREAD"
HEAD_NODE = {"node:__internal_head__": 0.001}
log = logging.getLogger("freshline.actors")


def _die(what: str, exc: BaseException) -> None:
    log.exception(
        "%s failed; exiting so that Ray restarts it from durable state", what, exc_info=exc
    )
    os._exit(1)


class _ConsumerActor:
    def __init__(self, config: PipelineConfig, catalog: Catalog, partitions: list[int]) -> None:
        self._consumer = StreamConsumer(
            config.consumer_config(), catalog, partitions, history=offline_history(config, catalog)
        )
        self._partitions = partitions
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._started_at = time.time()
        self._loop_thread = threading.Thread(target=self._loop, name="consumer-loop", daemon=True)
        self._loop_thread.start()
        threading.Thread(target=self._watch_commit, name="consumer-watchdog", daemon=True).start()

    def _watch_commit(self) -> None:
        """Once a second: a commit past its deadline is stuck in a Kafka client call that has no
        timeout, and its transaction is lost. Exit so that Ray restarts this actor: the new
        incarnation fences the open transaction and restores from the changelog and the committed
        offsets, so nothing is lost or counted twice."""
        while not self._stop.wait(1.0):
            stalled = self._consumer.overdue_commit()
            if stalled is not None:
                frame = sys._current_frames().get(self._loop_thread.ident or -1)
                where = "".join(traceback.format_stack(frame)) if frame else "(no frame)"
                log.error("consumer %s loop is blocked in:\n%s", self._partitions, where)
                _die(f"consumer {self._partitions}", stalled)

    def _loop(self) -> None:
        try:
            self._consumer.start()
            self._ready.set()
            exporter = ConsumerMetrics()
            last_lag = 0.0
            while not self._stop.is_set():
                self._consumer.step()
                if time.monotonic() - last_lag > 1.0:
                    self._consumer.refresh_lag()
                    exporter.export(self.status())
                    last_lag = time.monotonic()
            self._consumer.close()
        except BaseException as exc:
            _die(f"consumer {self._partitions}", exc)

    def status(self) -> dict[str, Any]:
        stats = self._consumer.stats
        return {
            "pid": os.getpid(),
            "niceness": os.nice(0),
            "partitions": self._partitions,
            "ready": self._ready.is_set(),
            "started_at": self._started_at,
            "events_in": stats.events_in,
            "accepted": stats.accepted,
            "dead_lettered": dict(stats.dead_lettered),
            "commits": stats.commits,
            # Seconds the commit in progress has run (None between commits); large when stuck.
            "commit_running_s": self._consumer.commit_running_s(),
            "restored_records": stats.restored_records,
            "restore_s": stats.restore_s,
            # Events folded into new view versions at start (actors.backfill), and how long.
            "backfilled_events": stats.backfilled_events,
            "backfill_s": stats.backfill_s,
            "watermark_ms": dict(stats.watermark_ms),
            "lag": dict(stats.lag),
            # Event time -> changelog committed: the consumer's share of the sinks' freshness.
            "visible_ms": _percentiles(stats.visible_ms),
            "changelog_records": stats.changelog_records,
            "commit_ms": _percentiles(stats.commit_ms),  # one commit protocol run
            "commit_interval_ms": stats.commit_interval_ms,  # adapts: features.commit_pacing
            "commit_phase_ms": {
                phase: _percentiles(samples) for phase, samples in stats.commit_phase_ms.items()
            },
        }

    def stop(self) -> None:
        self._stop.set()


class _SinkActor:
    def __init__(
        self, config: PipelineConfig, region: str, store: str, shard: int, secrets: Any
    ) -> None:
        self._region, self._store = region, store
        self._shard = Shard(shard, config.sink_shards)
        # Built in the loop thread, never here: a constructor that raises (the broker is down
        # while Ray restarts this actor) leaves an actor Ray will not restart; a loop that
        # raises exits the process, which Ray restarts until the broker answers again.
        self._config, self._secrets = config, secrets
        self._worker: SinkWorker | None = None
        self._idle_stats = SinkStats()
        self._stop = threading.Event()
        self._started_at = time.time()
        self._lag: int | None = None
        self._stepped_at: float | None = None  # monotonic time the loop last finished a step
        # The latest freshness samples, for status() percentiles; bounded, oldest dropped first.
        self._recent_freshness: deque[float] = deque(maxlen=20_000)
        threading.Thread(target=self._loop, name="sink-loop", daemon=True).start()
        threading.Thread(target=self._measure, name="sink-lag", daemon=True).start()

    def _loop(self) -> None:
        try:
            worker = _build_sink(
                self._config, self._region, self._store, self._shard, self._secrets
            )
            self._worker = worker
            while not self._stop.is_set():
                worker.step()
                self._stepped_at = time.monotonic()
        except BaseException as exc:
            _die(f"sink {self._region}/{self._store}/{self._shard.index}", exc)

    def _measure(self) -> None:
        """Once a second: the committed lag and the metrics, from this thread, so that a loop
        blocked in a store call still shows its region falling behind (actors.sink_lag)."""
        exporter = SinkMetrics(self._region, self._store, self._shard.index)
        monitor: CommittedLag | None = None
        while not self._stop.wait(1.0):
            try:
                monitor = monitor or CommittedLag(
                    self._config.bootstrap,
                    sink_group(self._region, self._store),
                    self._config.changelog_topic,
                    self._shard,
                )
                self._lag = monitor.measure()
            except Exception:  # the broker is down: keep the last figure, try again next second
                log.debug("sink lag not measured", exc_info=True)
            worker = self._worker
            s = self._idle_stats if worker is None else worker.stats
            fresh = s.take_freshness()
            self._recent_freshness.extend(fresh)
            exporter.export(s.applied_records, s.store_failures, self._lag, fresh)

    def status(self) -> dict[str, Any]:
        s = self._idle_stats if self._worker is None else self._worker.stats
        return {
            "pid": os.getpid(),
            "niceness": os.nice(0),
            "region": self._region,
            "store": self._store,
            "shard": self._shard.index,
            "applied_records": s.applied_records,
            "batches": s.batches,
            "store_failures": s.store_failures,
            "paused": s.paused,
            # "ready", "rehydrating" (here or by another shard) or "unknown" (see actors.sink)
            "store_state": s.store_state,
            "rehydrating": s.store_state == "rehydrating",  # what the redis-kill drill samples
            "rehydrations": s.rehydrations,
            "last_error": s.last_error,
            "undecodable": s.undecodable,
            "lag": self._lag,
            "assigned_partitions": s.assigned_partitions,
            # None until the first step: the worker is still being built (connecting to Kafka).
            "since_last_step_s": (
                None if self._stepped_at is None else round(time.monotonic() - self._stepped_at, 1)
            ),
            "freshness_ms": _percentiles(self._recent_freshness),
            "started_at": self._started_at,
        }

    def stop(self) -> None:
        self._stop.set()


def _percentiles(samples: deque[float]) -> dict[str, float] | None:
    if not samples:
        return None
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p99": pick(0.99), "count": float(len(ordered))}


def shard_actor_name(base: str, shard: int) -> str:
    """Shard 0 keeps the name its actor had before shards existed (drills and tools look it up)."""
    return base + (f"-{shard}" if shard else "")


def sink_group(region: str, store: str) -> str:
    """The consumer group of one region's sinks for one store: its committed offsets are what
    that store has durably applied. Shared by the store's sink shards, each committing its own
    partitions, so a change of ``sink_shards`` keeps every partition's position."""
    return f"freshline-sink-{region}-{store}"


def _build_sink(
    config: PipelineConfig, region_name: str, store: str, shard: Shard, secrets: Any
) -> SinkWorker:
    from kafka import TopicPartition

    from actors.kafka_io import read_committed_consumer, topic_partitions
    from regions.dynamodb_store import DynamoTileWriter
    from regions.redis_store import RedisRole, RedisTileWriter, redis_client

    region = config.topology.get(region_name)
    consumer = read_committed_consumer(
        config.bootstrap,
        sink_group(region_name, store),
        auto_offset_reset="earliest",
        max_poll_records=5000,
        # fetch_max_wait_ms stays at kafka-python's default: the broker answers a waiting
        # read_committed fetch as soon as a transaction commits, so a shorter wait adds no
        # freshness and only makes every idle sink spend CPU on empty fetches.
    )
    # Assigned, not subscribed: each shard owns a fixed share of the partitions, which a group
    # rebalance could hand out otherwise, and on a fresh stack a subscribed sink can be left with
    # none until a watchdog restarts it, its region stale all that time. The group still keeps
    # the committed offsets. A shard without partitions could never finish its part of a
    # rehydration, so it is an error, not an idle actor.
    changelog = topic_partitions(consumer, [config.changelog_topic])[config.changelog_topic]
    mine = shard.partitions(changelog)
    if not mine:
        raise ConfigError(
            f"sink shard {shard.index} of {shard.count}: {config.changelog_topic} has only "
            f"{len(changelog)} partitions"
        )
    consumer.assign([TopicPartition(config.changelog_topic, p) for p in mine])
    if store == "redis":
        client = redis_client(region, RedisRole.WRITER, config.redis_users, secrets)
        # Guarded: a Redis that came back empty refuses writes until the sink rehydrated it.
        cache = RedisTileWriter(client, f"redis-{region_name}", guarded=True, shard=shard)
        return SinkWorker(consumer, cache)
    from regions.aws import dynamodb_client

    # Not seeding: its batches never mark the table ready, since one may land in a table that
    # just lost its data; the worker's marker checks rehydrate such a table instead.
    writer = DynamoTileWriter(
        region, region.dynamodb_table, dynamodb_client, seeding=False, shard=shard
    )
    return SinkWorker(
        consumer, writer, min_batch_interval_s=config.durable_batch_interval_ms / 1000
    )


class _Supervisor:
    """Owns the consumer and sink actors; replaces any that Ray could not restart, and follows
    the registry: a newer version rolls the consumers (and the offline writer) to its catalog one
    at a time, then is published to every region's Redis, which Serve replicas follow.

    ``registry_version`` is the number of ``catalog`` (None: a catalog from code, which the
    first applied version replaces)."""

    def __init__(
        self,
        config: PipelineConfig,
        catalog: Catalog,
        secrets: Any,
        registry_version: int | None = None,
    ) -> None:
        self._config, self._catalog, self._secrets = config, catalog, secrets
        self._registry_version = registry_version
        # Held while children are replaced, so the dead-actor watcher never races a roll.
        self._children = threading.Lock()
        self._consumers = [self._new_consumer(i) for i in range(len(config.assignments()))]
        self._sinks = {
            (r.name, store, shard): self._new_sink(r.name, store, shard)
            for r in config.topology
            for store in config.stores
            for shard in range(config.sink_shards)
        }
        writers = config.offline_writers if config.offline else 0
        self._offline = [self._new_offline(i) for i in range(writers)]
        self._replaced = 0
        # Set before stopping children: otherwise the watcher would "replace" the actors that
        # stop() is killing, leaving duplicates that fence each other's transactions.
        self._stopping = threading.Event()
        threading.Thread(target=self._watch, name="supervisor-watch", daemon=True).start()
        if config.registry_refresh_s > 0:
            threading.Thread(target=self._follow, name="registry-follow", daemon=True).start()

    def _new_offline(self, shard: int) -> Any:
        from actors.offline import OfflineWriterConfig
        from actors.offline_actor import OfflineWriterActor

        c = self._config
        writer_config = OfflineWriterConfig(
            offline_topic=c.offline_topic,
            changelog_topic=c.changelog_topic,
            bootstrap=c.bootstrap,
            source=c.source,
            iceberg_catalog_uri=c.iceberg_catalog_uri,
            iceberg_warehouse=c.iceberg_warehouse,
            batch_records=c.offline_batch_records,
            shard=shard,
            shards=c.offline_writers,
        )
        return OfflineWriterActor.options(
            name=shard_actor_name("fl-offline", shard),
            scheduling_strategy=STREAM_PLACEMENT,
        ).remote(writer_config, self._catalog)

    def _new_consumer(self, index: int) -> Any:
        partitions = self._config.assignments()[index]
        return ConsumerActor.options(
            name=f"fl-consumer-{index}",
            runtime_env=self._config.stream_runtime_env(),
            scheduling_strategy=STREAM_PLACEMENT,
        ).remote(self._config, self._catalog, partitions)

    def _new_sink(self, region: str, store: str, shard: int) -> Any:
        return SinkActor.options(
            name=shard_actor_name(f"fl-sink-{region}-{store}", shard),
            runtime_env=self._config.stream_runtime_env(),
            scheduling_strategy=STREAM_PLACEMENT,
        ).remote(self._config, region, store, shard, self._secrets)

    def _watch(self) -> None:
        while not self._stopping.wait(2.0):
            try:
                with self._children:
                    self._replace_dead()
            except Exception:  # the watcher must outlive one failed replacement
                log.exception("replacing a dead pipeline actor failed; retrying")

    def _follow(self) -> None:
        while not self._stopping.wait(self._config.registry_refresh_s):
            try:
                self.follow_once()
            except Exception:  # the registry or a region may be away for a while: try again
                log.exception("following the registry failed; retrying")

    def follow_once(self) -> int | None:
        """Roll to the latest registry version if it is newer than the one computed, and publish
        it to every region; the number rolled to, or None."""
        c = self._config
        current = latest(c.bootstrap, c.tenant)
        if current is None or (
            self._registry_version is not None and current.number <= self._registry_version
        ):
            return None
        with self._children:
            if self._stopping.is_set():
                return None
            same = computation_digest(current.catalog) == computation_digest(self._catalog)
            self._catalog = current.catalog
            # The same computation under a new number (a repository applied for the first time
            # over the catalog the pipeline started from, a rollout share, a service) needs no
            # restart, only the publish.
            for i in range(0 if same else len(self._consumers)):
                self._consumers[i] = self._renew(
                    self._consumers[i], lambda i=i: self._new_consumer(i)
                )
            for i in range(0 if same else len(self._offline)):
                self._offline[i] = self._renew(self._offline[i], lambda i=i: self._new_offline(i))
            self._registry_version = current.number
        publish_to_regions(c.topology, c.redis_users, self._secrets, c.tenant, current)
        log.warning("pipeline rolled to registry version %d and published it", current.number)
        return current.number

    def _renew(self, actor: Any, new: Any) -> Any:
        """Stop ``actor`` and start its successor with the current catalog; return once the
        successor has restored (a consumer) so that one partition set is down at a time."""
        ray.get(actor.stop.remote(), timeout=30)
        ray.kill(actor, no_restart=True)
        successor = _start_when_name_free(new)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not self._stopping.is_set():
            status = ray.get(successor.status.remote(), timeout=60)
            if status.get("ready", True):
                break
            time.sleep(0.5)
        return successor

    def _replace_dead(self) -> None:
        """Recreate children Ray could not restart; never while stop() is tearing them down."""
        for i, actor in enumerate(self._consumers):
            if not _alive(actor) and not self._stopping.is_set():
                self._consumers[i] = self._new_consumer(i)
                self._replaced += 1
        for key, actor in list(self._sinks.items()):
            if not _alive(actor) and not self._stopping.is_set():
                self._sinks[key] = self._new_sink(*key)
                self._replaced += 1
        for i, writer in enumerate(self._offline):
            if not _alive(writer) and not self._stopping.is_set():
                self._offline[i] = self._new_offline(i)
                self._replaced += 1

    def status(self) -> dict[str, Any]:
        assignments = self._config.assignments()
        consumers = _statuses(self._consumers, [{"partitions": p} for p in assignments])
        identities = [{"region": r, "store": s, "shard": i} for r, s, i in self._sinks]
        sinks = _statuses(list(self._sinks.values()), identities)
        offline = _statuses(self._offline, [{"shard": i} for i in range(len(self._offline))])
        return {
            "consumers": consumers,
            "sinks": sinks,
            "offline": offline,
            "replaced": self._replaced,
            "registry_version": self._registry_version,
        }

    def stop(self) -> None:
        self._stopping.set()
        for actor in [*self._consumers, *self._sinks.values(), *self._offline]:
            ray.get(actor.stop.remote(), timeout=30)
            ray.kill(actor, no_restart=True)


def _statuses(actors: list[Any], identities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each child's status; a child that died or is being replaced (a registry roll kills one
    consumer at a time) reports its identity with ``alive`` and ``ready`` false instead of
    failing the whole pipeline's status."""
    pending = [a.status.remote() for a in actors]
    out: list[dict[str, Any]] = []
    for ref, identity in zip(pending, identities, strict=True):
        try:
            out.append(ray.get(ref, timeout=30))
        except ray.exceptions.RayActorError:
            out.append({**identity, "alive": False, "ready": False})
    return out


def _start_when_name_free(new: Any) -> Any:
    """``new()``, retried while the name of the actor just killed is still taken (Ray frees it
    once the kill has gone through)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return new()
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _alive(actor: Any) -> bool:
    try:
        ray.get(actor.status.remote(), timeout=60)
        return True
    except ray.exceptions.RayActorError:
        return False
    except ray.exceptions.GetTimeoutError:
        return True  # busy restoring is not dead


# Ray's decorator typing does not model actor options or classes; the handles are Any on purpose.
_remote: Any = ray.remote
ConsumerActor: Any = _remote(
    max_restarts=-1, max_task_retries=-1, max_concurrency=4, num_cpus=0.25
)(_ConsumerActor)
SinkActor: Any = _remote(max_restarts=-1, max_task_retries=-1, max_concurrency=4, num_cpus=0.25)(
    _SinkActor
)
Supervisor: Any = _remote(
    max_restarts=-1, max_task_retries=-1, max_concurrency=8, num_cpus=0, resources=HEAD_NODE
)(_Supervisor)
