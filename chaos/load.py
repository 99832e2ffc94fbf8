"""HTTP load for drills: open loop (a fixed rate, whatever the answers do) or closed loop (a fixed
number of requests outstanding), in a background thread, recording every request.

Latency is measured from each request's *scheduled* send time in open loop, so a stalled server
shows in the tail instead of silently slowing the generator (no coordinated omission). Requests
go over a fixed pool of keep-alive HTTP/1.1 connections on raw asyncio streams: the generator
shares two cores with what it measures, so it must cost little per request.

Each :class:`Sample` keeps the status, whether a 503 carried ``Retry-After``, and the top-level
``store`` of a native ``/v1/features`` answer (which path of the fallback chain served it).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

TRANSPORT_ERROR = 0  # the status recorded when no HTTP answer came (refused, reset, timed out)
_STORE_MARK = b'"store":"'
# The answer's store when none answered (serve_apps.fallback.DEFAULTS; not imported: a load
# process should not load the serving stack).
DEFAULTS = "defaults"
_OUTCOME_MARK = b'"outcome":"'
_ERROR_MARK = b'"error":"'


@dataclass(frozen=True, slots=True)
class Sample:
    sent_s: float  # scheduled send time, seconds on the load's monotonic clock
    latency_s: float
    status: int
    store: str = ""
    retry_after: float = 0.0  # seconds a 503's Retry-After asked for; 0.0 when it had none
    # For an answer not served by the first store: why each one was passed over,
    # "store=outcome,..." (empty when the first store answered).
    fallback: str = ""
    # A refusal's JSON error code ("overloaded" from our handler); "" for a body without one,
    # e.g. Serve's own backpressure answer.
    error: str = ""
    # Which of our gates shed a 503 (its x-freshline-shed header: loop-lag, in-flight,
    # late-read); "" when none did, e.g. Serve's own backpressure answer.
    shed_by: str = ""
    # The region whose Serve answered, as a front door says (x-freshline-served-by: a region,
    # or "front-door" for its own refusal); "" when the request did not pass a front door.
    served_by: str = ""


@dataclass(frozen=True)
class Answer:
    """What one round trip brought back (see :class:`Sample` for the fields)."""

    status: int
    store: str = ""
    retry_after: float = 0.0
    fallback: str = ""
    error: str = ""
    shed_by: str = ""
    served_by: str = ""


@dataclass(frozen=True)
class LoadSpec:
    """``rate`` requests/s (open loop) or ``concurrency`` outstanding requests (closed loop)."""

    host: str
    port: int
    requests: Sequence[bytes]  # raw HTTP/1.1 requests, sent round-robin
    rate: float | None = None
    concurrency: int | None = None
    connections: int = 16
    timeout_s: float = 5.0
    # Closed loop only: a client that got 503 + Retry-After waits that long before its next
    # request, as a well-behaved client does; False is a client that ignores it.
    honor_retry_after: bool = False

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give exactly one of rate (open loop) or concurrency (closed loop)")
        if not self.requests:
            raise ValueError("at least one request is needed")


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A raw keep-alive POST (GET when ``body`` is empty)."""
    head = [f"{'POST' if body else 'GET'} {path} HTTP/1.1", f"host: {host}:{port}"]
    if body:
        head.append(f"content-length: {len(body)}")
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection; ``roundtrip`` sends a raw request and reads the whole
    answer (content-length or chunked) into an :class:`Answer` (Retry-After in seconds, 0.0
    when absent; a date form, which we never send, counts as one second)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.answered = 0  # round trips completed on this connection
        # The last answer said ``connection: close`` (a front door's own refusal does): the
        # server closes it, so the next request needs a new connection.
        self.closing = False

    async def roundtrip(self, raw: bytes) -> Answer:
        """Raises :class:`StaleConnection` when a connection that answered before is closed
        without a byte of this answer (an idle keep-alive connection its server or proxy let go,
        e.g. HAProxy's reload for a new Serve replica): the request was never read."""
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            if self.answered and not getattr(exc, "partial", b""):
                raise StaleConnection from exc
            raise
        answer = await self._answer(head)
        self.answered += 1
        return answer

    async def _answer(self, head: bytes) -> Answer:
        status = int(head[9:12])
        length, chunked, retry_after, shed_by, served_by = 0, False, 0.0, "", ""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif lname == b"retry-after":
                retry_after = _seconds(value)
            elif lname == b"x-freshline-shed":
                shed_by = value.strip().decode(errors="replace")
            elif lname == b"x-freshline-served-by":
                served_by = value.strip().decode(errors="replace")
            elif lname == b"connection" and b"close" in value.lower():
                self.closing = True
        body = await self._body(length, chunked)
        if status != 200:
            error = _error_of(body)
            return Answer(status, "", retry_after, "", error, shed_by, served_by)
        store = _store_of(body)
        passed_over = store == DEFAULTS or body.count(_OUTCOME_MARK, 0, 1_000) > 1
        fallback = _fallback_of(body) if passed_over else ""
        return Answer(status, store, retry_after, fallback, served_by=served_by)

    async def _body(self, length: int, chunked: bool) -> bytes:
        if not chunked:
            return await self.reader.readexactly(length) if length else b""
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            parts.append((await self.reader.readexactly(size + 2))[:-2])
            if size == 0:
                return b"".join(parts)

    def close(self) -> None:
        self.writer.close()


