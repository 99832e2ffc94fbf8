"""A region's Redis: role-scoped clients, the version-guarded tile writer and the serving reader.

On-store layout: one Redis hash per tile key (``key`` must match the ACL pattern ``fl:*``); each
hash field holds ``version (8 bytes, big-endian unsigned) | tag (1 byte) | payload`` where the tag
is 1 for a value and 2 for a version floor (0 marks a legacy tombstone). A delete really removes the
field (HDEL) and raises the floor of the field's (key, source partition), a field ``~p<n>``
(``regions.tiles.floor_field``): an absent field refuses any write not above that floor, so a
delayed older write can never resurrect a deleted field, and a hash holds its live tiles plus one
small floor per partition that ever deleted, instead of a tombstone per evicted tile. Readers
never return floors or tombstones.

Completeness marker: ``fl:meta:epoch`` (no TTL, so never evicted) is ``ready`` when the store holds
the complete changelog state and ``rehydrating`` while a sink replays the changelog into it; a
Redis that came back empty has no marker. Guarded writers refuse to write without it, and
:meth:`AsyncRedisTileReader.get_all_ready` (serving) raises ``StoreNotReady`` unless it is
``ready``, reading it in the same pipelined round trip as the tiles.

Error mapping (every public call): connection refused/reset -> ``StoreUnavailable``; no answer
within the socket timeout (including a paused or stopped server) -> ``StoreTimeout``; an error reply
(ACL, script) -> ``StoreRejected``. redis-py's own retries are disabled: the caller's
``RetryPolicy`` decides, within its deadline, so one call never silently costs several timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import redis
import redis.asyncio
import redis.exceptions as rex
from pydantic import SecretStr
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from features.errors import StoreTimeout, StoreUnavailable
from regions.config import RegionConfig
from regions.exceptions import AbandonedCall, StoreNotReady, StoreRejected, consume_outcome
from regions.resilience import Deadline
from regions.tiles import (
    HEADER_BYTES,
    TAG_OFFSET,
    TAG_VALUE,
    TileWrite,
    coalesce,
    decode_field,
    encode_field,
    floor_field,
)

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT_S = 0.5
DEFAULT_SOCKET_TIMEOUT_S = 0.5
DEFAULT_MAX_CONNECTIONS = 32

Fields = dict[str, bytes]


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
    (``serve_apps.config.ServingConfig.redis_timeouts``)."""

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


def redis_client(
    region: RegionConfig,
    role: RedisRole,
    users: RedisUsers,
    secrets: RedisPasswords,
    timeouts: RedisTimeouts | None = None,
) -> redis.Redis:
    """A pooled, thread-safe client of ``region``'s Redis as ``role``; no built-in retry."""
    kwargs = _client_kwargs(region, role, users, secrets, timeouts or RedisTimeouts())
    return redis.Redis(**kwargs, retry=Retry(NoBackoff(), 0))


