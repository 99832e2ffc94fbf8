"""Prometheus metrics of the pipeline, through Ray's metrics API.

Ray's per-node metrics agent serves them on the head's ``--metrics-export-port`` (default 18080 in
the local stack) with a ``ray_`` prefix, e.g. ``ray_freshline_events_in_total``. The exporters turn
the actors' cumulative stats into counter increments, so a scrape never double counts after an
actor restart (the new process starts a new series at zero, as Prometheus counters expect).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.util import metrics

FRESHNESS_BUCKETS_MS: list[float] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


class ConsumerMetrics:
    """Exports one consumer actor's stats; call ``export`` with its latest cumulative stats."""

    def __init__(self) -> None:
        self._events_in = metrics.Counter("freshline_events_in", "events polled from the source")
        self._accepted = metrics.Counter("freshline_events_processed", "events folded into tiles")
        self._dead = metrics.Counter(
            "freshline_events_dead_lettered", "events sent to the dead-letter topic", ("reason",)
        )
        self._lag = metrics.Gauge(
            "freshline_source_lag", "records behind the source end", ("partition",)
        )
        self._watermark = metrics.Gauge(
            "freshline_watermark_ms", "event-time watermark per partition", ("partition",)
        )
        self._seen: dict[str, int] = {}

    def export(self, stats: Mapping[str, Any]) -> None:
        self._bump(self._events_in, "events_in", stats["events_in"])
        self._bump(self._accepted, "accepted", stats["accepted"])
        for reason, count in stats["dead_lettered"].items():
            self._bump(self._dead, f"dead:{reason}", count, {"reason": reason})
        for partition, lag in stats["lag"].items():
            self._lag.set(lag, {"partition": str(partition)})
        for partition, watermark in stats["watermark_ms"].items():
            self._watermark.set(watermark, {"partition": str(partition)})

    def _bump(self, counter: Any, key: str, total: int, tags: dict[str, str] | None = None) -> None:
        delta = total - self._seen.get(key, 0)
        if delta > 0:
            counter.inc(delta, tags)
        self._seen[key] = total


class SinkMetrics:
    def __init__(self, region: str, store: str, shard: int = 0) -> None:
        self._tags = {"region": region, "store": store, "shard": str(shard)}
        keys = ("region", "store", "shard")
        self._applied = metrics.Counter("freshline_sink_applied", "tile writes applied", keys)
        self._failures = metrics.Counter(
            "freshline_sink_store_failures", "failed store batches", keys
        )
        self._lag = metrics.Gauge("freshline_sink_lag", "changelog records not yet applied", keys)
        self._freshness = metrics.Histogram(
            "freshline_freshness_ms",
            "event time to written-in-region time",
            FRESHNESS_BUCKETS_MS,
            keys,
        )
        self._seen: dict[str, int] = {}

    def export(
        self, applied: int, failures: int, lag: int | None, freshness_ms: list[float]
    ) -> None:
        for name, counter, total in (
            ("applied", self._applied, applied),
            ("failures", self._failures, failures),
        ):
            delta = total - self._seen.get(name, 0)
            if delta > 0:
                counter.inc(delta, self._tags)
            self._seen[name] = total
        if lag is not None:
            self._lag.set(lag, self._tags)
        for value in freshness_ms:
            self._freshness.observe(value, self._tags)


class IndexMetrics:
    """Exports one embedding index actor's state, per (region, view, version) it indexes."""

    def __init__(self, region: str, view: str) -> None:
        self._tags = {"region": region, "view": view}
        keys = ("region", "view", "version")
        self._ready = metrics.Gauge(
            "freshline_embedding_index_ready", "1 once restored and caught up, else 0", keys
        )
        self._vectors = metrics.Gauge("freshline_embedding_index_vectors", "live vectors", keys)
        self._pending = metrics.Gauge(
            "freshline_embedding_mirror_pending", "changed entities not yet copied to Redis", keys
        )
        self._failures = metrics.Gauge(
            "freshline_embedding_mirror_failures", "consecutive failed Redis writes", keys
        )

    def export(self, ready: bool, vectors: Mapping[str, int], mirror: Mapping[str, Any]) -> None:
        """``vectors`` by version; ``mirror`` as ``EmbeddingIngest.mirror_status``."""
        for version, size in vectors.items():
            tags = {**self._tags, "version": version}
            self._ready.set(1 if ready else 0, tags)
            self._vectors.set(size, tags)
        for version, state in mirror.items():
            tags = {**self._tags, "version": version}
            self._pending.set(state["pending"], tags)
            self._failures.set(state["failures"], tags)
