"""The TCP fault proxy against a real echo server on a free local port (no mocks).

Timing is only ever asserted as a lower bound (a delay adds at least its delay); the machine is
shared, so nothing here asserts how fast anything is.
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from chaos.proxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # the reset test resets the proxy's upstream side too


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo) as p:
        yield p


def _connect(proxy: FaultProxy, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout_s)


def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = sock.recv(min(65536, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _echo_roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()  # send and receive at once: the echo would block on a full socket otherwise
    received = _recv_exactly(sock, len(payload))
    sender.join()
    return received


def _nothing_arrives(sock: socket.socket, window_s: float) -> bool:
    """True when neither a byte nor an EOF comes within the window."""
    sock.settimeout(window_s)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    return False


def test_pass_forwards_every_byte_exactly(proxy: FaultProxy) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    with _connect(proxy) as sock:
        assert _echo_roundtrip(sock, payload) == payload
    stats = proxy.stats()
    assert (stats.accepted, stats.bytes_up, stats.bytes_down) == (1, len(payload), len(payload))


def test_delay_adds_at_least_the_delay_each_way_and_keeps_order(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        assert _echo_roundtrip(sock, b"warm") == b"warm"  # the upstream connection exists
        proxy.delay(100)
        began = time.monotonic()
        messages = [f"m{i:03d};".encode() for i in range(50)]
        for message in messages:
            sock.sendall(message)
        received = _recv_exactly(sock, sum(map(len, messages)))
        elapsed = time.monotonic() - began
    assert received == b"".join(messages)
    assert elapsed >= 0.2  # 100 ms towards the echo and 100 ms back
    assert proxy.stats().mode == "delay"


def test_blackhole_forwards_nothing_and_heal_resumes(proxy: FaultProxy) -> None:
    held = _connect(proxy)
    assert _echo_roundtrip(held, b"before") == b"before"
    forwarded = proxy.stats().bytes_up
    proxy.blackhole()
    held.sendall(b"held")
    assert _nothing_arrives(held, 0.5)
    with _connect(proxy) as fresh:  # a partition still accepts: connects succeed, then hang
        fresh.sendall(b"lost?")
        assert _nothing_arrives(fresh, 0.5)
    assert proxy.stats().bytes_up == forwarded
    proxy.heal()
    held.settimeout(5.0)
    assert _recv_exactly(held, 4) == b"held"  # held bytes flow in order once it heals
    held.close()
    with _connect(proxy) as after:
        assert _echo_roundtrip(after, b"after") == b"after"


def test_blackhole_buffers_are_bounded(echo: int) -> None:
    with FaultProxy("127.0.0.1", echo, chunk_bytes=1024, max_chunks=4) as proxy:
        proxy.blackhole()
        with _connect(proxy) as sock:
            sock.setblocking(False)
            sent = 0
            with pytest.raises(BlockingIOError):
                while sent < 256 * 1024 * 1024:  # far beyond any socket buffer
                    sent += sock.send(b"x" * 65536)
        assert proxy.stats().bytes_up == 0


def test_reset_closes_open_connections_and_new_ones(proxy: FaultProxy) -> None:
    sock = _connect(proxy)
    assert _echo_roundtrip(sock, b"ping") == b"ping"
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        sock.recv(1)
    sock.close()
    with pytest.raises(ConnectionResetError), _connect(proxy) as late:
        late.recv(1)  # on loopback the RST can even beat connect() back: both are a reset
    # The RST reaches the client before the proxy's task has finished its bookkeeping.
    assert _eventually(lambda: proxy.stats().open == 0), proxy.stats()
    assert proxy.stats().reset >= 2


def test_close_ends_every_connection_and_the_thread(echo: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo).start()
    socks = [_connect(proxy) for _ in range(3)]
    for sock in socks:
        assert _echo_roundtrip(sock, b"x") == b"x"
    proxy.blackhole()  # tasks parked in every state: held writers, blocked readers
    socks[0].sendall(b"held")
    proxy.close()
    assert not proxy.running  # its own thread: another test's proxy is not this one's business
    assert proxy.stats().open == 0
    for sock in socks:
        sock.settimeout(5.0)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
        sock.close()
    proxy.close()  # idempotent