def async_redis_client(
    region: RegionConfig,
    role: RedisRole,
    users: RedisUsers,
    secrets: RedisPasswords,
    timeouts: RedisTimeouts | None = None,
) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`redis_client`, for the serving path; bound to one event loop."""
    kwargs = _client_kwargs(region, role, users, secrets, timeouts or RedisTimeouts())
    return redis.asyncio.Redis(**kwargs, retry=AsyncRetry(NoBackoff(), 0))


def _mapped(store: str, exc: Exception) -> Exception:
    # Order matters: auth errors subclass ConnectionError but are configuration, not transport.
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError | rex.ResponseError):
        return StoreRejected(f"{store}: {type(exc).__name__}: {exc}")
    if isinstance(exc, rex.TimeoutError | asyncio.TimeoutError):
        return StoreTimeout(f"{store}: no answer in time")
    return StoreUnavailable(f"{store}: {type(exc).__name__}: {exc}")


@contextmanager
def _store_errors(store: str) -> Iterator[None]:
    try:
        yield
    except (rex.RedisError, OSError) as exc:
        raise _mapped(store, exc) from exc


def _check_budget(deadline: Deadline | None) -> None:
    if deadline is not None:
        # Raises DeadlineExceeded when spent; the socket timeout bounds the rest.
        deadline.timeout_for(1.0)


# Where a region's Redis says whether it holds the complete changelog state (see STORE_READY).
MARKER_KEY = "fl:meta:epoch"
STORE_READY = b"ready"
STORE_REHYDRATING = b"rehydrating"

# KEYS[1]: the marker; KEYS[2..]: the distinct tile keys. ARGV[1]: "guard" (refuse, returning -1,
# when the marker is missing: the store lost its data) or "seed" (set the marker to ready if it is
# missing: a seeding tool declares what it writes complete). Then, per tile key in KEYS order:
# ttl_ms, n, n (field, encoded, floor field) triples.
# Versions are compared as two 32-bit halves because Lua numbers are doubles (exact to 2**53 only).
# A field's guard is its own stored version when present, else its partition's floor (pre-batch:
# a batch may hold a delete and older writes of other fields of the same partition that precede it
# in the changelog; raising the floor mid-batch would refuse those).
_APPLY_LUA = """
local function newer(a, b)
  local ah, al = struct.unpack('>I4I4', a)
  local bh, bl = struct.unpack('>I4I4', b)
  if ah ~= bh then return ah > bh end
  return al > bl
end
local function wins(incoming, stored)
  if not stored or #stored < 9 then return true end
  if newer(incoming, stored) then return true end
  if newer(stored, incoming) then return false end
  return string.byte(incoming, 9) == 0 and string.byte(stored, 9) ~= 0
end
local marker = redis.call('GET', KEYS[1])
if not marker then
  if ARGV[1] == 'guard' then return -1 end
  redis.call('SET', KEYS[1], 'ready')
end
local applied, i = 0, 2
for k = 2, #KEYS do
  local key, ttl, n = KEYS[k], tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  local floors, raised, touched = {}, {}, false
  for _ = 1, n do
    local field, encoded, floor_field = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    i = i + 3
    local floor = floors[floor_field]
    if floor == nil then
      floor = redis.call('HGET', key, floor_field) or false
      floors[floor_field] = floor
    end
    local stored = redis.call('HGET', key, field)
    if wins(encoded, stored or floor or nil) then
      if string.byte(encoded, 9) == 0 then
        local changed = false
        if stored then redis.call('HDEL', key, field); changed = true end
        local top = raised[floor_field] or floor
        if not top or newer(encoded, top) then
          raised[floor_field] = string.sub(encoded, 1, 8) .. '\\2'
          changed = true
        end
        if changed then applied, touched = applied + 1, true end
      else
        redis.call('HSET', key, field, encoded)
        applied, touched = applied + 1, true
      end
    end
  end
  for floor_field, value in pairs(raised) do redis.call('HSET', key, floor_field, value) end
  if touched and redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return applied
