"""A region's Redis: the version-guarded tile writer and the serving reader, on one server or a
Redis Cluster (clients and error mapping: ``regions.redis_clients``; key layout:
``regions.redis_layout``).

On-store layout: one Redis hash per tile key (``key`` must match the ACL pattern ``fl:*``; in a
cluster the stored key carries its bucket's hash tag); each hash field holds ``version (8 bytes,
big-endian unsigned) | tag (1 byte) | payload`` where the tag is 1 for a value and 2 for a version
floor (0 marks a legacy tombstone). A delete really removes the field (HDEL) and raises the floor
of the field's (key, source partition), a field ``~p<n>`` (``regions.tiles.floor_field``): an
absent field refuses any write not above that floor, so a delayed older write can never resurrect
a deleted field, and a hash holds its live tiles plus one small floor per partition that ever
deleted, instead of a tombstone per evicted tile. Readers never return floors or tombstones.

Completeness markers, one per bucket (one server: the one bucket's ``fl:meta:epoch``; a cluster:
``fl:meta:epoch:{tag}`` beside the bucket's keys), no TTL, so never evicted: ``ready`` when the
bucket holds the complete changelog state and ``rehydrating`` while a sink replays the changelog
into it; a bucket whose master came back empty has no marker. Guarded writes refuse a bucket
without it, and :meth:`AsyncRedisTileReader.get_all_ready` (serving) raises ``StoreNotReady``
unless every bucket it reads is ``ready``, reading their markers in the same pipelined round trip
as the tiles. A master that comes back empty so loses only its own buckets' markers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.exceptions as rex

from features.shards import SOLE, Shard
from regions import rehydration
from regions.exceptions import AbandonedCall, StoreNotReady, consume_outcome
from regions.redis_clients import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SOCKET_TIMEOUT_S,
    RedisPasswords,
    RedisRole,
    RedisTimeouts,
    RedisUsers,
    async_redis_client,
    check_budget,
    layout_of,
    mapped,
    redis_client,
    store_errors,
)
from regions.rehydration import shard_view
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

# The clients moved to regions.redis_clients; their importers keep importing them from here.
__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_SOCKET_TIMEOUT_S",
    "RedisPasswords",
    "RedisRole",
    "RedisTimeouts",
    "RedisUsers",
    "async_redis_client",
    "redis_client",
]
_store_errors = store_errors  # regions.redis_vectors maps its errors with it

Fields = dict[str, bytes]


# What a bucket's marker (regions.redis_layout) says of the bucket.
STORE_READY = rehydration.READY
STORE_REHYDRATING = rehydration.REHYDRATING

# One bucket's writes. KEYS[1]: the bucket's marker; KEYS[2..]: the distinct tile keys, all in one
# slot. ARGV[1]: "guard" (refuse, returning -1, when the marker is missing: the bucket lost its
# data) or "seed" (set the marker to ready if it is missing: a seeding tool declares what it
# writes complete). Then, per tile key in KEYS order:
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

# Begins or joins a bucket's rehydration (regions.rehydration). KEYS: marker, pending hash.
# ARGV: shard count, a fresh epoch. Returns the epoch in force.
_BEGIN_LUA = """
local state = redis.call('GET', KEYS[1])
if state == 'rehydrating' and redis.call('HGET', KEYS[2], 'count') == ARGV[1] then
  local epoch = redis.call('HGET', KEYS[2], 'epoch')
  if epoch then return epoch end
end
redis.call('SET', KEYS[1], 'rehydrating')
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'count', ARGV[1])
for i = 0, tonumber(ARGV[1]) - 1 do redis.call('HSET', KEYS[2], tostring(i), '1') end
return ARGV[2]
"""

# One shard's part of a bucket's rehydration is done. KEYS: marker, pending hash. ARGV: shard
# index, the epoch it joined. 1: done (the last shard out marks the bucket ready; a ready bucket
# needs nothing more); 0: the bucket was emptied again or its epoch replaced, nothing declared.
_FINISH_LUA = """
local state = redis.call('GET', KEYS[1])
if state == 'ready' then return 1 end
if state ~= 'rehydrating' or redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HLEN', KEYS[2]) <= 2 then
  redis.call('SET', KEYS[1], 'ready')
  redis.call('DEL', KEYS[2])
