"""The drills' HTTP load against a real (tiny, in-process) HTTP server on a free port."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from chaos.load import TRANSPORT_ERROR, HttpLoad, LoadSpec, http_request
from chaos.timeline import per_second
from cluster.process import free_port

_OK = b'{"request_id":"r","region":"us-east","as_of_ms":1,"store":"redis-us-east","results":[]}'
_DEFAULTS = (
    b'{"request_id":"r","region":"us-east","as_of_ms":1,"store":"defaults","fallback":'
    b'[{"store":"redis-us-east","outcome":"StoreTimeout"},'
    b'{"store":"dynamodb-us-east","outcome":"circuit_open"}],"results":[]}'
)

_SECOND = (
    b'{"request_id":"r","region":"us-east","as_of_ms":1,"store":"dynamodb-us-east","fallback":'
    b'[{"store":"redis-us-east","outcome":"StoreUnavailable"},'
    b'{"store":"dynamodb-us-east","outcome":"ok"}],"results":[]}'
)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            body = await reader.readexactly(length)
            if b"drop" in body:  # closes without answering: the request was lost
                break
            if b"door" in body:  # a front door's own refusal: it closes the connection
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n"
                    b"x-freshline-served-by: front-door\r\nconnection: close\r\n"
                    b'content-length: 22\r\n\r\n{"error":"overloaded"}'
                )
                await writer.drain()
                break
            if b"shed" in body:
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n"
                    b"x-freshline-shed: in-flight\r\n"
                    b'content-length: 22\r\n\r\n{"error":"overloaded"}'
                )
            else:
                answer = _DEFAULTS if b"defaults" in body else _OK
                if b"second" in body:
                    answer = _SECOND
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer)
                )
            await writer.drain()
            if b"once" in body:  # answers, then lets the idle connection go (a proxy reload)
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def main() -> None:
        srv = await asyncio.start_server(_handle, "127.0.0.1", port)
        started.set()
        async with srv:
            await srv.serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    started.wait(5)
    yield port  # the daemon thread serves until the test process exits


def test_open_loop_keeps_its_rate_and_records_status_store_and_retry_after(server: int) -> None:
    requests = [
        http_request("127.0.0.1", server, "/us-east/v1/features", b'{"ok":1}', {}),
        http_request("127.0.0.1", server, "/us-east/v1/features", b'{"shed":1}', {}),
    ]
    with HttpLoad(LoadSpec("127.0.0.1", server, requests, rate=200, connections=4)) as load:
        time.sleep(1.0)
    samples = load.samples
    assert 150 <= len(samples) <= 230, "open loop sends at its rate, not as fast as it can"
    ok = [s for s in samples if s.status == 200]
    shed = [s for s in samples if s.status == 503]
    assert ok and all(s.store == "redis-us-east" for s in ok)
    assert shed and all(s.retry_after and s.store == "" for s in shed)
    assert {s.error for s in shed} == {"overloaded"} and {s.error for s in ok} == {""}
    assert {s.shed_by for s in shed} == {"in-flight"} and {s.shed_by for s in ok} == {""}


def _ok_request(port: int) -> bytes:
    return http_request("127.0.0.1", port, "/us-east/v1/features", b'{"ok":1}', {})


def test_an_answer_not_from_the_first_store_records_why_each_was_passed_over(server: int) -> None:
    requests = [http_request("127.0.0.1", server, "/us-east/v1/features", b'{"defaults":1}', {})]
    second = [http_request("127.0.0.1", server, "/us-east/v1/features", b'{"second":1}', {})]
    with HttpLoad(LoadSpec("127.0.0.1", server, second, rate=50)) as fell_back:
        time.sleep(0.2)
    assert fell_back.samples and all(s.store == "dynamodb-us-east" for s in fell_back.samples)
    assert {s.fallback for s in fell_back.samples} == {
        "redis-us-east=StoreUnavailable,dynamodb-us-east=ok"
    }
    with HttpLoad(LoadSpec("127.0.0.1", server, [_ok_request(server)], rate=50)) as direct:
        time.sleep(0.2)
    assert direct.samples and all(s.fallback == "" for s in direct.samples)
    with HttpLoad(LoadSpec("127.0.0.1", server, requests, rate=100, connections=2)) as load:
        time.sleep(0.3)
    assert load.samples and all(s.store == "defaults" for s in load.samples)
    assert {s.fallback for s in load.samples} == {
        "redis-us-east=StoreTimeout,dynamodb-us-east=circuit_open"
    }
    (bucket, *_) = per_second(load.samples)
    assert bucket.passed_over == {"redis-us-east=StoreTimeout": bucket.requests}


def test_a_refused_connection_is_a_transport_error_not_a_crash() -> None:
    port = free_port()  # nothing listens here
    raw = [http_request("127.0.0.1", port, "/", b"", {})]
    with HttpLoad(LoadSpec("127.0.0.1", port, raw, concurrency=2, timeout_s=1.0)) as load:
        time.sleep(0.3)
    assert load.samples and {s.status for s in load.samples} == {TRANSPORT_ERROR}


def test_a_spec_needs_exactly_one_mode() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LoadSpec("127.0.0.1", 1, [b"x"], rate=1, concurrency=1)
    with pytest.raises(ValueError, match="exactly one"):
        LoadSpec("127.0.0.1", 1, [b"x"])


def test_a_generator_measures_its_own_loop_lag() -> None:
    """A load generator short of CPU delays every request it times; it must say so."""
    load = HttpLoad(LoadSpec("127.0.0.1", 9, [b""], rate=1.0))

    async def scenario() -> None:
        ticker = asyncio.create_task(load._tick(0.01))
        await asyncio.sleep(0.03)
        time.sleep(0.2)  # the generator's loop is held for 200 ms
        await asyncio.sleep(0.03)
        ticker.cancel()

    asyncio.run(scenario())
    assert max(load.own_lag_ms) >= 150


def test_a_client_honouring_retry_after_waits_before_asking_again(server: int) -> None:
    shed = [http_request("127.0.0.1", server, "/us-east/v1/features", b'{"shed":1}', {})]
    polite = LoadSpec("127.0.0.1", server, shed, concurrency=3, honor_retry_after=True)
    with HttpLoad(polite) as load:
        time.sleep(0.4)  # well under the server's Retry-After of 1 s, even on a loaded box
    assert 1 <= len(load.samples) <= 3, "one request per client, then each waits its Retry-After"
    assert all(s.status == 503 and s.retry_after == 1.0 for s in load.samples)
    with HttpLoad(LoadSpec("127.0.0.1", server, shed, concurrency=3)) as rude:
        time.sleep(0.6)
    assert len(rude.samples) > 3, "a client ignoring Retry-After asks again at once"


def test_a_request_on_a_connection_closed_while_idle_is_sent_again_on_a_new_one(
    server: int,
) -> None:
    """What every HTTP client's pool does (RFC 9112 9.3.1), and what a proxy reload needs: the
    server let the idle keep-alive connection go, so the request was never read."""
    once = [http_request("127.0.0.1", server, "/us-east/v1/features", b'{"once":1}', {})]
    with HttpLoad(LoadSpec("127.0.0.1", server, once, concurrency=1)) as load:
        time.sleep(0.3)
    assert len(load.samples) >= 4
    assert {s.status for s in load.samples} == {200}
    assert load.stale_retries >= len(load.samples) - 1  # every reuse found it closed


def test_a_connection_lost_before_its_first_answer_is_an_error_not_retried(server: int) -> None:
    """On a fresh connection a lost answer may mean a lost request: recorded, never hidden."""
    drop = [http_request("127.0.0.1", server, "/us-east/v1/features", b'{"drop":1}', {})]
    with HttpLoad(LoadSpec("127.0.0.1", server, drop, rate=20, connections=1)) as load:
        time.sleep(0.3)
    assert load.samples and {s.status for s in load.samples} == {TRANSPORT_ERROR}
    assert load.stale_retries == 0


def test_an_answer_that_closes_its_connection_is_followed_by_a_new_one(server: int) -> None:
    """``connection: close`` (a front door's refusal) is obeyed: the next request opens a new
    connection instead of finding the old one closed."""
    door = [http_request("127.0.0.1", server, "/us-east/v1/features", b'{"door":1}', {})]
    with HttpLoad(LoadSpec("127.0.0.1", server, door, concurrency=1)) as load:
        deadline = time.monotonic() + 30
        while len(load.samples) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(load.samples) >= 4
    assert {(s.status, s.served_by) for s in load.samples} == {(503, "front-door")}
    assert load.stale_retries == 0
