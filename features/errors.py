"""The one exception root of Freshline and its first-level branches.

Every error Freshline raises on purpose derives from :class:`FreshlineError`. Packages add their own
small ``exceptions.py`` with subclasses of the branches below, never of ``Exception`` directly::

    FreshlineError
    ├── ConfigError            invalid settings or catalog; the message names the offending field
    │   └── CatalogError       a catalog that does not validate (unknown entity, bad window, ...)
    ├── DataError              input data that cannot be accepted (a bad event, a bad request value)
    │   └── EventRejected      one event refused by validation; carries a machine-readable reason
    ├── TransportError         a store, broker or process did not answer as expected
    │   ├── StoreUnavailable   connection refused, closed or circuit open
    │   └── StoreTimeout       no answer within the budget
    ├── BackpressureError      a sink is full; the caller must pause and retry after ``retry_after``
    └── StackError             the local stack could not be started, stopped or inspected

Transport errors, data errors and client errors are different types so that callers (HTTP handlers,
consumers, the CLI) can map them to different outcomes without parsing messages. Messages are meant
for logs and operators; HTTP responses never include them.
"""

from __future__ import annotations

from enum import StrEnum


class FreshlineError(Exception):
    """Root of every error Freshline raises on purpose."""


class ConfigError(FreshlineError):
    """Settings or a catalog failed validation. ``field`` is the dotted path of the culprit."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class CatalogError(ConfigError):
    """A feature catalog that does not validate."""


class DataError(FreshlineError):
    """Input data that cannot be accepted."""


class RejectReason(StrEnum):
    """Why an event was refused; the value is written to the dead-letter header ``reason``."""

    BAD_JSON = "bad_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    OVERSIZED = "oversized"
    FUTURE = "future"
    UNKNOWN_TYPE = "unknown_type"
    BAD_KEY = "bad_key"
    LATE = "late"
    # embedding events (features.embeddings)
    WRONG_DIMENSION = "wrong_dimension"
    UNKNOWN_MODEL_VERSION = "unknown_model_version"
    UNKNOWN_ATTRIBUTE = "unknown_attribute"


class EventRejected(DataError):
    """One event refused by validation. Never fatal to a consumer: it is dead-lettered."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class TransportError(FreshlineError):
    """A store, broker or process did not answer as expected."""


class StoreUnavailable(TransportError):
    """The store refused or dropped the connection, or its circuit breaker is open."""


class StoreTimeout(TransportError):
    """The store did not answer within the remaining budget."""


class BackpressureError(FreshlineError):
    """A sink cannot take more now; pause the source and retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float, message: str = "sink is full") -> None:
        super().__init__(f"{message}; retry after {retry_after:.3f}s")
        self.retry_after = retry_after


class StackError(FreshlineError):
    """The local stack could not be started, stopped or inspected."""
