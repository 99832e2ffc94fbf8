"""Serving configuration: one frozen :class:`ServingConfig` per region application.

It is built once (by ``serve_apps.deploy`` from the stack settings, or from a Serve config file's
``args``) and handed to the deployment; nothing in the serving path reads the environment.

Invariants:
- API keys are stored only as SHA-256 hex digests (keys are random 32-byte tokens, so a plain
  digest is enough; they are not passwords a person chose);
- the Redis password is either given as a ``SecretStr`` (the Python ``deploy`` path: it travels to
  Ray pickled, never written to disk) or read from ``redis_password_file`` (a JSON file such as the
  stack's ``secrets.json``, mode 0600), so a generated Serve YAML never contains a secret;
- serving always connects as the read-only Redis user (``redis_reader_user``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import secrets
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from features.catalog import Catalog, Name
from features.keys import DEFAULT_TENANT
from regions.answer_log import DEFAULT_SAMPLE_SHARE
from regions.config import RegionTopology
from regions.redis_store import DEFAULT_CONNECT_TIMEOUT_S, RedisTimeouts
from regions.resilience import (
    DEFAULT_FAILURE_RATE_THRESHOLD,
    DEFAULT_HALF_OPEN_PROBES,
    DEFAULT_MIN_CALLS,
    DEFAULT_OPEN_S,
    DEFAULT_SLOW_CALL_RATE_THRESHOLD,
    DEFAULT_WINDOW_CALLS,
    DEFAULT_WINDOW_S,
    BreakerPolicy,
    step_timeout,
)
from serve_apps.defaults import DEFAULT_REPLICAS

DEMO_CATALOG = "features.demo:card_transactions_catalog"


class Scope(StrEnum):
    READ = "read"  # feature reads, catalog
    ADMIN = "admin"  # reserved for operator routes; implies nothing about read


def hash_api_key(raw: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    """A fresh random key (``fl_`` + 43 url-safe characters); show it once, store its hash."""
    return "fl_" + secrets.token_urlsafe(32)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ApiKey(_Frozen):
    """One client's key: its name (logged), SHA-256 digest and scopes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[Scope] = frozenset({Scope.READ})

    @classmethod
    def from_raw(cls, name: str, raw: str, scopes: frozenset[Scope] | None = None) -> ApiKey:
        return cls(name=name, sha256=hash_api_key(raw), scopes=scopes or frozenset({Scope.READ}))


class Limits(_Frozen):
    """Request limits. At most ``max_in_flight`` requests are worked on by one replica at a time
    (our handler's adaptive gate, which shrinks towards ``min_in_flight`` while the replica is
    overloaded, and refuses the rest on arrival with 503 and ``Retry-After``). Serve hands the
    handler up to ``max_in_flight + max_queued`` at once (its ``max_ongoing_requests``) and
    queues ``max_queued`` more beyond that before its own 503: a request should meet our gate on
    arrival, not after a wait in Serve's queue behind slow ones. By Little's law the in-flight
    limit bounds an accepted request's wait: keep ``max_in_flight`` divided by the replica's
    throughput well under ``default_deadline_ms`` (docs/serving.md)."""

    max_body_bytes: int = Field(default=256 * 1024, ge=256, le=16 * 1024 * 1024)
    max_entities: int = Field(default=1_000, ge=1, le=100_000)
    max_features: int = Field(default=500, ge=1, le=10_000)
    default_deadline_ms: int = Field(default=200, ge=1, le=60_000)
    max_deadline_ms: int = Field(default=5_000, ge=1, le=600_000)
    max_in_flight: int = Field(default=32, ge=1, le=100_000)
    # The adaptive in-flight limit's floor: it shrinks towards this while requests meet the
    # replica's own overload (serve_apps.overload.AdaptiveLimit); at most max_in_flight.
    min_in_flight: int = Field(default=4, ge=1, le=100_000)
    max_queued: int = Field(default=32, ge=1, le=100_000)
    retry_after_s: int = Field(default=1, ge=1, le=60)
    # Our 503s ask for retry_after_s plus 0..retry_after_jitter_s whole seconds, drawn per
    # refusal, so that clients which wait exactly what they are told do not all come back in the
    # same second (the usual defence against synchronised retries).
    retry_after_jitter_s: int = Field(default=2, ge=0, le=60)
    # Shed new reads while the event loop's smoothed lag is over this (0: off). Requests are
    # not equal in cost, and the box is shared: the loop's lag measures both (serve_apps.overload).
    max_loop_lag_ms: int = Field(default=100, ge=0, le=10_000)
    # A store timeout while the smoothed lag is over this is the replica's own overload: 503,
    # the breaker untouched, no fallback reads (serve_apps.fallback; 0: always blame the store).
    own_overload_lag_ms: int = Field(default=20, ge=0, le=10_000)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.default_deadline_ms > self.max_deadline_ms:
            raise ValueError("default_deadline_ms must not exceed max_deadline_ms")
        return self