end
return 1
"""


@dataclass(frozen=True)
class ApplyResult:
    """``applied`` fields changed the store; ``ignored`` were stale or replays (once coalesced)."""

    applied: int
    ignored: int


class RedisTileWriter:
    """Applies tile batches to one region's Redis, one EVALSHA per bucket the batch touches.

    Invariants: one network round trip per non-empty batch on one server (one bucket); on a
    cluster, the buckets' calls go in one pipeline, one round trip per master, in parallel (after
    the script is cached on a server: the first call, or the first after a restart, costs more to
    load it); atomic per bucket (Redis runs each script alone); monotone and idempotent per (key,
    field) as in ``regions.tiles``: a delete removes the field and raises its partition's floor,
    and an absent field refuses any write not above that floor, so replaying any prefix of the
    changelog changes nothing. TTL: each key that had a field written gets ``PEXPIRE`` of the
    largest ``ttl_ms`` of its writes in the batch, unless the key already lives longer.

    ``guarded`` (the sinks): the writes of a bucket whose marker is missing (its master lost its
    data) are refused, and the batch raises ``StoreNotReady`` after the other buckets' writes
    were applied; the caller must rehydrate the lost buckets from the changelog before writing
    them again (:meth:`bucket_states`, :meth:`begin_rehydration`, :meth:`mark_ready`). Unguarded
    (seeding tools and tests that write a complete state directly): the first write to a bucket
    marks it ready.
    """

    def __init__(
        self,
        client: Any,
        store: str,
        *,
        guarded: bool = False,
        marker: str | None = None,
        shard: Shard = SOLE,
    ) -> None:
        self._client = client
        self._store = store
        self._layout = layout_of(client, marker)
        self._mode = "guard" if guarded else "seed"
        self._shard = shard
        self._epochs: dict[int, str] = {}  # per bucket, the rehydration epoch this writer joined
        self._script = client.register_script(_APPLY_LUA)
        self._begin = client.register_script(_BEGIN_LUA)
        self._finish = client.register_script(_FINISH_LUA)

    @property
    def buckets(self) -> range:
        return self._layout.all_buckets

    def bucket_of(self, key: str) -> int:
        return self._layout.bucket_of(key)

    def apply(self, batch: Sequence[TileWrite], deadline: Deadline | None = None) -> ApplyResult:
        writes = coalesce(batch)
        if not writes:
            return ApplyResult(0, 0)
        check_budget(deadline)
        groups = self._layout.group(writes)
        calls = [self._arguments(bucket, group) for bucket, group in groups.items()]
        with store_errors(self._store):
            replies = [int(r) for r in self._run(calls)]
        lost = [bucket for bucket, reply in zip(groups, replies, strict=True) if reply < 0]
        if lost:
            raise StoreNotReady(
                f"{self._store}: marker of {len(lost)} bucket(s) missing, they lost their data"
            )
        applied = sum(replies)
        return ApplyResult(applied, len(writes) - applied)

    def _arguments(self, bucket: int, writes: Sequence[TileWrite]) -> tuple[list[str], list[Any]]:
        keys, args = _script_arguments(writes, self._layout.stored_key)
        return [self._layout.marker_key(bucket), *keys], [self._mode, *args]

    def _run(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        if len(calls) == 1:  # redis-py's Script loads the script itself when the server lacks it
            keys, args = calls[0]
            return [self._script(keys=keys, args=args)]
        try:
            return self._pipelined(calls)
        except rex.NoScriptError:  # a master restarted since the script was loaded
            self._client.script_load(_APPLY_LUA)
            return self._pipelined(calls)

    def _pipelined(self, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
        return list(pipe.execute())

    def bucket_states(self) -> dict[int, bytes | None]:
        """Each bucket's marker: ``STORE_READY``, ``STORE_REHYDRATING`` or ``None`` (lost)."""
        with store_errors(self._store):
            pipe = self._client.pipeline(transaction=False)
            for bucket in self.buckets:
                pipe.get(self._layout.marker_key(bucket))
            replies = pipe.execute()
        pairs = zip(self.buckets, replies, strict=True)
        return {bucket: None if v is None else bytes(v) for bucket, v in pairs}

    def store_state(self) -> bytes | None:
        """The store's state as one marker: ``None`` when any bucket lost its data, else
        ``STORE_REHYDRATING`` when any is being rehydrated, else ``STORE_READY``."""
        states = set(self.bucket_states().values())
        if None in states:
            return None
        return STORE_REHYDRATING if STORE_REHYDRATING in states else STORE_READY

    def shard_states(self) -> dict[int, bytes | None]:
        """Each bucket as this writer's sink shard sees it (``regions.rehydration.shard_view``):
        ``STORE_READY``, ``STORE_REHYDRATING``, ``REHYDRATING_ELSEWHERE`` or ``None`` (lost)."""
        index = str(self._shard.index)
        with store_errors(self._store):
            pipe = self._client.pipeline(transaction=False)
            for bucket in self.buckets:
                pipe.get(self._layout.marker_key(bucket))
                pipe.hmget(self._layout.pending_key(bucket), ["count", index])
            replies = pipe.execute()
        out: dict[int, bytes | None] = {}
        for bucket, marker, (count, mine) in zip(
            self.buckets, replies[::2], replies[1::2], strict=True
        ):
            state = None if marker is None else bytes(marker)
            shards = None if count is None else int(count)
            out[bucket] = shard_view(state, shards, mine is not None, self._shard)
        return out

    def begin_rehydration(self, buckets: Collection[int] | None = None) -> None:
        """Mark ``buckets`` (default: all) incomplete, or join the rehydration of them that
        other shards began (``regions.rehydration``): readers of them go elsewhere and guarded
        writes to them are accepted."""
        with store_errors(self._store):
            for bucket in self.buckets if buckets is None else buckets:
                keys = [self._layout.marker_key(bucket), self._layout.pending_key(bucket)]
                epoch = self._begin(keys=keys, args=[self._shard.count, uuid.uuid4().hex])
                self._epochs[bucket] = epoch.decode() if isinstance(epoch, bytes) else str(epoch)

    def mark_ready(self, buckets: Collection[int] | None = None) -> bool:
        """This shard's replay into ``buckets`` (default: all) is complete; the last shard out
        marks a bucket ready. ``False`` when one of them is no longer the rehydration this
        writer joined (it was emptied again; the others are finished all the same)."""
        done = []
        with store_errors(self._store):
            for bucket in self.buckets if buckets is None else buckets:
                epoch = self._epochs.pop(bucket, None)
                keys = [self._layout.marker_key(bucket), self._layout.pending_key(bucket)]
                args = [self._shard.index, epoch or ""]
                done.append(int(self._finish(keys=keys, args=args)) == 1)
        return all(done)


