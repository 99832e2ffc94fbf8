"""Building one region's read path from its :class:`ServingConfig` (no Ray here).

Chain order for region R (``regions.config.RegionTopology.failover_order`` gives the others,
nearest first): ``redis-R``, ``dynamodb-R``, then for each other region O: ``redis-O``,
``dynamodb-O``; then defaults. Every store gets its own :class:`CircuitBreaker` on the injected
monotonic clock. Redis is always reached as the read-only ACL user.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from features.embeddings import EmbeddingView
from regions.answer_log import AnswerLog, stream_key
from regions.aws import dynamodb_client
from regions.config import RegionConfig
from regions.dynamodb_reader import DynamoTileReader
from regions.redis_store import AsyncRedisTileReader, RedisRole, async_redis_client
from regions.registry_mirror import served_number, served_version
from regions.resilience import CircuitBreaker, RetryPolicy
from serve_apps.config import ServingConfig
from serve_apps.fallback import DynamoStore, FallbackChain, RedisStore, Step, TileStore
from serve_apps.http import ServingHttp
from serve_apps.metrics import NO_METRICS, RayServingMetrics
from serve_apps.overload import LagGauge, LagTicker
from serve_apps.plan import CatalogIndex
from serve_apps.registry_follow import CatalogFollower
from serve_apps.service import ReadService
from serve_apps.similar import RegionIndexBackend, SimilarSearch

Clock = Callable[[], float]


class _ReaderUser:
    """``RedisUsers`` with only the reader filled in: serving has no other credentials."""

    def __init__(self, config: ServingConfig) -> None:
        self.reader_user = config.redis_reader_user
        self.writer_user = self.admin_user = ""


class _ReaderPassword:
    def __init__(self, config: ServingConfig) -> None:
        self.redis_reader_password = config.reader_password()
        self.redis_writer_password = self.redis_admin_password = config.reader_password()


def redis_store(config: ServingConfig, region: RegionConfig, clock: Clock) -> RedisStore:
    client = async_redis_client(
        region,
        RedisRole.READER,
        _ReaderUser(config),
        _ReaderPassword(config),
        config.redis_timeouts,
    )
    name = f"redis-{region.name}"
    return RedisStore(AsyncRedisTileReader(client, name), name, clock)


def dynamo_factory(config: ServingConfig) -> Callable[[RegionConfig], Any]:
    """boto3 clients with the serving timeouts and no botocore retries (the chain decides).

    One client per region, made on first use and shared (boto3 clients are thread-safe); building
    one means imports and model loading that hold the GIL, so :func:`warm_dynamo_clients` makes
    them in the replica's constructor, before Serve sends it a request: built on the first
    request, they would stall the event loop every request in flight is waiting on.
    """
    made: dict[str, Any] = {}

    def make(region: RegionConfig) -> Any:
        if region.name not in made:
            made[region.name] = _client(config, region)
        return made[region.name]

    return make


# Threads of each DynamoDB store's pool in ``build_chain`` (a read takes two: marker and tiles),
# and connections of each region's client, above them so that a read never waits for one.
_DYNAMODB_THREADS = 4
_DYNAMODB_POOL_SIZE = 2 * _DYNAMODB_THREADS


def started_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose ``threads`` threads all run already. ``ThreadPoolExecutor`` starts a
    thread inside ``submit`` and waits there until it runs, on the caller's thread: the first
    burst of DynamoDB reads (the moment the local Redis dies) started eight threads from the
    replica's event loop, which stalled 60-200 ms with every request in flight on it, and the
    replica shed them as its own overload."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
    gate = threading.Barrier(threads)  # each task holds its thread until all are started
    for done in [pool.submit(gate.wait) for _ in range(threads)]:
        done.result()
    return pool


def _client(config: ServingConfig, region: RegionConfig) -> Any:
    credentials = {
        name: secret.get_secret_value()
        for name, secret in (
            ("aws_access_key_id", config.dynamodb_access_key_id),
            ("aws_secret_access_key", config.dynamodb_secret_access_key),
        )
        if secret is not None
    }
    return dynamodb_client(
        region,
        config.timeouts.dynamodb_s,
        pool_size=_DYNAMODB_POOL_SIZE,
        max_attempts=1,
        credentials=credentials or None,
    )


DynamoFactory = Callable[[RegionConfig], Any]


def warm_dynamo_clients(config: ServingConfig) -> DynamoFactory:
    """A :func:`dynamo_factory` that already holds the client of every region of the chain."""
    factory = dynamo_factory(config)
    for region in config.topology.regions:
        factory(region)
    return factory


def dynamo_store(
    region: RegionConfig, clock: Clock, pool: ThreadPoolExecutor, factory: DynamoFactory
) -> DynamoStore:
    factory(region)  # made now if not warmed: the first build would eat a request's budget
    reader = DynamoTileReader(
        region, region.dynamodb_table, factory, retry=RetryPolicy(max_attempts=1)
    )
    return DynamoStore(reader, f"dynamodb-{region.name}", clock, pool)


def _never() -> bool:
    return False


def build_chain(
    config: ServingConfig,
    clock: Clock,
    stores: list[tuple[TileStore, float]] | None = None,
    dynamo: DynamoFactory | None = None,
    busy: Callable[[], bool] = _never,
) -> FallbackChain:
    """The chain of ``config.region``; ``stores`` (store, cap) replaces the real ones in tests
    (their caps do not grow with the number of keys). ``busy`` says the replica's loop lags too
    much to blame a store for a timeout (``FallbackChain``)."""
    t = config.timeouts
    entries: list[tuple[TileStore, float, float]] = []
    if stores is None:
        factory = dynamo or dynamo_factory(config)
        home = config.topology.get(config.region)
        for region in (home, *config.topology.failover_order(config.region)):
            entries.append((redis_store(config, region, clock), t.redis_s, t.redis_per_key_s))
            # A pool per store (a bulkhead): calls abandoned on a hung table keep their threads
            # until boto's socket timeout, and must not queue the next region's reads behind them.
            pool = started_pool(_DYNAMODB_THREADS, f"dynamodb-{region.name}")
            dynamodb = dynamo_store(region, clock, pool, factory)
            entries.append((dynamodb, t.dynamodb_s, t.dynamodb_per_key_s))
    else:
        entries = [(store, cap, 0.0) for store, cap in stores]
    policy = config.breaker.policy()
    steps = []
    for n, (store, cap, per_key) in enumerate(entries):
        share = t.share(home=n < 2)  # the home region's Redis and DynamoDB come first
        breaker = CircuitBreaker(store.name, clock, policy)
        steps.append(Step(store, breaker, cap, share, per_key))
    return FallbackChain(steps, clock, busy=busy, verdict_after_s=t.abandoned_verdict_s)


def build_http(
    config: ServingConfig,
    *,
    monotonic: Clock = time.monotonic,
    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    stores: list[tuple[TileStore, float]] | None = None,
    dynamo: DynamoFactory | None = None,
    embeddings: Sequence[EmbeddingView] = (),
) -> ServingHttp:
    """Catalog, chain, read service and HTTP logic of one region, ready to serve; with
    ``embeddings``, also ``POST /v1/similar`` over those views' index actors."""
    index = CatalogIndex(config.load_catalog(), config.tenant)
    # Real deployments only: unit tests drive the handler on short-lived loops of their own.
    lag = None
    if stores is None:
        limits = config.limits
        gauge = LagGauge(limits.max_loop_lag_ms / 1e3, busy_s=limits.own_overload_lag_ms / 1e3)
        lag = LagTicker(gauge, monotonic)
    chain = build_chain(config, monotonic, stores, dynamo, lag.gauge.busy if lag else _never)
    service = ReadService(index, chain, monotonic=monotonic, wall_ms=wall_ms)
    answers = answer_log(config) if stores is None else None
    metrics = NO_METRICS if stores is not None else serving_metrics(config, index)
    similar = similar_search(config, embeddings) if embeddings else None
    return ServingHttp(
        config, service, lag, monotonic, answers=answers, metrics=metrics, similar=similar
    )


