"""A small HTTP/1.1 load generator: keep-alive connections over raw asyncio streams.

Cheap on purpose (no HTTP library on the request path): the generator shares two cores with the
server, so every microsecond it spends is taken from the thing measured.

- :func:`open_loop` sends at a fixed rate whatever the answers do; latency is measured from each
  request's *scheduled* send time, so a stalled server shows up in the tail (no coordinated
  omission). A fixed pool of connections is opened first (a connection storm would measure the
  proxy's accept path, not serving).
- :func:`closed_loop` keeps ``concurrency`` requests outstanding for ``duration_s``: capacity.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos.load import Answer, Connection, connect, http_request


@dataclass
class Result:
    latencies_s: list[float] = field(default_factory=list)
    # Open loop only: each answered request's scheduled send time (seconds from the run's start),
    # parallel to ``latencies_s``, so a tail can be told apart: a few stalls or slow throughout.
    offsets_s: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    # Which store answered each 200 (the response's top-level "store"): a latency measured on
    # answers that fell back to defaults would flatter a server that is failing.
    stores: dict[str, int] = field(default_factory=dict)
    # Every answer but a 200, by "status error-code" (e.g. "503 overloaded"): which gate refused.
    refusals: dict[str, int] = field(default_factory=dict)
    # Each answered request's wall-clock send time and its index in the request list, so that a
    # benchmark can tell which entities each answer read, and when.
    sends: list[tuple[float, int]] = field(default_factory=list)
    elapsed_s: float = 0.0

    def count(self, answer: Answer) -> None:
        status = answer.status
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.stores[answer.store] = self.stores.get(answer.store, 0) + 1
        else:
            why = f"{status} {answer.error}".strip()
            self.refusals[why] = self.refusals.get(why, 0) + 1

    def pct(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s else 0.0

    def slow_seconds(self, over_ms: float = 20.0) -> int:
        """How many whole seconds of the run held a request slower than ``over_ms``."""
        return len(
            {
                int(o)
                for o, lat in zip(self.offsets_s, self.latencies_s, strict=True)
                if lat * 1e3 > over_ms
            }
        )

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": len(self.latencies_s),
            "errors": self.errors,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.pct(0.50), 3),
            "p99_ms": round(self.pct(0.99), 3),
            "max_ms": round(self.pct(1.0), 3),
        }
        if self.stores:
            out["stores"] = dict(sorted(self.stores.items()))
        if self.refusals:
            out["refusals"] = dict(sorted(self.refusals.items()))
        if self.offsets_s:
            out["seconds"] = len({int(o) for o in self.offsets_s})
            out["seconds_over_20ms"] = self.slow_seconds()
        return out


# The same raw request builder and connection as the chaos drills' load (one implementation).
request_bytes = http_request


def _requests(raw: bytes | Sequence[bytes]) -> Sequence[bytes]:
    return [raw] if isinstance(raw, bytes) else raw


async def open_loop(  # noqa: PLR0917 - mirrors closed_loop's argument order
    host: str,
    port: int,
    raw: bytes | Sequence[bytes],
    rate: float,
    duration_s: float,
    connections: int = 32,
) -> Result:
    """Fixed-rate sends over a fixed pool of keep-alive connections (wrk2-style): a request
    waits for an idle connection when all are busy, and that wait counts in its latency.
    Several requests are sent round-robin."""
    result = Result()
    requests = _requests(raw)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await connect(host, port))
    tasks = []
    start = time.perf_counter() + 0.05
    total = int(rate * duration_s)

    async def one(scheduled: float, index: int) -> None:
        conn = await idle.get()
        sent = time.time()
        try:
            answer = await conn.roundtrip(requests[index])
        except (OSError, asyncio.IncompleteReadError):
            result.errors += 1
            idle.put_nowait(await connect(host, port))
            return
        result.latencies_s.append(time.perf_counter() - scheduled)
        result.offsets_s.append(scheduled - start)
        result.sends.append((sent, index))
        result.count(answer)
        if answer.status != 200:
            result.errors += 1
        idle.put_nowait(conn)

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled, i % len(requests))))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - start
    while not idle.empty():
        idle.get_nowait().writer.close()
    return result


async def closed_loop(
    host: str, port: int, raw: bytes | Sequence[bytes], concurrency: int, duration_s: float
) -> Result:
    """``concurrency`` requests outstanding; several requests are sent round-robin."""
    result = Result()
    requests = _requests(raw)
    stop_at = time.perf_counter() + duration_s
    turn = itertools.count()

    async def worker() -> None:
        conn = await connect(host, port)
        while time.perf_counter() < stop_at:
            index = next(turn) % len(requests)
            sent, sent_wall = time.perf_counter(), time.time()
            try:
                answer = await conn.roundtrip(requests[index])
            except (OSError, asyncio.IncompleteReadError):
                result.errors += 1
                conn = await connect(host, port)
                continue
            result.latencies_s.append(time.perf_counter() - sent)
            result.sends.append((sent_wall, index))
            result.count(answer)
            if answer.status != 200:
                result.errors += 1
        conn.writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result