class StaleConnection(ConnectionError):
    """A reused keep-alive connection closed before any of the answer arrived."""


async def connect(host: str, port: int) -> Connection:
    reader, writer = await asyncio.open_connection(host, port)
    return Connection(reader, writer)


def _seconds(value: bytes) -> float:
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return 1.0


def _store_of(body: bytes) -> str:
    # The native response's first "store" key is the top-level one (see serve_apps.responses).
    at = body.find(_STORE_MARK, 0, 400)
    if at < 0:
        return ""
    start = at + len(_STORE_MARK)
    return body[start : body.find(b'"', start)].decode()


def _error_of(body: bytes) -> str:
    at = body.find(_ERROR_MARK, 0, 200)
    if at < 0:
        return ""
    start = at + len(_ERROR_MARK)
    return body[start : body.find(b'"', start)].decode(errors="replace")


def _fallback_of(body: bytes) -> str:
    try:
        steps = orjson.loads(body).get("fallback", [])
        return ",".join(f"{step['store']}={step['outcome']}" for step in steps)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        return "unreadable"


@dataclass
class HttpLoad:
    """``with HttpLoad(spec) as load: ...``; ``load.samples`` holds what was recorded so far."""

    spec: LoadSpec
    samples: list[Sample] = field(default_factory=list)
    started_at: float = 0.0  # time.monotonic() when the first request was scheduled
    # How late this generator's own loop woke for a 20 ms tick, ms: a generator short of CPU
    # adds its own delay to every latency it records, so the drills report it beside them.
    own_lag_ms: list[float] = field(default_factory=list)
    # Requests sent again because their reused connection had been closed while idle.
    stale_retries: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-http-load", daemon=True)
        self._next = 0

    def __enter__(self) -> HttpLoad:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(timeout=self.spec.timeout_s + 10)
        return self.samples

    def _run(self) -> None:
        asyncio.run(self._main())

    def _request(self) -> bytes:
        raw = self.spec.requests[self._next % len(self.spec.requests)]
        self._next += 1
        return raw

    async def _main(self) -> None:
        ticker = asyncio.create_task(self._tick())
        try:
            if self.spec.rate is not None:
                await self._open_loop(self.spec.rate)
            else:
                await asyncio.gather(*(self._worker() for _ in range(self.spec.concurrency or 1)))
        finally:
            ticker.cancel()

    async def _tick(self, interval_s: float = 0.02) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(interval_s)
            self.own_lag_ms.append(max(0.0, (time.monotonic() - asked - interval_s) * 1e3))

    async def _connect(self) -> Connection | None:
        try:
            return await asyncio.wait_for(
                connect(self.spec.host, self.spec.port), self.spec.timeout_s
            )
        except (OSError, TimeoutError):
            return None

    async def _send(
        self, conn: Connection | None, scheduled: float, raw: bytes | None = None
    ) -> tuple[Connection | None, Sample]:
        """One request (``raw``, else the next one) on ``conn`` or a new connection; returns the
        connection to reuse and what was recorded. A fresh connection is never retried."""
        conn = conn or await self._connect()
        if conn is None:
            sample = self._record(scheduled, Answer(TRANSPORT_ERROR))
            await asyncio.sleep(0.05)  # refused: do not spin while the server is down
            return None, sample
        raw = raw or self._request()
        try:
            answer = await asyncio.wait_for(conn.roundtrip(raw), self.spec.timeout_s)
        except StaleConnection:
            # RFC 9112 9.3.1: a request that was never answered on a connection the server
            # closed while idle is sent again on a new one, as any HTTP client's pool does
            # (counted, so a drill can show it); the latency keeps counting from `scheduled`.
            conn.close()
            self.stale_retries += 1
            return await self._send(None, scheduled, raw)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            conn.close()
            return None, self._record(scheduled, Answer(TRANSPORT_ERROR))
        if conn.closing:
            conn.close()
            return None, self._record(scheduled, answer)
        return conn, self._record(scheduled, answer)

    def _record(self, scheduled: float, a: Answer) -> Sample:
        now = time.monotonic()
        sample = Sample(
            scheduled - self.started_at,
            now - scheduled,
            a.status,
            a.store,
            a.retry_after,
            a.fallback,
            a.error,
            a.shed_by,
            a.served_by,
        )
        self.samples.append(sample)
        return sample

    async def _open_loop(self, rate: float) -> None:
        idle: asyncio.Queue[Connection | None] = asyncio.Queue()
        for _ in range(self.spec.connections):
            idle.put_nowait(await self._connect())
        pending: set[asyncio.Task[None]] = set()

        async def one(scheduled: float) -> None:
            conn = await idle.get()
            idle.put_nowait((await self._send(conn, scheduled))[0])

        i = 0
        while not self._stop.is_set():
            scheduled = self.started_at + i / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if pending:
            await asyncio.wait(pending, timeout=self.spec.timeout_s + 1)
        while not idle.empty():
            conn = idle.get_nowait()
            if conn is not None:
                conn.close()

    async def _worker(self) -> None:
        conn: Connection | None = None
        while not self._stop.is_set():
            conn, sample = await self._send(conn, time.monotonic())
            if self.spec.honor_retry_after and sample.status == 503 and sample.retry_after:
                await self._pause(sample.retry_after)
        if conn is not None:
            conn.close()

    async def _pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < until:  # stop within 0.1 s
            await asyncio.sleep(min(0.1, until - time.monotonic()))
