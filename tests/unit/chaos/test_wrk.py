"""The wrk flood (Debian's wrk and the generated Lua script) against a small local HTTP server:
every answer is counted by status, and a 503 with Retry-After is told from one without."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chaos.load import http_request
from chaos.wrk import WrkFlood
from cluster.isolated import free_ports

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="needs Debian's wrk")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    paths: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        _Handler.paths.append(self.path)
        shed = self.path.endswith("shed")
        self.send_response(503 if shed else 200)
        if self.path.endswith("/shed"):
            self.send_header("retry-after", "1")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def port() -> Iterator[int]:
    (number,) = free_ports(1)
    server = ThreadingHTTPServer(("127.0.0.1", number), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield number
    server.shutdown()


def test_counts_answers_by_status_and_retry_after(port: int) -> None:
    paths = ["/ok", "/shed", "/bare-shed"]
    requests = [http_request("127.0.0.1", port, p, b'{"a": "\\"q\\""}', {}) for p in paths]
    with WrkFlood(f"http://127.0.0.1:{port}", requests, connections=2, max_s=30) as flood:
        while len(_Handler.paths) < 30:
            time.sleep(0.01)
    summary = flood.summary
    assert summary.requests >= 30
    assert set(summary.statuses) == {200, 503}
    assert sum(summary.statuses.values()) == summary.requests - summary.socket_errors
    assert 0 < summary.retry_after < summary.statuses[503]
    assert set(_Handler.paths) == set(paths)


def test_a_flood_that_honours_retry_after_waits_after_each_refusal(port: int) -> None:
    """Every answer here is a 503 asking for 1 s: in 3 s two clients that honour it send at most
    4 requests each (a slower machine sends fewer, never more); clients that do not honour it
    send hundreds."""
    request = http_request("127.0.0.1", port, "/shed", b"{}", {})
    _Handler.paths.clear()
    with WrkFlood(
        f"http://127.0.0.1:{port}", [request], connections=2, max_s=30, honor_retry_after=True
    ) as flood:
        time.sleep(3)
    assert 1 <= len(_Handler.paths) <= 8
    assert flood.summary.retry_after == flood.summary.statuses[503]