"""

# Marks a rehydrated store ready only if it is still the rehydration this sink started (or is
# already ready): a store emptied again in between (the marker is gone) must not be declared
# complete.
_MARK_READY_LUA = """
local state = redis.call('GET', KEYS[1])
if state == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
if state == ARGV[1] or state == ARGV[2] then return 1 end
return 0
"""


@dataclass(frozen=True)
class ApplyResult:
    """``applied`` fields changed the store; ``ignored`` were stale or replays (once coalesced)."""

    applied: int
    ignored: int


class RedisTileWriter:
    """Applies tile batches to one region's Redis, one EVALSHA per batch.

    Invariants: one network round trip per non-empty batch (after the script is cached on the
    server: the very first call, or the first after a restart, costs two more to load it); atomic
    (Redis runs the script alone); monotone and idempotent per (key, field) as in ``regions.tiles``:
    a delete removes the field and raises its partition's floor, and an absent field refuses any
    write not above that floor, so replaying any prefix of the changelog changes nothing.
    TTL: each key that had a field written gets ``PEXPIRE`` of the largest ``ttl_ms`` of its writes
    in the batch, unless the key already lives longer (a TTL is extended, never shortened).

    ``guarded`` (the sinks): a batch is refused with ``StoreNotReady`` when the store's marker is
    missing, i.e. the store lost its data; the caller must rehydrate it from the changelog before
    writing again (:meth:`begin_rehydration`, :meth:`mark_ready`). Unguarded (seeding tools and
    tests that write a complete state directly): the first batch marks the store ready.
    """

    def __init__(
        self, client: redis.Redis, store: str, *, guarded: bool = False, marker: str = MARKER_KEY
    ) -> None:
        self._client = client
        self._store = store
        self._marker = marker
        self._mode = "guard" if guarded else "seed"
        self._script = client.register_script(_APPLY_LUA)
        self._mark_ready = client.register_script(_MARK_READY_LUA)

    def apply(self, batch: Sequence[TileWrite], deadline: Deadline | None = None) -> ApplyResult:
        writes = coalesce(batch)
        if not writes:
            return ApplyResult(0, 0)
        _check_budget(deadline)
        keys, args = _script_arguments(writes)
        with _store_errors(self._store):
            applied = int(self._script(keys=[self._marker, *keys], args=[self._mode, *args]))
        if applied < 0:
            raise StoreNotReady(f"{self._store}: store marker missing, the store lost its data")
        return ApplyResult(applied, len(writes) - applied)

    def store_state(self) -> bytes | None:
        """The marker: ``STORE_READY``, ``STORE_REHYDRATING``, or ``None`` (data lost or new)."""
        with _store_errors(self._store):
            value: Any = self._client.get(self._marker)
        return None if value is None else bytes(value)

    def begin_rehydration(self) -> None:
        """Mark the store incomplete: readers go elsewhere and guarded writes are accepted."""
        with _store_errors(self._store):
            self._client.set(self._marker, STORE_REHYDRATING)

    def mark_ready(self) -> bool:
        """Declare a rehydrated store complete; ``False`` (nothing changed) when the marker is no
        longer the one :meth:`begin_rehydration` set, i.e. the store was emptied again."""
        with _store_errors(self._store):
            done = self._mark_ready(keys=[self._marker], args=[STORE_REHYDRATING, STORE_READY])
        return int(done) == 1


def _script_arguments(writes: Sequence[TileWrite]) -> tuple[list[str], list[bytes | str | int]]:
    by_key: dict[str, list[TileWrite]] = {}
    for write in writes:
        by_key.setdefault(write.key, []).append(write)
    args: list[bytes | str | int] = []
    for group in by_key.values():
        args += [max(w.ttl_ms for w in group), len(group)]
        for write in group:
            args += [write.field, encode_field(write), floor_field(write.field)]
    return list(by_key), args


def _live(raw: Mapping[bytes, bytes]) -> Fields:
    """The live fields of one HGETALL reply, headers stripped (:func:`decode_field` inlined: it
    runs once per stored field on the serving path, 6,000 times for 100 entities)."""
    out: Fields = {}
    for field, stored in raw.items():
        if len(stored) < HEADER_BYTES:
            decode_field(stored)  # raises the DataError
        if stored[TAG_OFFSET] == TAG_VALUE:
            out[field.decode()] = stored[HEADER_BYTES:]
    return out


def _picked(fields: Sequence[str], raw: Sequence[bytes | None]) -> Fields:
    out: Fields = {}
    for field, stored in zip(fields, raw, strict=True):
        payload = None if stored is None else decode_field(stored)[1]
        if payload is not None:
            out[field] = payload
    return out


class RedisTileReader:
    """Serving-path reads with read-only commands (the ``reader`` role suffices).

    Invariants: one round trip per call (a non-transactional pipeline); every requested key is in
    the result (an empty dict when absent); versions are stripped and tombstones never returned.
    """

    def __init__(self, client: redis.Redis, store: str) -> None:
        self._client = client
        self._store = store

    def get_all(self, keys: Sequence[str], deadline: Deadline | None = None) -> dict[str, Fields]:
        """Every live field of each key (HGETALL)."""
        _check_budget(deadline)
        with _store_errors(self._store):
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            replies = pipe.execute()
        return {key: _live(raw) for key, raw in zip(keys, replies, strict=True)}

    def get_fields(
        self, wanted: Mapping[str, Sequence[str]], deadline: Deadline | None = None
    ) -> dict[str, Fields]:
        """The named fields of each key (HMGET); absent or deleted fields are left out."""
        _check_budget(deadline)
        items = [(key, list(fields)) for key, fields in wanted.items() if fields]
        with _store_errors(self._store):
            pipe = self._client.pipeline(transaction=False)
            for key, fields in items:
                pipe.hmget(key, fields)
            replies = pipe.execute()
        out: dict[str, Fields] = {key: {} for key in wanted}
        for (key, fields), raw in zip(items, replies, strict=True):
            out[key] = _picked(fields, raw)
        return out


class AsyncRedisTileReader:
    """The asyncio twin of :class:`RedisTileReader`; a deadline bounds the whole call."""

    def __init__(
        self, client: redis.asyncio.Redis, store: str, *, marker: str = MARKER_KEY
    ) -> None:
        self._client = client
        self._store = store
        self._marker = marker

    async def get_all_ready(
        self, keys: Sequence[str], deadline: Deadline | None = None
    ) -> dict[str, Fields]:
        """Like :meth:`get_all`, but raises ``StoreNotReady`` unless the store's marker says it is
        complete; the marker travels in the same pipelined round trip as the tiles."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._marker)
        for key in keys:
            pipe.hgetall(key)
        replies = await self._execute(pipe, deadline)
        if replies[0] != STORE_READY:
            state = "missing" if replies[0] is None else repr(replies[0])
            raise StoreNotReady(f"{self._store}: store marker {state}, not complete")
        return {key: _live(raw) for key, raw in zip(keys, replies[1:], strict=True)}

    async def get_all(
        self, keys: Sequence[str], deadline: Deadline | None = None
    ) -> dict[str, Fields]:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        replies = await self._execute(pipe, deadline)
        return {key: _live(raw) for key, raw in zip(keys, replies, strict=True)}

    async def get_fields(
        self, wanted: Mapping[str, Sequence[str]], deadline: Deadline | None = None
    ) -> dict[str, Fields]:
        items = [(key, list(fields)) for key, fields in wanted.items() if fields]
        pipe = self._client.pipeline(transaction=False)
        for key, fields in items:
            pipe.hmget(key, fields)
        replies = await self._execute(pipe, deadline)
        out: dict[str, Fields] = {key: {} for key in wanted}
        for (key, fields), raw in zip(items, replies, strict=True):
            out[key] = _picked(fields, raw)
        return out

    async def _execute(self, pipe: Any, deadline: Deadline | None) -> list[Any]:
        """Run ``pipe`` within the deadline. A call past it is abandoned, not cancelled: the
        round trip finishes in the background (bounded by the socket timeout) and its connection
        goes back to the pool. Cancelling it mid-reply leaves the connection unusable, so every
        timeout cost a reconnect (TCP, AUTH, CLIENT SETNAME); under load that churn was more
        load on the Redis that was already slow (serve-overload drill, docs/reliability.md)."""
        timeout = None if deadline is None else deadline.timeout_for(1.0)
        call = asyncio.ensure_future(pipe.execute())
        call.add_done_callback(consume_outcome)  # nobody may await it: timed out or cancelled
        try:
            async with asyncio.timeout(timeout):
                return list(await asyncio.shield(call))
        except TimeoutError as exc:  # our deadline
            if not call.done():  # the call goes on; its fate is known later
                message = f"{self._store}: no answer in {timeout or 0:.3f}s"
                raise AbandonedCall(message, call) from exc
            # The reply landed in the same turn of the loop as the timer: a lagging loop runs
            # both together. It answered; calling that a timeout opened healthy breakers.
            failure = call.exception()
            if failure is None:
                return list(call.result())
            raise _mapped(self._store, failure) from failure
        except (rex.RedisError, OSError) as exc:
            raise _mapped(self._store, exc) from exc


def guarded(call: Callable[[], T], store: str) -> T:
    """Run an arbitrary client call with this module's error mapping (for ad-hoc admin calls)."""
    with _store_errors(store):
        return call()
