"""Clients of a region's Redis (one server, or a Redis Cluster when the region has several
shards) and the mapping of redis-py's errors onto ours.

Error mapping (every public call of ``regions.redis_store``): connection refused/reset, a cluster
that cannot be reached or whose slot has no master -> ``StoreUnavailable``; no answer within the
socket timeout (including a paused or stopped server) -> ``StoreTimeout``; an error reply (ACL,
script) -> ``StoreRejected``. redis-py's own retries are disabled, the cluster client's included:
the caller's ``RetryPolicy`` decides, within its deadline, so one call never silently costs several
timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import redis
import redis.asyncio
import redis.exceptions as rex
from pydantic import SecretStr
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from features.errors import StoreTimeout, StoreUnavailable
from regions.config import RegionConfig
from regions.exceptions import StoreRejected
from regions.redis_layout import CLUSTER, SINGLE, RedisLayout
from regions.resilience import Deadline

DEFAULT_CONNECT_TIMEOUT_S = 0.5
DEFAULT_SOCKET_TIMEOUT_S = 0.5
DEFAULT_MAX_CONNECTIONS = 32


class RedisRole(StrEnum):
    WRITER = "writer"
    READER = "reader"
    ADMIN = "admin"


class RedisUsers(Protocol):
    """The ACL user names (``cluster.settings.RedisSettings`` satisfies this)."""

    @property
    def admin_user(self) -> str: ...
    @property
    def writer_user(self) -> str: ...
    @property
    def reader_user(self) -> str: ...


class RedisPasswords(Protocol):
    """The ACL passwords (``cluster.settings.Secrets`` satisfies this)."""

    @property
    def redis_admin_password(self) -> SecretStr: ...
    @property
    def redis_writer_password(self) -> SecretStr: ...
    @property
    def redis_reader_password(self) -> SecretStr: ...


@dataclass(frozen=True)
class RedisTimeouts:
    """Per-connection limits. ``socket_s`` bounds every command, so it is the worst-case latency
    of one call on a hung server. The defaults are the writers' and tools'; serving reads run
    under their own shorter timeouts and set these as backstops
    (``serve_apps.config.ServingConfig.redis_timeouts``). A cluster client has
    ``max_connections`` per node."""

    connect_s: float = DEFAULT_CONNECT_TIMEOUT_S
    socket_s: float = DEFAULT_SOCKET_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def _credentials(
    role: RedisRole, users: RedisUsers, secrets: RedisPasswords
) -> tuple[str, SecretStr]:
    if role is RedisRole.WRITER:
        return users.writer_user, secrets.redis_writer_password
    if role is RedisRole.READER:
        return users.reader_user, secrets.redis_reader_password
    return users.admin_user, secrets.redis_admin_password


def _client_kwargs(
    region: RegionConfig,
    role: RedisRole,
    users: RedisUsers,
    secrets: RedisPasswords,
    timeouts: RedisTimeouts,
) -> dict[str, Any]:
    username, password = _credentials(role, users, secrets)
    return {
        "host": region.redis_host,
        "port": region.redis_port,
        "username": username,
        "password": password.get_secret_value(),
        "socket_timeout": timeouts.socket_s,
        "socket_connect_timeout": timeouts.connect_s,
        "max_connections": timeouts.max_connections,
        "client_name": f"freshline-{region.name}-{role.value}",
    }


# A cluster client learns the other masters from the node it is given. Without full coverage
# required, a client made while one master is down still serves the others' slots.
_CLUSTER_KWARGS: dict[str, Any] = {"require_full_coverage": False}


def redis_client(
    region: RegionConfig,
    role: RedisRole,
    users: RedisUsers,
    secrets: RedisPasswords,
    timeouts: RedisTimeouts | None = None,
) -> Any:
    """A pooled, thread-safe client of ``region``'s Redis as ``role``; no built-in retry.

    A ``redis.Redis`` for one server; a ``redis.RedisCluster`` when ``region.redis_shards > 1``
    (it connects at once to learn the slots). Typed ``Any``: callers use the commands both
    share."""
    kwargs = _client_kwargs(region, role, users, secrets, timeouts or RedisTimeouts())
    if region.redis_shards > 1:
        with store_errors(f"redis-{region.name}"):
            return redis.RedisCluster(**kwargs, **_CLUSTER_KWARGS, retry=Retry(NoBackoff(), 0))
    return redis.Redis(**kwargs, retry=Retry(NoBackoff(), 0))


def async_redis_client(
    region: RegionConfig,
    role: RedisRole,
    users: RedisUsers,
    secrets: RedisPasswords,
    timeouts: RedisTimeouts | None = None,
) -> Any:
    """The asyncio twin of :func:`redis_client`, for the serving path; bound to one event loop
    (a cluster client connects on its first command)."""
    kwargs = _client_kwargs(region, role, users, secrets, timeouts or RedisTimeouts())
    if region.redis_shards > 1:
        return redis.asyncio.RedisCluster(
            **kwargs, **_CLUSTER_KWARGS, retry=AsyncRetry(NoBackoff(), 0)
        )
    return redis.asyncio.Redis(**kwargs, retry=AsyncRetry(NoBackoff(), 0))


def layout_of(client: object, marker: str | None = None) -> RedisLayout:
    """The layout a client's Redis uses: bucketed for a cluster client, else one bucket.
    ``marker`` overrides the marker key (its base, for a cluster)."""
    cluster = isinstance(client, redis.RedisCluster | redis.asyncio.RedisCluster)
    layout = CLUSTER if cluster else SINGLE
    return layout if marker is None else RedisLayout(layout.buckets, marker)


_UNAVAILABLE = (rex.ClusterDownError, rex.TryAgainError, rex.RedisClusterException)


def mapped(store: str, exc: Exception) -> Exception:
    # Order matters: a down cluster answers with error replies, and auth errors subclass
    # ConnectionError, but the first is transport and the second configuration.
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailable(f"{store}: {type(exc).__name__}: {exc}")
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError | rex.ResponseError):
        return StoreRejected(f"{store}: {type(exc).__name__}: {exc}")
    if isinstance(exc, rex.TimeoutError | asyncio.TimeoutError):
        return StoreTimeout(f"{store}: no answer in time")
    return StoreUnavailable(f"{store}: {type(exc).__name__}: {exc}")


@contextmanager
def store_errors(store: str) -> Iterator[None]:
    try:
        yield
    except (rex.RedisError, rex.RedisClusterException, OSError) as exc:
        raise mapped(store, exc) from exc


def check_budget(deadline: Deadline | None) -> None:
    if deadline is not None:
        # Raises DeadlineExceeded when spent; the socket timeout bounds the rest.
        deadline.timeout_for(1.0)
