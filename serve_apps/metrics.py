"""Serving's Prometheus metrics, through Ray's metrics API.

Ray's metrics agent serves them beside the pipeline's (``actors/metrics.py``) with a ``ray_``
prefix; every series carries the replica's ``region`` and ``replica`` id. The alert rules in
``cluster/observability/alerts.yml`` are written against these names:

======================================  =========  ========================================
``freshline_serving_requests_total``    counter    ``route``, ``status``
``freshline_serving_latency_ms``        histogram  ``route``: from the request reaching our
                                                   code to its answer
``freshline_serving_refusals_total``    counter    ``gate``: ``loop-lag``, ``in-flight``,
                                                   ``late-read`` (this replica's own 503s)
``freshline_serving_answers_total``     counter    ``source``: ``local`` (the region's Redis),
                                                   ``replica`` (its DynamoDB), ``other_region``,
                                                   ``defaults``
``freshline_serving_served_age_ms``     histogram  ``view``: how old the newest event behind a
                                                   view's answer is
``freshline_serving_freshness_target_ms``  gauge   ``view``: the view's freshness target
``freshline_serving_breaker_open``      gauge      ``store``: 1 while its circuit is open
``freshline_serving_registry_version``  gauge      the registry version served (0: from code)
======================================  =========  ========================================

A metric call costs about 3 us in a replica, so each request records at most a handful.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

LATENCY_BUCKETS_MS: list[float] = [1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 2500, 5000]
AGE_BUCKETS_MS: list[float] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
    3_600_000,
]
LOCAL, REPLICA, OTHER_REGION, DEFAULTS = "local", "replica", "other_region", "defaults"


def answer_source(store: str, region: str) -> str:
    """Which kind of store answered, from its name (``redis-<region>``, ``dynamodb-<region>``,
    ``defaults``) as seen from ``region``."""
    if store == "defaults":
        return DEFAULTS
    kind, _, where = store.partition("-")
    if where != region:
        return OTHER_REGION
    return LOCAL if kind == "redis" else REPLICA


class ServingMetrics(Protocol):
    """What ``serve_apps.http.ServingHttp`` records; :data:`NO_METRICS` records nothing."""

    def request(self, route: str, status: int, seconds: float) -> None: ...
    def refused(self, gate: str) -> None: ...
    def answered(self, store: str) -> None: ...
    def served_age(self, view: str, age_ms: int) -> None: ...
    def breakers(self, states: Mapping[str, str]) -> None: ...
    def catalog(self, targets_ms: Mapping[str, int], registry_version: int | None) -> None: ...


class _Nothing:
    def request(self, route: str, status: int, seconds: float) -> None:
        return None

    def refused(self, gate: str) -> None:
        return None

    def answered(self, store: str) -> None:
        return None

    def served_age(self, view: str, age_ms: int) -> None:
        return None

    def breakers(self, states: Mapping[str, str]) -> None:
        return None

    def catalog(self, targets_ms: Mapping[str, int], registry_version: int | None) -> None:
        return None


NO_METRICS: ServingMetrics = _Nothing()


class RayServingMetrics:
    """The metrics of one replica of ``region``; ``targets_ms`` is each view's freshness target.
    Only inside a Ray worker (a Serve replica).

    Every series carries the Serve replica's id: breakers are per replica, and a replaced
    replica's counters must leave the scrape as a series of their own, not as a drop in a sum
    shared with its successor (Ray's agent drops its per-worker label by default)."""

    def __init__(
        self,
        region: str,
        replica: str,
        targets_ms: Mapping[str, int],
        registry_version: int | None = None,
    ) -> None:
        from ray.util import metrics

        self._region = region
        tags = {"region": region, "replica": replica}

        def made(metric: Any) -> Any:
            metric.set_default_tags(tags)
            return metric

        keys = ("region", "replica")
        self._requests = made(
            metrics.Counter("freshline_serving_requests", "answers", (*keys, "route", "status"))
        )
        self._latency = made(
            metrics.Histogram(
                "freshline_serving_latency_ms",
                "request to answer, in our code",
                LATENCY_BUCKETS_MS,
                (*keys, "route"),
            )
        )
        self._refusals = made(
            metrics.Counter("freshline_serving_refusals", "503s of this replica", (*keys, "gate"))
        )
        self._answers = made(
            metrics.Counter("freshline_serving_answers", "reads by source", (*keys, "source"))
        )
        self._age = made(
            metrics.Histogram(
                "freshline_serving_served_age_ms",
                "age of the newest event behind a view's answer",
                AGE_BUCKETS_MS,
                (*keys, "view"),
            )
        )
        self._breaker = made(
            metrics.Gauge("freshline_serving_breaker_open", "1 while open", (*keys, "store"))
        )
        self._target = made(
            metrics.Gauge(
                "freshline_serving_freshness_target_ms", "view freshness target", (*keys, "view")
            )
        )
        self._registry = made(
            metrics.Gauge("freshline_serving_registry_version", "registry version served", keys)
        )
        self.catalog(targets_ms, registry_version)

    def request(self, route: str, status: int, seconds: float) -> None:
        self._requests.inc(1, {"route": route, "status": str(status)})
        self._latency.observe(seconds * 1e3, {"route": route})

    def refused(self, gate: str) -> None:
        self._refusals.inc(1, {"gate": gate})

    def answered(self, store: str) -> None:
        self._answers.inc(1, {"source": answer_source(store, self._region)})

    def served_age(self, view: str, age_ms: int) -> None:
        self._age.observe(age_ms, {"view": view})

    def breakers(self, states: Mapping[str, str]) -> None:
        for store, state in states.items():
            self._breaker.set(1 if state == "open" else 0, {"store": store})

    def catalog(self, targets_ms: Mapping[str, int], registry_version: int | None) -> None:
        """The served catalog's freshness targets and registry version (at start, and when the
        replica follows a new version)."""
        for view, ms in targets_ms.items():
            self._target.set(ms, {"view": view})
        self._registry.set(registry_version or 0)
