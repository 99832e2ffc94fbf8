"""A region's front door (the real Debian HAProxy, configured as the stack configures it) in front
of a small HTTP server standing in for Serve's ingress: it forwards a region's reads, fails them
over to the next region while the region is not ready, says who served, and refuses past its
``maxconn`` with 503 and ``Retry-After`` without forwarding the request."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from cluster.isolated import free_ports
from cluster.services.haproxy import FrontDoorService, front_door_urls
from cluster.services.haproxy_config import SERVED_BY_HEADER
from cluster.settings import FrontDoorSettings, RaySettings, StackSettings
from serve_apps.defaults import READY_BUDGET_S
from serve_apps.openapi import REQUEST_ID_HEADER

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs Debian's haproxy")


@dataclass
class _Serve:
    """Answers ``/<region>/v1/ready`` 200 for the ready regions, echoes every other path, and
    holds ``/.../slow`` until released."""

    ready: set[str] = field(default_factory=lambda: {"us-east", "eu-west"})
    seen: list[str] = field(default_factory=list)
    ready_delay_s: float = 0.0  # how long a ready check takes (a replica whose stores hang)
    slow_checks: int = 0  # ready checks answered after such a delay
    # Health checks of these regions are held this long (Serve holding the requests of a region
    # that has no replica) before they are answered.
    held: dict[str, float] = field(default_factory=dict)
    refusing: set[str] = field(default_factory=set)  # regions answering their health with 503
    # Regions whose health checks Serve answers itself (500, no request id: a replica just died).
    serve_answers: set[str] = field(default_factory=set)
    health_checks: int = 0
    release: threading.Event = field(default_factory=threading.Event)


def _handler(serve: _Serve) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            region, _, rest = self.path.lstrip("/").partition("/")
            if rest == "v1/health":
                time.sleep(serve.held.get(region, 0.0))
                serve.health_checks += 1
                status = 503 if region in serve.refusing else 200
            elif rest == "v1/ready":
                status = 200 if region in serve.ready else 503
                if serve.ready_delay_s:
                    time.sleep(serve.ready_delay_s)
                    serve.slow_checks += 1
            else:
                serve.seen.append(self.path)
                if rest.endswith("slow"):
                    serve.release.wait(10)
                status = 200
            body = self.path.encode()
            from_serve = rest == "v1/health" and region in serve.serve_answers
            self.send_response(500 if from_serve else status)
            if not from_serve:  # the app's answers carry their request id
                self.send_header(REQUEST_ID_HEADER, "r1")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    return Handler


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[_Serve, dict[str, str]]]:
    serve_port, us_port, eu_port = free_ports(3)
    serve = _Serve()
    server = ThreadingHTTPServer(("127.0.0.1", serve_port), _handler(serve))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = StackSettings(
        state_dir=tmp_path,
        ray=RaySettings(serve_port=serve_port),
        front_door=FrontDoorSettings(ports=(us_port, eu_port), maxconn=1, queue_ms=50),
    )
    doors = [FrontDoorService(settings, name) for name in settings.topology.names]
    try:
        for door in doors:
            door.start()
            assert door.status().healthy
        yield serve, front_door_urls(settings)
    finally:
        serve.release.set()
        for door in doors:
            door.stop()
        server.shutdown()


def _served_by(url: str, region_path: str, want: str) -> httpx.Response:
    """Ask until the answer comes from ``want`` (health checks take a few intervals to see a
    change), bounded by a deadline."""
    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(f"{url}{region_path}")
        if response.headers.get(SERVED_BY_HEADER) == want or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_forwards_to_its_region_and_says_so(world: tuple[_Serve, dict[str, str]]) -> None:
    _, urls = world
    response = _served_by(urls["us-east"], "/us-east/v1/features", "us-east")
    assert response.status_code == 200
    assert response.headers[SERVED_BY_HEADER] == "us-east"
    assert response.text == "/us-east/v1/features"


def test_fails_reads_over_to_the_next_region_and_back(
    world: tuple[_Serve, dict[str, str]],
) -> None:
    serve, urls = world
    _served_by(urls["us-east"], "/us-east/v1/features", "us-east")
    serve.ready.discard("us-east")
    response = _served_by(urls["us-east"], "/us-east/v1/features", "eu-west")
    assert response.status_code == 200
    assert response.headers[SERVED_BY_HEADER] == "eu-west"
    assert response.text == "/eu-west/v1/features"  # the path names the region that serves
    serve.ready.add("us-east")
    assert _served_by(urls["us-east"], "/us-east/v1/x", "us-east").text == "/us-east/v1/x"


def test_with_no_region_ready_the_door_refuses_by_itself_with_retry_after(
    world: tuple[_Serve, dict[str, str]],
) -> None:
    """No ready region anywhere: the door answers 503 itself, names itself, and tells the client
    when to come back, instead of queueing the read or handing it to Serve."""
    serve, urls = world
    _served_by(urls["us-east"], "/us-east/v1/features", "us-east")
    serve.ready.clear()
    refused = _served_by(urls["us-east"], "/us-east/v1/features", "front-door")
    assert refused.status_code == 503
    assert refused.headers[SERVED_BY_HEADER] == "front-door"
    assert refused.headers["retry-after"] == "1"
    # Each door runs its own health checks: the other one sees the change on its own schedule.
    assert _served_by(urls["eu-west"], "/eu-west/v1/x", "front-door").status_code == 503
    serve.seen.clear()
    assert httpx.get(f"{urls['us-east']}/us-east/v1/features").status_code == 503
    assert serve.seen == [], "a refused read never reaches Serve"


def test_waits_for_a_ready_check_that_takes_the_whole_ready_budget(
    world: tuple[_Serve, dict[str, str]],
) -> None:
    """The ready route may spend its whole budget reading hung stores before it answers; a check
    hung up on before that (HAProxy's default: one ``inter``) counts a miss and sends a healthy
    region's reads away."""
    serve, urls = world
    _served_by(urls["us-east"], "/us-east/v1/features", "us-east")
    serve.ready_delay_s = READY_BUDGET_S
    deadline = time.monotonic() + 30
    while serve.slow_checks < 12 and time.monotonic() < deadline:  # both doors, both regions
        time.sleep(0.1)
    assert serve.slow_checks >= 12
    response = httpx.get(f"{urls['us-east']}/us-east/v1/features")
    assert response.headers[SERVED_BY_HEADER] == "us-east"


def test_fails_over_a_region_whose_health_checks_go_unanswered(
    world: tuple[_Serve, dict[str, str]],
) -> None:
    """A region with no replica does not refuse: Serve holds its requests. Its ready checks
    still pass here (answered within the ready check's long timeout); only liveness, an answer
    to the health route within ``live_timeout_ms``, can see it gone."""
    serve, urls = world
    _served_by(urls["us-east"], "/us-east/v1/features", "us-east")
    serve.held["us-east"] = 3 * FrontDoorSettings().live_timeout_ms / 1000
    response = _served_by(urls["us-east"], "/us-east/v1/features", "eu-west")
    assert response.headers[SERVED_BY_HEADER] == "eu-west"
    assert response.text == "/eu-west/v1/features"
    serve.held.clear()
    assert _served_by(urls["us-east"], "/us-east/v1/x", "us-east").status_code == 200


def test_a_region_whose_health_serve_answers_itself_is_down(
    world: tuple[_Serve, dict[str, str]],
) -> None:
    """Serve's own 500 (a replica just killed, no request id) is not the app answering."""
    serve, urls = world
    _served_by(urls["us-east"], "/us-east/v1/features", "us-east")
    serve.serve_answers.add("us-east")
    assert _served_by(urls["us-east"], "/us-east/v1/x", "eu-west").text == "/eu-west/v1/x"


def test_a_region_that_refuses_its_health_checks_is_still_live(
    world: tuple[_Serve, dict[str, str]],
) -> None:
    """Any answer is liveness: a busy region's 503 must not send its reads away."""
    serve, urls = world
    _served_by(urls["us-east"], "/us-east/v1/features", "us-east")
    serve.refusing.add("us-east")
    counted = serve.health_checks
    deadline = time.monotonic() + 30
    while serve.health_checks < counted + 12 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert serve.health_checks >= counted + 12  # several rounds of both doors' checks
    response = httpx.get(f"{urls['us-east']}/us-east/v1/features")
    assert response.headers[SERVED_BY_HEADER] == "us-east"


def test_refuses_past_maxconn_with_retry_after_before_forwarding(
    world: tuple[_Serve, dict[str, str]],
) -> None:
    serve, urls = world
    _served_by(urls["us-east"], "/us-east/v1/features", "us-east")
    serve.seen.clear()
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(httpx.get, f"{urls['us-east']}/us-east/v1/slow", timeout=15)
        while "/us-east/v1/slow" not in serve.seen:
            time.sleep(0.01)
        refused = httpx.get(f"{urls['us-east']}/us-east/v1/features")
        serve.release.set()
        assert held.result().status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers[SERVED_BY_HEADER] == "front-door"
    assert refused.json() == {"error": "overloaded"}
    assert serve.seen == ["/us-east/v1/slow"]  # the refused read never reached Serve
