"""Errors of the serving layer, each a subclass of a branch of :mod:`features.errors`::

    DataError
    └── BadRequest           a request that cannot be served as sent (422; 400 for bad JSON)
        ├── BodyTooLarge     the body exceeds ``limits.max_body_bytes`` (413)
        └── TooManyEntities  more entity ids than ``limits.max_entities`` (422)
    FreshlineError
    ├── AuthError            no or unknown API key (401)
    │   └── ScopeDenied      a known key without the scope the route needs (403)
    └── (BackpressureError)
        └── Overloaded       too many requests in flight; retry after ``retry_after`` (503)

The HTTP layer maps the types to status codes (``serve_apps.http``); messages go to logs only, the
response body carries a machine-readable ``code`` and the request id. Store failures never reach
a client as errors: the fallback chain turns them into defaults.
"""

from __future__ import annotations

from features.errors import BackpressureError, DataError, FreshlineError


class BadRequest(DataError):
    """A request the server understood but refuses; ``code`` is safe to show to the client."""

    status = 422

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class MalformedJson(BadRequest):
    status = 400

    def __init__(self) -> None:
        super().__init__("malformed_json", "request body is not a JSON object")


class BodyTooLarge(BadRequest):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__("body_too_large", f"request body exceeds {limit} bytes")


class TooManyEntities(BadRequest):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__("too_many_entities", f"{count} entity ids, the limit is {limit}")


class AuthError(FreshlineError):
    """Missing or unknown API key."""

    status = 401
    code = "unauthorized"


class ScopeDenied(AuthError):
    """The key is valid but lacks the scope of the route."""

    status = 403
    code = "forbidden"


class Overloaded(BackpressureError):
    """Shed before queueing: the replica already serves its in-flight limit, or its event loop is
    so late that a store's timeout fired well after it was due (``serve_apps.fallback``)."""

    status = 503
    code = "overloaded"