def similar_search(config: ServingConfig, views: Sequence[EmbeddingView]) -> SimilarSearch:
    """The home region's index actors first, then the other regions' nearest first (the order
    of the tile chain); vectors by entity id from the home region's Redis (reader user)."""
    client = async_redis_client(
        config.topology.get(config.region),
        RedisRole.READER,
        _ReaderUser(config),
        _ReaderPassword(config),
        config.redis_timeouts,
    )
    regions = [config.region, *(r.name for r in config.topology.failover_order(config.region))]
    backend = RegionIndexBackend(regions, vectors=client.get)
    return SimilarSearch({v.name: v for v in views}, config.region, backend)


def serving_metrics(config: ServingConfig, index: CatalogIndex) -> RayServingMetrics:
    """The replica's Prometheus metrics (only inside a Serve replica)."""
    from ray import serve

    replica = serve.get_replica_context().replica_id.unique_id
    return RayServingMetrics(
        config.region, replica, index.freshness_targets_ms(), config.registry_version
    )


def catalog_follower(config: ServingConfig, http: ServingHttp) -> CatalogFollower:
    """The replica's follower of the registry versions published in its home region's Redis
    (``regions.registry_mirror``), with a client of its own: a poll never takes a connection a
    read is waiting for."""
    client = async_redis_client(
        config.topology.get(config.region),
        RedisRole.READER,
        _ReaderUser(config),
        _ReaderPassword(config),
        config.redis_timeouts,
    )
    return CatalogFollower(
        config.tenant,
        config.registry_version,
        read_number=lambda: served_number(client, config.tenant),
        read_version=lambda: served_version(client, config.tenant),
        use=http.use_catalog,
    )


def answer_log(config: ServingConfig) -> AnswerLog | None:
    """The writer of sampled answers to the home region's Redis, or None when sampling is off.
    Its own client: a log write never takes a connection a read is waiting for."""
    if config.answer_sample_share <= 0:
        return None
    client = async_redis_client(
        config.topology.get(config.region),
        RedisRole.READER,
        _ReaderUser(config),
        _ReaderPassword(config),
        config.redis_timeouts,
    )
    return AnswerLog(client, stream_key(config.tenant), config.answer_sample_share)