def _script_arguments(
    writes: Sequence[TileWrite], stored: Callable[[str], str]
) -> tuple[list[str], list[bytes | str | int]]:
    by_key: dict[str, list[TileWrite]] = {}
    for write in writes:
        by_key.setdefault(write.key, []).append(write)
    args: list[bytes | str | int] = []
    for group in by_key.values():
        args += [max(w.ttl_ms for w in group), len(group)]
        for write in group:
            args += [write.field, encode_field(write), floor_field(write.field)]
    return [stored(key) for key in by_key], args


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
    """Serving-path reads with read-only commands (the ``reader`` role suffices), by online key
    (the layout's stored key is the reader's business).

    Invariants: one round trip per call (a non-transactional pipeline; on a cluster, one per
    master, in parallel); every requested key is in the result (an empty dict when absent);
    versions are stripped and tombstones never returned.
    """

    def __init__(self, client: Any, store: str) -> None:
        self._client = client
        self._store = store
        self._layout = layout_of(client)

    def get_all(self, keys: Sequence[str], deadline: Deadline | None = None) -> dict[str, Fields]:
        """Every live field of each key (HGETALL)."""
        check_budget(deadline)
        with store_errors(self._store):
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(self._layout.stored_key(key))
            replies = pipe.execute()
        return {key: _live(raw) for key, raw in zip(keys, replies, strict=True)}

    def get_fields(
        self, wanted: Mapping[str, Sequence[str]], deadline: Deadline | None = None
    ) -> dict[str, Fields]:
        """The named fields of each key (HMGET); absent or deleted fields are left out."""
        check_budget(deadline)
        items = [(key, list(fields)) for key, fields in wanted.items() if fields]
        with store_errors(self._store):
            pipe = self._client.pipeline(transaction=False)
            for key, fields in items:
                pipe.hmget(self._layout.stored_key(key), fields)
            replies = pipe.execute()
        out: dict[str, Fields] = {key: {} for key in wanted}
        for (key, fields), raw in zip(items, replies, strict=True):
            out[key] = _picked(fields, raw)
        return out


