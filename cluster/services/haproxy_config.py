"""The HAProxy configuration of one region's front door (pure: text in, text out).

The front door listens on the region's own port and forwards ``/<region>/...`` to Serve's HTTP
ingress on the Ray head, which routes each route prefix to a live replica. Pointing at Serve's
ingress rather than at replica addresses is what keeps the backends correct while replicas are
replaced: Serve (its proxy, or its own generated HAProxy) already follows every replacement, so
the front door never holds a stale replica address and needs no reload.

Its own jobs are the ones Serve's ingress does not do:

- admission in C: a per-server ``maxconn`` and a short ``timeout queue``; past them HAProxy
  itself answers 503 with ``Retry-After`` (the ``http-errors`` section), so an overload is refused
  before any Python process parses the request;
- health: ``/<region>/v1/ready`` checked every ``check_ms``; two misses mark the region down;
  so do two ``/<region>/v1/health`` checks not answered by the app within ``live_timeout_ms``
  (liveness: a region with no replica does not refuse its checks, Serve holds them until one
  returns, and the ready check must wait out the ready route's whole budget to count a miss);
- failover: while the region has no live server, requests go to the next region in the failover
  order with their path rewritten to that region's prefix; every answer names the region that
  served it in ``x-freshline-served-by``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from serve_apps.defaults import READY_BUDGET_S
from serve_apps.openapi import REQUEST_ID_HEADER

SERVED_BY_HEADER = "x-freshline-served-by"
ERRORFILE = "503.http"
MONITOR_URI = "/_frontdoor/health"
"""Answered by HAProxy itself (200 while the process runs): the stack's liveness probe."""


@dataclass(frozen=True)
class FrontDoorPlan:
    """What one region's front door needs to know; ``failover`` is the other regions, in the
    order reads fail over to them."""

    region: str
    bind_port: int
    serve_port: int
    failover: Sequence[str]
    maxconn: int
    queue_ms: int
    retry_after_s: int
    check_ms: int
    errors_dir: Path
    live_timeout_ms: int = 300


def refusal_file(retry_after_s: int) -> bytes:
    """The raw 503 HAProxy sends for a queue timeout or no server: the same JSON error shape as
    serving's own refusals (serve_apps/http.py), so a client treats both the same way."""
    body = '{"error":"overloaded"}'
    return (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "content-type: application/json\r\n"
        f"retry-after: {retry_after_s}\r\n"
        f"{SERVED_BY_HEADER}: front-door\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def _backend(plan: FrontDoorPlan, name: str, region: str, rewrite_from: str | None) -> list[str]:
    lines = [
        f"backend {name}",
        f"    option httpchk GET /{region}/v1/ready",
        "    http-check expect status 200",
        # Keep-alive to Serve: idle connections are reused by any client's request.
        "    http-reuse always",
        "    retry-on conn-failure empty-response",
        "    retries 1",
    ]
    if rewrite_from is not None:
        lines.append(f"    http-request replace-path ^/{rewrite_from}(/.*)?$ /{region}\\1")
    lines += [
        f"    http-response set-header {SERVED_BY_HEADER} {region}",
        f"    server serve-{region} 127.0.0.1:{plan.serve_port} check maxconn {plan.maxconn}"
        f" inter {plan.check_ms} fastinter {plan.check_ms} downinter {plan.check_ms}"
        " fall 2 rise 2",
        "",
    ]
    return lines


def _live_backend(plan: FrontDoorPlan, region: str) -> list[str]:
    """A backend that only checks: ``region`` is live while its app answers the health route
    within ``live_timeout_ms``, with any status (a busy region that refuses is alive) but with
    the app's request id: Serve's own 500 for a replica just killed, or its 503, is not the app.
    Checked twice as often as readiness, so that two misses in a row come within a second."""
    every = max(1, plan.check_ms // 2)
    return [
        f"backend live-{region}",
        f"    option httpchk GET /{region}/v1/health",
        f"    http-check expect hdr name {REQUEST_ID_HEADER}",
        f"    timeout check {plan.live_timeout_ms}ms",
        f"    server live-{region} 127.0.0.1:{plan.serve_port} check"
        f" inter {every} fastinter {every} downinter {every} fall 2 rise 2",
        "",
    ]


def render(plan: FrontDoorPlan) -> str:
    """The whole ``haproxy.cfg`` of ``plan``'s region."""
    lines = [
        "global",
        "    maxconn 4096",
        # One thread: the box has two cores that Serve, Kafka and Redis share.
        "    nbthread 1",
        "",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    timeout connect 1s",
        "    timeout client 30s",
        "    timeout server 10s",
        "    timeout http-request 5s",
        "    timeout http-keep-alive 30s",
        f"    timeout queue {plan.queue_ms}ms",
        # A check's read timeout (without it HAProxy gives a whole check only ``inter``): longer
        # than the ready route's own budget, so a region whose stores hang answers 503 instead
        # of being hung up on mid-read.
        f"    timeout check {round(2000 * READY_BUDGET_S)}ms",
        "    errorfiles freshline",
        "",
        "http-errors freshline",
        # 503: queue timeout or no server at all (every region down).
        f'    errorfile 503 "{plan.errors_dir / ERRORFILE}"',
        "",
        f"frontend fd-{plan.region}",
        f"    bind 127.0.0.1:{plan.bind_port}",
        f"    monitor-uri {MONITOR_URI}",
    ]
    local = f"be-{plan.region}"
    for other in plan.failover:
        # The home region is down when not ready or not live (HAProxy: `||` between AND-ed
        # conditions); the other region must be both.
        up = f"{{ nbsrv(fo-{other}) gt 0 }} {{ nbsrv(live-{other}) gt 0 }}"
        lines.append(
            f"    use_backend fo-{other} if {{ nbsrv({local}) eq 0 }} {up}"
            f" || {{ nbsrv(live-{plan.region}) eq 0 }} {up}"
        )
    lines += [f"    default_backend {local}", ""]
    lines += _backend(plan, local, plan.region, None)
    lines += _live_backend(plan, plan.region)
    for other in plan.failover:
        lines += _backend(plan, f"fo-{other}", other, plan.region)
        lines += _live_backend(plan, other)
    return "\n".join(lines) + "\n"
