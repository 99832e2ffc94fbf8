"""``FeatureClient``: a Python client of the serving API with region preference and failover.

Invariants:
- one pooled ``httpx.Client`` per client (keep-alive connections are reused across calls);
- regions are tried in preference order; a region is skipped on connection errors, timeouts and
  5xx answers (503 from load shedding included), never on 4xx (the same request fails the same
  way everywhere: bad input, bad key);
- retries back off with :class:`regions.resilience.ExponentialBackoff` and never sleep past the
  call's deadline (:class:`regions.resilience.Deadline`); each HTTP attempt's timeout is what is
  left of it, so a call never takes much longer than ``timeout_s``;
- ``base_url`` is one URL for every region (one Serve ingress serving every region's prefix) or a
  URL per region (each region's front door): a region that is down is then skipped however it
  fails (refused connection, timeout, 5xx), and its front door's own failover is seen in the
  ``x-freshline-served-by`` header;
- a region that answered 503 with ``Retry-After`` is not asked again before that time (by any
  call of this client): the others are tried instead, and when every region asked to wait the
  call fails at once, so an overloaded region is never hammered by retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import orjson

from features.errors import DataError, TransportError
from regions.resilience import Deadline, ExponentialBackoff

DEFAULT_TIMEOUT_S = 0.25


class FeatureRequestRefused(DataError):
    """The server refused the request (4xx); ``status`` and ``code`` say why."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"HTTP {status}: {code}")
        self.status = status
        self.code = code


class FeatureServiceUnavailable(TransportError):
    """No region answered in time."""


class FeatureClient:
    """``FeatureClient("http://127.0.0.1:8000", api_key, regions=("us-east", "eu-west"))``, or
    ``FeatureClient({"us-east": "http://127.0.0.1:8101", "eu-west": "http://127.0.0.1:8102"},
    api_key, regions=("us-east", "eu-west"))`` for one front door per region."""

    def __init__(
        self,
        base_url: str | Mapping[str, str],
        api_key: str,
        regions: Sequence[str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts_per_region: int = 1,
        rounds: int = 2,
        backoff: ExponentialBackoff | None = None,
        max_connections: int = 32,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not regions:
            raise ValueError("at least one region is required")
        self.regions = tuple(regions)
        if isinstance(base_url, str):
            base_url = dict.fromkeys(self.regions, base_url)
        missing = [r for r in self.regions if r not in base_url]
        if missing:
            raise ValueError(f"no base URL for region(s) {', '.join(missing)}")
        self._urls = {region: base_url[region].rstrip("/") for region in self.regions}
        self._timeout_s = timeout_s
        self._attempts = attempts_per_region
        self._rounds = rounds
        self._backoff = backoff or ExponentialBackoff(base_s=0.01, cap_s=0.1)
        self._monotonic = monotonic
        self._sleep = sleep
        self._cool_until: dict[str, float] = {}  # region -> monotonic time its Retry-After ends
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._http = httpx.Client(
            headers={"x-api-key": api_key, "content-type": "application/json"},
            limits=limits,
            transport=transport,
        )

    def get_features(
        self,
        entities: Mapping[str, Sequence[str]],
        features: Sequence[str] | None = None,
        *,
        feature_service: str | None = None,
        deadline_ms: int | None = None,
        response_format: str | None = None,
    ) -> dict[str, Any]:
        """The native response (see ``serve_apps.responses``) from the first region that answers;
        ``response_format="columns"`` asks for the columnar shape (for many entities)."""
        body: dict[str, Any] = {"entities": {k: list(v) for k, v in entities.items()}}
        if features is not None:
            body["features"] = list(features)
        if feature_service is not None:
            body["feature_service"] = feature_service
        if deadline_ms is not None:
            body["deadline_ms"] = deadline_ms
        if response_format is not None:
            body["format"] = response_format
        return self._post("/v1/features", orjson.dumps(body))

    @staticmethod
    def values(response: Mapping[str, Any]) -> dict[tuple[str, str], Any]:
        """``{(entity id, ref): value}`` of a native response (either format), for convenience."""
        if response.get("format") == "columns":
            return {
                (entity_id, ref): value
                for view in response["views"]
                for entity_id, row in zip(view["ids"], view["values"], strict=True)
                for ref, value in zip(view["features"], row, strict=True)
            }
        return {
            (row["id"], ref): item["value"]
            for row in response["results"]
            for ref, item in row["features"].items()
        }

    def _post(self, path: str, body: bytes) -> dict[str, Any]:
        deadline = Deadline(self._timeout_s, self._monotonic)
        retry = 0
        for _round in range(self._rounds):
            regions = [r for r in self.regions if not self._cooling(r)]
            if not regions:
                raise FeatureServiceUnavailable("every region asked to retry later")
            for region in regions:
                for _attempt in range(self._attempts):
                    if deadline.expired():
                        raise FeatureServiceUnavailable("no region answered within the deadline")
                    if self._cooling(region):
                        break
                    answer = self._try(region, path, body, deadline)
                    if answer is not None:
                        return answer
                    retry += 1
            delay = self._backoff.delay(retry)
            if delay >= deadline.remaining():
                break
            self._sleep(delay)
        raise FeatureServiceUnavailable("no region answered")

    def _cooling(self, region: str) -> bool:
        return self._cool_until.get(region, 0.0) > self._monotonic()

    def _try(
        self, region: str, path: str, body: bytes, deadline: Deadline
    ) -> dict[str, Any] | None:
        try:
            response = self._http.post(
                f"{self._urls[region]}/{region}{path}",
                content=body,
                timeout=deadline.timeout_for(1.0),
            )
        except (httpx.TransportError, TransportError):
            return None
        if response.status_code >= 500:
            wait = _retry_after_s(response) if response.status_code == 503 else None
            if wait:
                self._cool_until[region] = self._monotonic() + wait
            return None
        payload: dict[str, Any] = orjson.loads(response.content)
        if response.status_code >= 400:
            raise FeatureRequestRefused(response.status_code, str(payload.get("error")))
        return payload

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _retry_after_s(response: httpx.Response) -> float | None:
    """Seconds of a ``Retry-After`` given in seconds (the form Freshline and Serve send)."""
    raw = response.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None
