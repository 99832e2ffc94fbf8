"""A TCP fault proxy: a network fault between a client and one upstream, switchable at run time.

It stands in for ``tc netem`` where the kernel has no netem qdisc. It
listens on ``127.0.0.1:<free port>`` and forwards every connection to ``upstream``; the fault
applies to all connections, existing and new, from the moment the switch returns:

- ``heal()`` (pass): bytes are forwarded as they arrive;
- ``delay(ms)``: each chunk is written ``ms`` after it was read, in each direction, in order;
- ``blackhole()``: a partition. Connections are accepted and kept, nothing is forwarded either
  way; what was sent waits in the proxy (bounded) and flows in order after ``heal()``, as TCP's
  retransmissions would deliver it once a partition heals;
- ``reset()``: every connection is closed at once with a TCP RST, and new ones are reset as
  soon as they are accepted.

Invariants: the proxy runs on its own event loop in its own thread, so sync code can use it as a
context manager; every switch is thread-safe and has taken effect when it returns; a direction
holds at most ``max_chunks`` chunks of ``chunk_bytes`` (then it stops reading and TCP pushes back
on the sender); ``close()`` cancels and awaits every task it started before the thread ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar, cast

T = TypeVar("T")
_EOF = b""


class Mode(StrEnum):
    FORWARD = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"


@dataclass(frozen=True)
class ProxyStats:
    """Counts since the proxy started; ``bytes_*`` count what was forwarded, not what was held."""

    mode: str = Mode.FORWARD.value
    delay_ms: float = 0.0
    accepted: int = 0  # connections accepted from clients
    open: int = 0  # connections open right now
    reset: int = 0  # connections closed by the proxy with an RST (reset mode or no upstream)
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client


class FaultProxy:
    """``with FaultProxy("127.0.0.1", 6379) as proxy: ... proxy.port ... proxy.delay(150)``."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        chunk_bytes: int = 64 * 1024,
        max_chunks: int = 64,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._chunk_bytes = chunk_bytes
        self._max_chunks = max_chunks
        self._connect_timeout_s = connect_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy")
        self._thread.daemon = True
        self._server: asyncio.Server | None = None
        self._closing = False  # set by close(): a connection accepted from now on is dropped
        # Loop-thread state: read and written only by coroutines running on self._loop.
        self._mode = Mode.FORWARD
        self._delay_s = 0.0
        self._stats = ProxyStats()
        self._conns: dict[asyncio.Task[None], tuple[asyncio.StreamWriter, ...]] = {}
        self._changed = asyncio.Event()  # replaced at every switch; set wakes held writers
        self._final = ProxyStats()

    # -- life cycle (any thread) --------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> FaultProxy:
        self._thread.start()
        self.port = self._call(self._listen())
        return self

    def close(self) -> None:
        """Stop listening, cancel every connection and end the thread. Idempotent."""
        if not self._thread.is_alive():
            return
        self._final = self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    @property
    def running(self) -> bool:
        """Whether the proxy's thread (and so its event loop) is still alive."""
        return self._thread.is_alive()

    # -- faults (any thread) ------------------------------------------------------------------

    def heal(self) -> None:
        self._call(self._switch(Mode.FORWARD, 0.0))

    def delay(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("a delay cannot be negative")
        self._call(self._switch(Mode.DELAY, ms))

    def blackhole(self) -> None:
        self._call(self._switch(Mode.BLACKHOLE, 0.0))

    def reset(self) -> None:
        self._call(self._switch(Mode.RESET, 0.0))

    def stats(self) -> ProxyStats:
        if not self._thread.is_alive():
            return self._final
        return self._call(self._snapshot())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        # Generous: on a loaded two-core box the loop thread can wait seconds for the GIL.
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    # -- on the loop --------------------------------------------------------------------------

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _snapshot(self) -> ProxyStats:
        return replace(self._stats, mode=self._mode.value, delay_ms=self._delay_s * 1000)

    async def _switch(self, mode: Mode, delay_ms: float) -> None:
        self._mode, self._delay_s = mode, delay_ms / 1000
        woken, self._changed = self._changed, asyncio.Event()
        woken.set()  # held writers re-evaluate under the new mode
        if mode is Mode.RESET:
            for task, writers in list(self._conns.items()):
                self._count(reset=1)
                self._abort(*writers)
                task.cancel()

    async def _shutdown(self) -> ProxyStats:
        self._closing = True
        if self._server is not None:
            self._server.close()
        # Until none is left: a connection accepted just before the close starts its task only
        # now, and Server.wait_closed() waits for every connection, so one left open hangs it.
        # Bounded: a close must never hang a drill.
        for _ in range(3):
            tasks = list(self._conns)
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        return await self._snapshot()

    def _count(self, **delta: int) -> None:
        s = self._stats
        self._stats = replace(s, **{k: getattr(s, k) + v for k, v in delta.items()})

    def _abort(self, *writers: asyncio.StreamWriter) -> None:
        """Close with an RST (SO_LINGER 0), not a FIN: the peer sees "connection reset"."""
        for writer in writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = cast(asyncio.Task[None], asyncio.current_task())  # stream callbacks run in tasks
        if self._closing:
            self._abort(client_w)
            return
        self._conns[task] = (client_w,)  # tracked from the start: close() cancels a connect too
        self._count(accepted=1)
        try:
            await self._forward(client_r, client_w, task)
        finally:
            self._conns.pop(task, None)

    async def _forward(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        task: asyncio.Task[None],
    ) -> None:
        if self._mode is Mode.RESET:
            self._count(reset=1)
            self._abort(client_w)
            return
        try:
            up_r, up_w = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), self._connect_timeout_s
            )
        except (OSError, TimeoutError):
            self._count(reset=1)  # no upstream: the client sees what a refused connect looks like
            self._abort(client_w)
            return
        self._conns[task] = (client_w, up_w)
        self._count(open=1)
        clean = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._direction(client_r, up_w, "bytes_up"))
                group.create_task(self._direction(up_r, client_w, "bytes_down"))
            clean = True
        except* OSError:
            pass  # a peer went away: the connection ends, the proxy carries on
        finally:
            self._count(open=-1)
            if clean:  # both sides sent FIN and got every byte: close politely
                client_w.close()
                up_w.close()
            else:
                self._abort(client_w, up_w)

    async def _direction(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str
    ) -> None:
        """Read into a bounded queue and write from it, so a delay does not limit throughput."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self._max_chunks)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._read(reader, queue))
            group.create_task(self._write(queue, writer, counter))

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await reader.read(self._chunk_bytes)
            await queue.put((loop.time(), chunk))  # blocks when full: TCP pushes back
            if chunk == _EOF:
                return

    async def _write(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, counter: str
    ) -> None:
        while True:
            read_at, chunk = await queue.get()
            await self._release(read_at)
            if chunk == _EOF:
                if writer.can_write_eof():
                    writer.write_eof()  # half-close: the other direction may still flow
                return
            writer.write(chunk)
            await writer.drain()
            self._count(**{counter: len(chunk)})

    async def _release(self, read_at: float) -> None:
        """Wait until a chunk read at ``read_at`` may be written under the current fault; a
        switch wakes the wait, so healing releases held chunks at once."""
        loop = asyncio.get_running_loop()
        while True:
            if self._mode is Mode.RESET:
                raise ConnectionResetError("reset by the fault proxy")
            if self._mode is Mode.FORWARD:
                return
            wait = None  # a blackhole holds until the next switch
            if self._mode is Mode.DELAY:
                wait = read_at + self._delay_s - loop.time()
                if wait <= 0:
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
