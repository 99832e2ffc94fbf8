"""The fallback chain of one region: local Redis, local DynamoDB replica, then the other regions
nearest first (their Redis, then their DynamoDB), then defaults.

Invariants:
- one call to :meth:`FallbackChain.read` makes at most one request per store (one pipelined
  HGETALL round trip for Redis, whatever the number of keys);
- a store whose circuit breaker refuses is skipped without being touched; every allowed call
  records exactly one outcome on that breaker (a transport error is a failure); a call abandoned
  at its timeout (``AbandonedCall``) is recorded when its fate is known, at the latest
  ``verdict_after_s`` later: a failure if it failed or is still silent, a slow call if the store
  answered (slow is not dead; the request itself has moved on down the chain), and only a window
  of nothing but slow calls opens the breaker (a store always slower than its timeout costs every
  read that timeout for nothing);
- a step's timeout is ``min(step cap, share * remaining budget)``, the last step getting the whole
  remainder, so the chain never outlives the request's deadline by more than scheduling noise; the
  cap grows with the number of keys (a healthy Redis answering many entities' tiles under load
  is slow, not dead: a fixed cap would open its breaker and serve defaults);
- a store that answers but is incomplete (``StoreNotReady``: a Redis or a DynamoDB table being
  rehydrated) is skipped like a failed one but is not a breaker failure;
- when every step is skipped or fails, the result is ``None`` and the caller serves defaults:
  store failures never become client errors;
- a timeout that fired more than ``late_tolerance_s`` after it was due says the replica's own
  event loop is overloaded, not that the store is slow: the breaker records nothing. Otherwise an
  overloaded replica would open every breaker and answer with defaults;
- so is a timeout while ``busy()`` says the loop is lagging: a call takes several turns of the
  loop (send, read, parse), so a loop a little late on each turn times out a healthy Redis's
  reply although no single timer fires very late;
- such a timeout of the first store tried stops the chain and sheds the request (``Overloaded``,
  a 503 with Retry-After): an overloaded replica adds no fallback reads. After an earlier store
  was passed over for its own reasons (failed, open, not ready), the request is an outage's and
  goes on down the chain: the outage's fallback reads are what lags the loop (DynamoDB's boto3
  threads share the GIL with it), and shedding there turned a dead Redis into client errors,
  which the chain exists to prevent. If no store answers such a request, it is shed, never
  answered with defaults.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from features.errors import StoreTimeout, TransportError
from regions.dynamodb_reader import DynamoTileReader
from regions.dynamodb_store import require_ready
from regions.exceptions import AbandonedCall, StoreNotReady
from regions.redis_store import AsyncRedisTileReader
from regions.resilience import CircuitBreaker, Deadline
from serve_apps.config import StoreTimeouts
from serve_apps.exceptions import Overloaded

log = logging.getLogger(__name__)

Fields = dict[str, bytes]
Clock = Callable[[], float]
DEFAULTS = "defaults"
# The outcome of a step whose timeout was this replica's lag, not the store's (nothing recorded).
LOOP_LAGGED = "loop_lagged"


class TileStore(Protocol):
    """A store the chain can read: every requested key in the result (empty dict when absent)."""

    name: str

    async def get_all(self, keys: Sequence[str], timeout_s: float) -> dict[str, Fields]: ...


class RedisStore:
    """A region's Redis through the read-only user; one pipelined round trip per call, which also
    reads the store's completeness marker: a Redis that came back empty or is being rehydrated
    raises ``StoreNotReady`` instead of serving its partial contents."""

    def __init__(self, reader: AsyncRedisTileReader, name: str, clock: Clock) -> None:
        self.name = name
        self._reader = reader
        self._clock = clock

    async def get_all(self, keys: Sequence[str], timeout_s: float) -> dict[str, Fields]:
        return await self._reader.get_all_ready(keys, Deadline(timeout_s, self._clock))


class DynamoStore:
    """A region's DynamoDB replica. boto3 blocks, so calls run on a small private thread pool;
    a call that outlives its timeout is abandoned (its thread finishes in the background, bounded
    by the client's own read timeout) and counted as a timeout.

    The table's completeness marker is read beside the tiles: a table that came back empty or is
    being rehydrated raises ``StoreNotReady`` instead of serving its partial contents. A Query
    reads one partition key, so the marker cannot ride in the tiles' requests as it does in
    Redis's pipeline; on a second pool thread, in parallel, it adds no round trip to the latency.
    """

    def __init__(
        self, reader: DynamoTileReader, name: str, clock: Clock, pool: ThreadPoolExecutor
    ) -> None:
        self.name = name
        self._reader = reader
        self._clock = clock
        self._pool = pool

    async def get_all(self, keys: Sequence[str], timeout_s: float) -> dict[str, Fields]:
        loop = asyncio.get_running_loop()
        deadline = Deadline(timeout_s, self._clock)
        marker = loop.run_in_executor(self._pool, self._reader.store_state, deadline)
        tiles = loop.run_in_executor(self._pool, self._reader.get_all, list(keys), deadline)
        both = asyncio.gather(marker, tiles)
        try:
            state, fields = await asyncio.wait_for(asyncio.shield(both), timeout_s)
        except TimeoutError:
            if not both.done():
                raise AbandonedCall(f"{self.name}: no answer in {timeout_s:.3f}s", both) from None
            state, fields = both.result()  # answered in the timer's turn of the loop, or raises
        require_ready(self.name, state)
        return fields


@dataclass(frozen=True)
class Step:
    """One link of the chain: a store, its breaker, its timeout cap (``cap_s`` plus ``per_key_s``
    for every key read) and its budget share."""

    store: TileStore
    breaker: CircuitBreaker
    cap_s: float
    share: float
    per_key_s: float = 0.0


@dataclass
class ChainResult:
    """What answered: ``fields`` per key from ``store``, or ``None`` when nothing did; ``tried``
    lists ``(store, outcome)`` for every step considered, in order (for logs and the response)."""

    fields: Mapping[str, Fields] | None
    store: str
    tried: list[tuple[str, str]] = field(default_factory=list)


class FailureLog:
    """At most one warning per store every ``interval_s``; the next one counts those it skipped.

    A store that times out fails every request until its breaker opens: one line per request
    would be a log storm on the request path exactly when the replica has no time to spare."""

    def __init__(self, clock: Clock, interval_s: float = 5.0) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}
        self._latest: dict[str, tuple[str, float]] = {}  # store -> (error class, when)

    def failed(self, store: str, exc: BaseException) -> None:
        """Record one failure; log it unless one was logged within ``interval_s``."""
        now = self._clock()
        self._latest[store] = (type(exc).__name__, now)
        last = self._last.get(store)
        if last is not None and now - last < self._interval_s:
            self._skipped[store] = self._skipped.get(store, 0) + 1
            return
        skipped = self._skipped.pop(store, 0)
        self._last[store] = now
        log.warning("store %s failed: %s (%d more failures not logged)", store, exc, skipped)

    def latest(self) -> dict[str, dict[str, str | float]]:
        """The last failure of each store that failed: its error class and age (no message)."""
        now = self._clock()
        return {s: {"error": e, "age_s": round(now - t, 3)} for s, (e, t) in self._latest.items()}


_VERDICT_AFTER_S = StoreTimeouts().abandoned_verdict_s


class FallbackChain:
    """Reads keys from the first step that answers in time. Not thread-safe: one event loop."""

    def __init__(
        self,
        steps: Sequence[Step],
        clock: Clock,
        late_tolerance_s: float = 0.05,
        busy: Callable[[], bool] = lambda: False,
        verdict_after_s: float = _VERDICT_AFTER_S,
    ) -> None:
        self.steps = tuple(steps)
        self._clock = clock
        self._failures = FailureLog(clock)
        self._late_tolerance_s = late_tolerance_s
        self._busy = busy
        self._verdict_after_s = verdict_after_s
        self.timeouts = 0  # store timeouts so far, whoever was blamed (GET /v1/stores shows it)

    def breakers(self) -> dict[str, str]:
        return {s.store.name: s.breaker.state.value for s in self.steps}

    async def warm(self, keys: Sequence[str], connections: int, budget_s: float) -> int:
        """Open the first store's connections before traffic arrives: ``connections`` concurrent
        reads of ``keys``, all given up after ``budget_s``. Returns how many answered (an
        incomplete store answers too: its connection is open).

        Never raises and records nothing on any breaker: a store that is down when the replica
        starts is the first requests' to judge, and the replica must start regardless. Cold, a
        new replica's first burst of requests would open its pool connection by connection
        (connect and AUTH each) while the herd waits."""
        store = self.steps[0].store

        async def one() -> bool:
            try:
                await store.get_all(keys, budget_s)
            except StoreNotReady:
                return True
            except TransportError:
                return False
            return True

        tasks = [asyncio.ensure_future(one()) for _ in range(max(1, connections))]
        done, pending = await asyncio.wait(tasks, timeout=budget_s)
        for task in pending:
            task.cancel()
        return sum(1 for task in done if task.result())

    def last_failures(self) -> dict[str, dict[str, str | float]]:
        return self._failures.latest()

    async def read(self, keys: Sequence[str], deadline: Deadline) -> ChainResult:
        tried: list[tuple[str, str]] = []
        own_lag: Overloaded | None = None  # a later step timed out because our loop lagged
        last = len(self.steps) - 1
        for n, step in enumerate(self.steps):
            name = step.store.name
            if deadline.expired():
                tried.append((name, "budget_spent"))
                break
            if not step.breaker.allow():
                tried.append((name, "circuit_open"))
                continue
            share = 1.0 if n == last else step.share
            timeout = deadline.step_timeout(step.cap_s, step.per_key_s, len(keys), share)
            started = self._clock()
            try:
                fields = await step.store.get_all(keys, timeout)
            except StoreNotReady:
                # It answered: healthy, only incomplete. Not a breaker failure, so the first
                # request after the sink marks it ready reads it again.
                step.breaker.record_success()
                tried.append((name, "StoreNotReady"))
                continue
            except TransportError as exc:
                if isinstance(exc, StoreTimeout):
                    self.timeouts += 1
                    lagged = self._own_loop_to_blame(name, self._clock() - started - timeout)
                    if lagged is not None:
                        if not tried:  # the first store: this replica's overload, not an outage
                            raise lagged from exc
                        own_lag = lagged
                        tried.append((name, LOOP_LAGGED))
                        continue
                tried.append((name, type(exc).__name__))
                if isinstance(exc, AbandonedCall):
                    self._judge_when_answered(step.breaker, name, exc)
                    continue
                step.breaker.record_failure()
                self._failures.failed(name, exc)
                continue
            except asyncio.CancelledError:
                # The request was cancelled (its client, a health check, went away) while the
                # store had not answered: counted as a success, a hung store's breaker would
                # never open while clients time out on it.
                step.breaker.record_cancelled()
                raise
            except BaseException:
                step.breaker.record_success()  # a bug of ours, not the store's fault
                raise
            step.breaker.record_success()
            tried.append((name, "ok"))
            return ChainResult(fields, name, tried)
        if own_lag is not None:
            raise own_lag  # defaults would be a wrong answer for our own slowness
        return ChainResult(None, DEFAULTS, tried)

    def _judge_when_answered(self, breaker: CircuitBreaker, store: str, exc: AbandonedCall) -> None:
        """Record the abandoned call on ``breaker`` once its fate is known: a slow call when the
        store answers within ``verdict_after_s`` of the timeout (alive: the request already went
        on down the chain; only a window of nothing but slow calls opens the breaker), a failure
        when it fails or is still silent by then (dead or hung). Judged at the timeout instead, a
        box short of CPU for a moment would open every breaker and the replica would answer
        defaults."""
        loop = asyncio.get_running_loop()
        judged = False
        give_up_at = self._clock() + 5 * self._verdict_after_s
        timer: list[asyncio.TimerHandle] = []  # the one pending timer

        def verdict(_: object = None) -> None:
            nonlocal judged
            if judged:
                return
            judged = True
            timer[0].cancel()
            call = exc.pending
            if call.done() and not call.cancelled() and call.exception() is None:
                breaker.record_slow()
            else:
                breaker.record_failure()
                self._failures.failed(store, exc)

        def silent_until_now() -> None:
            # A lagging loop runs this timer before the reply that already arrived is parsed:
            # wait for the loop rather than blame the store (bounded: a hung store is judged).
            if self._busy() and self._clock() < give_up_at:
                timer[0] = loop.call_later(0.05, silent_until_now)
            else:
                verdict()

        timer.append(loop.call_later(self._verdict_after_s, silent_until_now))
        exc.pending.add_done_callback(verdict)

    def _own_loop_to_blame(self, store: str, late_s: float) -> Overloaded | None:
        """``Overloaded`` when the timeout says more about this replica than the store."""
        if late_s > self._late_tolerance_s:
            why = f"{store}: timeout fired {late_s * 1e3:.0f} ms late: loop overloaded"
            return Overloaded(1.0, why)
        if self._busy():
            return Overloaded(1.0, f"{store}: timed out while the event loop lags")
        return None
