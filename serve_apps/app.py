"""Ray Serve: one application per region, deployed together on the one Serve HTTP port.

Each region's application is the :class:`RegionServer` deployment at route prefix ``/<region>``.
A request reaches ``__call__`` as a Starlette ``Request``; everything after that is
:class:`serve_apps.http.ServingHttp` (no FastAPI, no per-request pydantic, orjson).

Entry points:
- :func:`build_app` is the Serve ``import_path`` target (``serve_apps.app:build_app``); its
  ``args`` are ``{"config": <ServingConfig as JSON>}``, so ``serve deploy`` works from a YAML file
  written by :func:`serve_apps.deploy.write_serve_config`;
- :func:`serve_apps.deploy.deploy` runs the same applications from Python.

Invariants: the replica builds its Redis client in its ``async __init__``, which Serve runs on
the loop that then runs the replica's requests (asyncio clients are bound to the loop that first
uses them), and opens its home Redis connections there before Serve routes it a request (a
cold replica joining under load opened them one by one while the herd waited); Serve hands the
handler up to ``limits.max_in_flight + limits.max_queued`` requests at a time, so that a request
reaches our adaptive in-flight gate on arrival and is refused there at once when the replica is
overloaded; Serve queues ``limits.max_queued`` more beyond that and answers the rest with 503
and ``Retry-After`` (``backpressure_config``). When Serve's own slot count was our limit, its
queue held requests our gate then refused, after a wait behind slow ones. Serve's ingress gives
every request an ``x-request-id`` (the client's own, or a fresh one) and adds it to every
response: the handler answers under that id and leaves the header to Serve, so a response
carries it once.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import BackpressureConfig
from ray.serve.schema import LoggingConfig
from starlette.requests import Request
from starlette.responses import Response

from features.embeddings import EmbeddingView
from serve_apps.config import ServingConfig
from serve_apps.http import ServingHttp
from serve_apps.openapi import REQUEST_ID_HEADER
from serve_apps.wiring import build_http, catalog_follower, warm_dynamo_clients

# Ray's agent exports every few seconds and drops a gauge not set for two exports.
GAUGE_REFRESH_S = 2.0


# Admission and actor options (CPUs, priority) are set from the config in build_app.
@serve.deployment
class RegionServer:
    """One region's HTTP entry point."""

    # Serve awaits an async constructor on the replica's user-code loop; mypy wants __init__
    # to return None, not a coroutine.
    async def __init__(self, config: dict[str, Any], args: dict[str, Any]) -> None:  # type: ignore[misc]
        self._config = ServingConfig.model_validate(config)
        adopt_serve_logging(self._config.log_level)
        # Serve routes no request here before the constructor returns: the slow, GIL-holding
        # boto3 builds belong here, not on the event loop of the first request.
        self._http: ServingHttp = build_http(
            self._config, dynamo=warm_dynamo_clients(self._config), embeddings=embedding_views(args)
        )
        await self._http.warm()
        loop = asyncio.get_running_loop()
        self._gauges = loop.create_task(self._http.keep_gauges(GAUGE_REFRESH_S))
        # Registry versions published in the region's Redis replace the catalog in place.
        self._follow: asyncio.Task[None] | None = None
        if self._config.registry_refresh_s > 0:
            follower = catalog_follower(self._config, self._http)
            refresh = follower.run(self._config.registry_refresh_s)
            self._follow = loop.create_task(refresh)

    async def __call__(self, request: Request) -> Response:
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        elif path.startswith(self._config.route_prefix + "/"):
            path = path[len(self._config.route_prefix) :]
        status, headers, body = await self._http.handle(
            request.method, path or "/", request.headers, request.stream
        )
        return Response(body, status_code=status, headers=serve_headers(headers))

    async def check_health(self) -> None:
        """Serve's replica health check: the event loop answers (readiness is ``/v1/ready``)."""

    # Serve awaits an async __del__ on a graceful stop (a redeploy, a scale-down, serve
    # shutdown), after the replica's last request. The garbage collector's own later call only
    # creates a coroutine it never runs.
    async def __del__(self) -> None:
        """Stop the background loops, then finish the sampled-answer writes already started: the
        consistency validator reads them, and a rolling update must not drop the last ones."""
        for task in (self._gauges, self._follow):
            if task is not None:
                task.cancel()
        if self._http.answers is not None:
            await self._http.answers.drain()