class AsyncRedisTileReader:
    """The asyncio twin of :class:`RedisTileReader`; a deadline bounds the whole call."""

    def __init__(self, client: Any, store: str, *, marker: str | None = None) -> None:
        self._client = client
        self._store = store
        self._layout = layout_of(client, marker)

    async def get_all_ready(
        self, keys: Sequence[str], deadline: Deadline | None = None
    ) -> dict[str, Fields]:
        """Like :meth:`get_all`, but raises ``StoreNotReady`` unless the marker of every bucket
        the keys live in says it is complete (one server: the store's one marker); the markers
        travel in the same pipelined round trip as the tiles, so a read of entities whose
        masters are all complete is served while another master is being rehydrated."""
        buckets = self._layout.buckets_of(keys)
        pipe = self._client.pipeline(transaction=False)
        for bucket in buckets:
            pipe.get(self._layout.marker_key(bucket))
        for key in keys:
            pipe.hgetall(self._layout.stored_key(key))
        replies = await self._execute(pipe, deadline)
        markers, tiles = replies[: len(buckets)], replies[len(buckets) :]
        incomplete = [m for m in markers if m != STORE_READY]
        if incomplete:
            state = "missing" if incomplete[0] is None else repr(incomplete[0])
            raise StoreNotReady(
                f"{self._store}: store marker {state} ({len(incomplete)} of "
                f"{len(buckets)} bucket(s) read), not complete"
            )
        return {key: _live(raw) for key, raw in zip(keys, tiles, strict=True)}

    async def get_all(
        self, keys: Sequence[str], deadline: Deadline | None = None
    ) -> dict[str, Fields]:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(self._layout.stored_key(key))
        replies = await self._execute(pipe, deadline)
        return {key: _live(raw) for key, raw in zip(keys, replies, strict=True)}

    async def get_fields(
        self, wanted: Mapping[str, Sequence[str]], deadline: Deadline | None = None
    ) -> dict[str, Fields]:
        items = [(key, list(fields)) for key, fields in wanted.items() if fields]
        pipe = self._client.pipeline(transaction=False)
        for key, fields in items:
            pipe.hmget(self._layout.stored_key(key), fields)
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
            raise mapped(self._store, failure) from failure
        except (rex.RedisError, OSError) as exc:
            raise mapped(self._store, exc) from exc


def guarded(call: Callable[[], T], store: str) -> T:
    """Run an arbitrary client call with this module's error mapping (for ad-hoc admin calls)."""
    with store_errors(store):
        return call()