class BreakerSettings(_Frozen):
    """The per-store circuit breaker (see ``regions.resilience.BreakerPolicy``, whose defaults
    these are): a store that fails half of its last calls, or answers every one of them only
    after the read had moved on, is skipped for ``open_s``."""

    failure_rate_threshold: float = Field(default=DEFAULT_FAILURE_RATE_THRESHOLD, gt=0, le=1)
    slow_call_rate_threshold: float = Field(default=DEFAULT_SLOW_CALL_RATE_THRESHOLD, gt=0, le=1)
    window_calls: int = Field(default=DEFAULT_WINDOW_CALLS, ge=1)
    window_s: float = Field(default=DEFAULT_WINDOW_S, gt=0)
    min_calls: int = Field(default=DEFAULT_MIN_CALLS, ge=1)
    open_s: float = Field(default=DEFAULT_OPEN_S, gt=0)
    half_open_probes: int = Field(default=DEFAULT_HALF_OPEN_PROBES, ge=1)

    def policy(self) -> BreakerPolicy:
        return BreakerPolicy(**self.model_dump())


class StoreTimeouts(_Frozen):
    """How long serving waits for a store: the one place that decides a store read's timeout.

    A read of ``keys`` keys in the fallback chain gets ``min(cap, share x what is left of the
    request's budget)`` (``regions.resilience.step_timeout``), where the cap is ``redis_s``
    (``dynamodb_s``) plus ``redis_per_key_s`` (``dynamodb_per_key_s``) per key and the share is
    ``local_share`` for the home region's stores, ``remote_share`` for the others; the chain's
    last step gets the whole remainder. :meth:`redis_read_s` is that timeout for a Redis read.
    Redis sockets only get backstops beyond it (:attr:`ServingConfig.redis_timeouts`)."""

    redis_s: float = Field(default=0.05, gt=0, le=10)
    dynamodb_s: float = Field(default=0.5, gt=0, le=30)
    # Added to the cap per key read: a reply's size, and the replica's time to parse it, grow
    # with the number of entities.
    redis_per_key_s: float = Field(default=0.001, ge=0, le=1)
    dynamodb_per_key_s: float = Field(default=0.002, ge=0, le=1)
    # The home region's two stores share what is left with the rest of the chain; a remote
    # store is tried when both home stores failed, so it may take more of what remains.
    remote_share: float = Field(default=0.5, gt=0, le=1)
    local_share: float = Field(default=0.34, gt=0, le=1)
    # How long after a timeout an abandoned call may still answer and count as slow, not dead
    # (serve_apps.fallback); also how long a hung store takes to open its breaker.
    abandoned_verdict_s: float = Field(default=1.0, gt=0, le=60)

    def share(self, *, home: bool) -> float:
        """The share of the remaining budget a chain step of a home (or remote) store gets."""
        return self.local_share if home else self.remote_share

    def redis_read_s(self, keys: int, remaining_s: float, *, home: bool = True) -> float:
        """The timeout of one Redis read of ``keys`` keys with ``remaining_s`` of budget left."""
        return step_timeout(
            self.redis_s, self.redis_per_key_s, keys, self.share(home=home), remaining_s
        )