def serve_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """The handler's headers without ``x-request-id``, which Serve's ingress adds itself."""
    return {name: value for name, value in headers if name != REQUEST_ID_HEADER}


def adopt_serve_logging(level: str, package: str = "serve_apps") -> None:
    """Route our package's records to Serve's replica log (its file, its format), unbuffered.

    Without a handler of their own they would reach Python's last-resort handler, i.e. stderr,
    which Serve redirects to its logger line by line, walking the whole stack for every line.
    Serve's own handler is a ``MemoryHandler`` that, in throughput-optimised mode, holds 1,000
    records below ERROR: a store's failure warnings stayed invisible until then, and were lost
    with a killed replica. Ours are few (a failing store logs once per 5 s), so they are written
    at once, with Serve's filters, to the file its buffer writes to."""
    ours = logging.getLogger(package)
    ours.setLevel(level)
    ours.handlers = [_unbuffered(h) for h in logging.getLogger("ray.serve").handlers]
    ours.propagate = False


class _Unbuffered(logging.Handler):
    """A ``MemoryHandler``'s filters in front of its target, without the buffer."""

    def __init__(self, buffered: logging.handlers.MemoryHandler, target: logging.Handler) -> None:
        super().__init__(buffered.level)
        self.filters = list(buffered.filters)
        self._target = target

    def emit(self, record: logging.LogRecord) -> None:
        self._target.handle(record)


def _unbuffered(handler: logging.Handler) -> logging.Handler:
    if isinstance(handler, logging.handlers.MemoryHandler) and handler.target is not None:
        return _Unbuffered(handler, handler.target)
    return handler


def build_app(args: dict[str, Any]) -> Application:
    """Serve ``import_path`` target: ``args = {"config": {...ServingConfig...}}``, and
    ``"embeddings": [...EmbeddingView as JSON...]`` to serve ``POST /v1/similar``."""
    config = ServingConfig.model_validate(args["config"])
    limits = config.limits
    deployment: Any = RegionServer  # a serve.Deployment; the decorator hides that from mypy
    app: Application = deployment.options(
        name=f"serving-{config.region}",
        num_replicas=config.replicas,
        # Merged into the application's runtime env (Serve keeps its env_vars and adds these).
        ray_actor_options={
            "num_cpus": 0,
            "runtime_env": {"env_vars": {"RAY_worker_niceness": str(config.niceness)}},
        },
        # Serve itself sheds: past max_ongoing + max_queued its direct ingress answers 503 before
        # the request reaches Python code of ours, the cheapest place to refuse (serve-overload
        # drill). Its backpressure response must carry Retry-After like ours does.
        # Set per deployment: serve.start's logging_config covers Serve's own actors only, and
        # a deployment's default is INFO with an access-log line per request.
        logging_config=LoggingConfig(log_level=config.log_level, enable_access_log=False),
        # Above our gate's limit, not equal to it: our gate refuses on arrival; Serve's queue
        # would hold a request behind slow ones, then hand it to our gate to be refused.
        max_ongoing_requests=limits.max_in_flight + limits.max_queued,
        max_queued_requests=limits.max_queued,
        backpressure_config=BackpressureConfig(
            status_code=503, retry_after_s=float(limits.retry_after_s)
        ),
    ).bind(config.model_dump(mode="python"), {"embeddings": args.get("embeddings", [])})
    return app


def embedding_views(args: dict[str, Any]) -> list[EmbeddingView]:
    """The embedding views the region serves ``POST /v1/similar`` for (JSON in the app's args)."""
    return [EmbeddingView.model_validate(view) for view in args.get("embeddings", [])]
