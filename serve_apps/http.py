"""HTTP for one region: routing, API keys, body and entity limits, load shedding, error mapping.

:class:`ServingHttp` is plain ASGI-free Python: ``handle(method, path, headers, read_body)``
returns ``(status, headers, body)``. The Ray Serve deployment (``serve_apps.app``) and the unit
tests call it directly; there is no per-request pydantic model and JSON goes through orjson.

Routes (paths relative to the application's route prefix, e.g. ``/us-east``):

========================  ======  ==========================================================
``POST /v1/features``     read    native read (see ``serve_apps.responses``)
``POST /get-online-features`` read  Feast-shaped read
``GET /v1/catalog``       read    views, features, versions, TTLs, freshness targets
``POST /v1/similar``      read    nearest neighbours (``serve_apps.similar``); only when the
                                  replica is given embedding views
``GET /v1/stores``        admin   breakers, last failure per store, in-flight limit, loop lag
``GET /v1/health``        none    the replica's event loop answers
``GET /v1/ready``         none    catalog loaded and at least one store answered recently
``GET /v1/openapi.json``  none    OpenAPI 3.1 document (``serve_apps.openapi``)
``GET /docs``             none    that document as one self-contained HTML page
========================  ======  ==========================================================

A known path asked with another method answers 405 with ``Allow``; an unknown path 404.

Invariants: a response body never holds exception text (errors carry ``code`` and
``request_id``; the message and traceback go to the log under that id); the body is read with a
hard byte limit (``Content-Length`` is checked first, then the stream is counted); beyond the
adaptive in-flight limit (between ``limits.min_in_flight`` and ``limits.max_in_flight``) or while
the loop lags, the answer is 503 with ``Retry-After`` at once (``serve_apps.overload``); every
answer carries one ``x-request-id`` (the request's own, when it has a usable one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson

from features.errors import DataError, FreshlineError
from regions.answer_log import AnswerLog
from regions.resilience import Deadline
from serve_apps.answer_entries import answer_entries
from serve_apps.config import Scope, ServingConfig, hash_api_key
from serve_apps.defaults import READY_BUDGET_S
from serve_apps.exceptions import (
    AuthError,
    BadRequest,
    BodyTooLarge,
    MalformedJson,
    Overloaded,
    ScopeDenied,
)
from serve_apps.fallback import DEFAULTS
from serve_apps.metrics import NO_METRICS, ServingMetrics
from serve_apps.openapi import METHOD_NOT_ALLOWED, REQUEST_ID_HEADER, openapi_document
from serve_apps.openapi_html import render_html
from serve_apps.overload import AdaptiveLimit, LagTicker
from serve_apps.plan import CatalogIndex
from serve_apps.responses import (
    COLUMNS,
    columnar_response,
    feast_plan,
    feast_response,
    native_plan,
    native_response,
    response_format,
)
from serve_apps.service import ReadResult, ReadService
from serve_apps.similar import SimilarSearch

log = logging.getLogger(__name__)

# Which gate refused a 503 ``overloaded`` (for operators and the serve-overload drill; clients
# treat them alike). Serve's own backpressure 503, before our code, carries no such header.
SHED_HEADER = "x-freshline-shed"
SHED_LOOP_LAG = "loop-lag"  # the event loop's smoothed lag is over Limits.max_loop_lag_ms
SHED_IN_FLIGHT = "in-flight"  # past the adaptive in-flight limit
SHED_LATE_READ = "late-read"  # admitted, then its store read timed out because the loop lagged

Headers = Mapping[str, str]
Response = tuple[int, list[tuple[str, str]], bytes]
BodyStream = Callable[[], AsyncIterator[bytes]]
Handler = Callable[[str, Headers, BodyStream], Awaitable[Response]]
Route = tuple[Scope | None, Handler]  # scope None: public, never shed

_JSON = ("content-type", "application/json")
_HTML = ("content-type", "text/html; charset=utf-8")
# A request's own id is kept when it looks like one (Serve's ingress sets it on every request
# and echoes it in the response, so the body and the header then say the same id).
_MAX_REQUEST_ID = 128


def _json(status: int, payload: Any, extra: list[tuple[str, str]] | None = None) -> Response:
    return status, [_JSON, *(extra or [])], orjson.dumps(payload)


def _error(
    status: int, code: str, request_id: str, extra: list[tuple[str, str]] | None = None
) -> Response:
    return _json(status, {"error": code, "request_id": request_id}, extra)


def request_id_of(headers: Headers) -> str:
    """The request's ``x-request-id`` if it is printable ASCII of at most 128 characters, else a
    fresh random one."""
    given = headers.get(REQUEST_ID_HEADER, "")
    if 0 < len(given) <= _MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return os.urandom(8).hex()


class ServingHttp:
    """One replica's HTTP logic. Not thread-safe: runs on one event loop."""

    def __init__(
        self,
        config: ServingConfig,
        service: ReadService,
        lag: LagTicker | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        *,
        similar: SimilarSearch | None = None,
        answers: AnswerLog | None = None,
        metrics: ServingMetrics = NO_METRICS,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self.answers = answers  # sampled answers for the consistency validator, or None
        self.similar = similar
        self._rng = rng or random.Random()  # noqa: S311 - spreads retries, guards nothing
        self.service = service
        self.limits = config.limits
        self.lag = lag
        self._keys = {k.sha256: k for k in config.api_keys}
        self.admission = AdaptiveLimit(
            self.limits.max_in_flight,
            clock,
            min_limit=min(self.limits.min_in_flight, self.limits.max_in_flight),
        )
        self.registry_version = config.registry_version
        self._describe(service.index)
        self._probe_key = f"fl:{config.tenant}:readiness:v1:probe"
        # path -> method -> route; every path and method here is in the OpenAPI document.
        self._routes: dict[str, dict[str, Route]] = {
            "/v1/features": {"POST": (Scope.READ, self._features)},
            "/get-online-features": {"POST": (Scope.READ, self._feast)},
            "/v1/catalog": {"GET": (Scope.READ, self._get_catalog)},
            "/v1/stores": {"GET": (Scope.ADMIN, self._stores)},
            "/v1/health": {"GET": (None, self._health)},
            "/v1/ready": {"GET": (None, self._ready)},
            "/v1/openapi.json": {"GET": (None, self._get_openapi)},
            "/docs": {"GET": (None, self._get_docs)},
        }
        if similar is not None:
            self._routes["/v1/similar"] = {"POST": (Scope.READ, self._similar)}

    async def handle(self, method: str, path: str, headers: Headers, body: BodyStream) -> Response:
        """The answer to one request; it carries exactly one ``x-request-id`` header."""
        started = self._clock()
        request_id = request_id_of(headers)
        status, out, payload = await self._answer(method, path, headers, body, request_id)
        route = path if path in self._routes else "unknown"  # bounded label values
        self.metrics.request(route, status, self._clock() - started)
        return status, [*out, (REQUEST_ID_HEADER, request_id)], payload

    async def _answer(
        self, method: str, path: str, headers: Headers, body: BodyStream, request_id: str
    ) -> Response:
        methods = self._routes.get(path)
        if methods is None:
            return _error(404, "not_found", request_id)
        route = methods.get(method)
        if route is None:
            allow = [("allow", ", ".join(sorted(methods)))]
            return _error(405, METHOD_NOT_ALLOWED, request_id, allow)
        scope, handler = route
        if scope is None:
            return await handler(request_id, headers, body)
        return await self._guarded(route, request_id, headers, body)

    async def _guarded(  # noqa: PLR0911 - one return per outcome reads best here
        self, route: Route, request_id: str, headers: Headers, body: BodyStream
    ) -> Response:
        """A route behind the load gates, the API key check and the error mapping."""
        if self.lag is not None:
            self.lag.ensure_started()
            if self.lag.gauge.overloaded():
                return self._shed(request_id, SHED_LOOP_LAG)
        started = self.admission.acquire()
        if started is None:
            return self._shed(request_id, SHED_IN_FLIGHT)
        overloaded = False
        try:
            self._authorize(headers, route[0])
            return await route[1](request_id, headers, body)
        except (AuthError, BadRequest) as exc:
            log.info("request %s refused: %s", request_id, exc)
            return _error(exc.status, exc.code, request_id)
        except DataError as exc:  # invalid entity ids and other bad values
            log.info("request %s refused: %s", request_id, exc)
            return _error(422, "invalid_input", request_id)
        except Overloaded:  # not logged: under overload a line per request is more load
            overloaded = True
            return self._shed(request_id, SHED_LATE_READ)
        except FreshlineError:
            log.exception("request %s failed", request_id)
            return _error(503, "unavailable", request_id, [("retry-after", "1")])
        except Exception:
            log.exception("request %s failed", request_id)
            return _error(500, "internal", request_id)
        finally:
            # A drop is this replica's own overload: refused by the chain, or a lagging loop.
            # Not a slow or timing-out store (cutting the limit for those refuses requests the
            # chain would answer from the next store), and not a bad request (a client sending
            # garbage must not shrink everyone's limit).
            self.admission.release(started, dropped=overloaded or self._loop_busy())

    def _loop_busy(self) -> bool:
        return self.lag is not None and self.lag.gauge.busy()

    def _shed(self, request_id: str, reason: str) -> Response:
        self.metrics.refused(reason)
        delay = self.limits.retry_after_s + self._rng.randint(0, self.limits.retry_after_jitter_s)
        retry = [("retry-after", str(delay)), (SHED_HEADER, reason)]
        return _error(503, Overloaded.code, request_id, retry)

    def _authorize(self, headers: Headers, scope: Scope | None) -> None:
        if scope is None:
            return
        raw = headers.get("x-api-key")
        if raw is None:
            auth = headers.get("authorization", "")
            raw = auth[7:] if auth[:7].lower() == "bearer " else None
        key = self._keys.get(hash_api_key(raw)) if raw else None
        if key is None:
            raise AuthError("missing or unknown API key")
        if scope not in key.scopes:
            raise ScopeDenied(f"key {key.name!r} lacks scope {scope.value}")

    async def _json_body(self, headers: Headers, body: BodyStream) -> dict[str, Any]:
        limit = self.limits.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise BodyTooLarge(limit)
        chunks, size = [], 0
        async for chunk in body():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        try:
            parsed = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            raise MalformedJson() from None
        if not isinstance(parsed, dict):
            raise MalformedJson()
        return parsed

    async def _features(self, request_id: str, headers: Headers, body: BodyStream) -> Response:
        parsed = await self._json_body(headers, body)
        plan = native_plan(self.service.index, parsed, self.limits)
        shape = columnar_response if response_format(parsed) == COLUMNS else native_response
        result = await self.service.read(plan)
        self._record(result)
        payload = shape(result, plan, self.config.region, request_id)
        if self.answers is not None:  # after the body is built; the write runs on its own
            self.answers.offer(answer_entries(payload, self.answers.wants))
        return _json(200, payload)

    async def _feast(self, request_id: str, headers: Headers, body: BodyStream) -> Response:
        parsed = await self._json_body(headers, body)
        plan, rows = feast_plan(self.service.index, parsed, self.limits)
        result = await self.service.read(plan)
        self._record(result)
        full = parsed.get("full_feature_names") is True
        return _json(200, feast_response(result, plan, rows, full))

    def _record(self, result: ReadResult) -> None:
        """Which store answered, and each view's served age."""
        self.metrics.answered(result.store)
        for name, values in result.views.items():
            newest = values.columns.newest_ms
            if newest is not None:
                self.metrics.served_age(name, result.as_of_ms - newest)

    async def keep_gauges(self, every_s: float) -> None:
        """Set every gauge (breakers, freshness targets, registry version) every ``every_s``
        until cancelled: Ray's metrics agent forgets a gauge not set for two export intervals,
        so a value set once, or only while requests flow, would leave the scrape."""
        while True:
            self.metrics.breakers(self.service.chain.breakers())
            self.metrics.catalog(self.service.index.freshness_targets_ms(), self.registry_version)
            await asyncio.sleep(every_s)

    async def _similar(self, request_id: str, headers: Headers, body: BodyStream) -> Response:
        if self.similar is None:  # the route exists only with a similar search
            return _error(404, "not_found", request_id)
        parsed = await self._json_body(headers, body)
        return _json(200, await self.similar.answer(parsed, request_id))

    async def _get_catalog(self, request_id: str, headers: Headers, body: BodyStream) -> Response:
        return 200, [_JSON], self._catalog

    async def _stores(self, request_id: str, headers: Headers, body: BodyStream) -> Response:
        chain, admission = self.service.chain, self.admission
        state = {
            "breakers": chain.breakers(),
            "last_failures": chain.last_failures(),
            "store_timeouts": chain.timeouts,
            "in_flight": {"limit": int(admission.limit), "now": admission.in_flight},
            "loop_lag_ms": round(self.lag.gauge.lag_s * 1e3, 1) if self.lag else None,
        }
        return _json(200, state)

    async def _health(self, request_id: str, headers: Headers, body: BodyStream) -> Response:
        return _json(200, {"status": "ok"})

    async def _ready(self, request_id: str, headers: Headers, body: BodyStream) -> Response:
        ready = await self.ready()
        payload = {"ready": ready, "region": self.config.region, "request_id": request_id}
        return _json(200 if ready else 503, payload)

    async def _get_openapi(self, request_id: str, headers: Headers, body: BodyStream) -> Response:
        return 200, [_JSON], self._openapi

    async def _get_docs(self, request_id: str, headers: Headers, body: BodyStream) -> Response:
        return 200, [_HTML], self._docs

    def use_catalog(self, index: CatalogIndex, registry_version: int) -> None:
        """Serve ``index`` from the next request on (``serve_apps.registry_follow``); requests
        already planned keep the index they planned with."""
        self.service.index = index
        self.registry_version = registry_version
        self._describe(index)
        self.metrics.catalog(index.freshness_targets_ms(), registry_version)

    def _describe(self, index: CatalogIndex) -> None:
        described = {"region": self.config.region, **index.describe()}
        self._catalog = orjson.dumps({**described, "registry_version": self.registry_version})
        document = openapi_document(self.config.route_prefix, index, self.limits, self.similar)
        self._openapi = orjson.dumps(document)
        self._docs = render_html(document)

    async def warm(self, budget_s: float = 2.0) -> int:
        """Open the home store's connections for the most requests this replica works on at once
        (``limits.max_in_flight``) before it takes traffic; at most ``budget_s``, never raises.
        Returns how many opened (logged: zero means the home store was down at start)."""
        connections = min(self.limits.max_in_flight, self.config.redis_max_connections)
        opened = await self.service.chain.warm([self._probe_key], connections, budget_s)
        level = logging.INFO if opened == connections else logging.WARNING
        log.log(level, "opened %d of %d home store connections at start", opened, connections)
        return opened

    async def ready(self) -> bool:
        """Catalog loaded (it is, or the replica would not exist) and a store, not the defaults,
        answers a read of one absent key through the fallback chain within ``READY_BUDGET_S``."""
        deadline = Deadline(READY_BUDGET_S, time.monotonic)
        result = await self.service.chain.read([self._probe_key], deadline)
        return result.store != DEFAULTS