class ServingConfig(_Frozen):
    """Everything one region's application needs."""

    region: str
    topology: RegionTopology
    redis_reader_user: str = "fl-reader"
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    redis_password_key: str = "redis_reader_password"  # noqa: S105 - a JSON key, not a secret
    dynamodb_access_key_id: SecretStr | None = None
    dynamodb_secret_access_key: SecretStr | None = None
    catalog_import: str | None = DEMO_CATALOG
    catalog_inline: dict[str, Any] | None = None
    # The registry version the catalog above is (None: a catalog from code). Replicas follow
    # newer versions published in their region's Redis every registry_refresh_s (0: never).
    registry_version: int | None = Field(default=None, ge=1)
    registry_refresh_s: float = Field(default=5.0, ge=0, le=3600)
    tenant: Name = DEFAULT_TENANT
    api_keys: tuple[ApiKey, ...] = ()
    limits: Limits = Field(default_factory=Limits)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    timeouts: StoreTimeouts = Field(default_factory=StoreTimeouts)
    # At least limits.max_in_flight: redis-py's asyncio pool raises instead of waiting when it is
    # exhausted, which would send a busy replica down the fallback chain for no store fault.
    redis_max_connections: int = Field(default=256, ge=1, le=10_000)
    replicas: int = Field(default=DEFAULT_REPLICAS, ge=1, le=64)
    # Ray starts worker processes at nice 15 so that its raylet and GCS win the CPU; a replica is
    # the request path, so it runs at the node's normal priority unless told otherwise.
    niceness: int = Field(default=0, ge=0, le=19)
    # The replica's log level (Serve's and ours). Serve's per-request access log stays off: in
    # throughput mode it writes its buffered records from the event loop in one go, stalling
    # every request in flight (docs/serving.md).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    # The share of entities whose answers are logged for the consistency validator (by a hash of
    # the entity id, regions.answer_log; 0: off).
    answer_sample_share: float = Field(default=DEFAULT_SAMPLE_SHARE, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.region not in self.topology.names:
            raise ValueError(f"region {self.region!r} is not in the topology")
        if (self.redis_password is None) == (self.redis_password_file is None):
            raise ValueError("exactly one of redis_password and redis_password_file is required")
        if self.redis_max_connections < self.limits.max_in_flight:
            raise ValueError("redis_max_connections must be at least limits.max_in_flight")
        if (self.catalog_import is None) == (self.catalog_inline is None):
            raise ValueError("exactly one of catalog_import and catalog_inline is required")
        return self

    @property
    def redis_timeouts(self) -> RedisTimeouts:
        """The Redis clients' socket limits. Backstops only: every read runs under the chain's
        own timeout (:meth:`StoreTimeouts.redis_read_s`), and a read past it is abandoned, not
        cancelled, so its round trip finishes in the background within these bounds."""
        base = self.timeouts.redis_s
        return RedisTimeouts(
            # Not the base cap: a connect slower than it goes on in the background and lands in
            # the pool, where cut at the cap it would fail outright on a busy box and count
            # against the breaker at once; a dead host still opens it within the verdict delay.
            connect_s=max(base, DEFAULT_CONNECT_TIMEOUT_S),
            # A big pipelined reply must not be cut at the base cap: the longest budget a
            # request may ask for bounds it instead.
            socket_s=max(base, self.limits.max_deadline_ms / 1000.0),
            max_connections=self.redis_max_connections,
        )

    @property
    def route_prefix(self) -> str:
        return f"/{self.region}"

    def reader_password(self) -> SecretStr:
        """The read-only user's password, from the config or its file (read at replica start)."""
        if self.redis_password is not None:
            return self.redis_password
        if self.redis_password_file is None:
            raise ValueError("no redis password configured")
        data: Mapping[str, Any] = json.loads(self.redis_password_file.read_text())
        return SecretStr(str(data[self.redis_password_key]))

    def load_catalog(self) -> Catalog:
        if self.catalog_inline is not None:
            return Catalog.from_dict(self.catalog_inline)
        module, _, name = (self.catalog_import or "").partition(":")
        factory = getattr(importlib.import_module(module), name)
        catalog = factory()
        if not isinstance(catalog, Catalog):
            raise TypeError(f"{self.catalog_import} did not return a Catalog")
        return catalog
