"""Errors of the region store layer, each a subclass of a branch of :mod:`features.errors`::

    TransportError
    ├── StoreUnavailable
    │   ├── CircuitOpen        the breaker refused the call without touching the store
    │   └── StoreNotReady      the store lost its data or is being rehydrated: incomplete
    ├── StoreTimeout
    │   ├── DeadlineExceeded   the request's budget ran out before (or between) store calls
    │   └── AbandonedCall      given up at its deadline, still running: slow or dead is known later
    └── StoreRejected          the store answered with an error: permission, script, validation
    BackpressureError
    └── WriteThrottled         the store kept refusing part of a batch; carries the unwritten part

Callers retry ``StoreUnavailable`` and ``StoreTimeout`` (with backoff, within the budget), never
``StoreRejected`` (the same request fails the same way). ``WriteThrottled`` asks the caller to pause
its source and re-submit ``unwritten`` after ``retry_after`` seconds; nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from features.errors import BackpressureError, StoreTimeout, StoreUnavailable, TransportError

if TYPE_CHECKING:
    from regions.tiles import TileWrite


class AbandonedCall(StoreTimeout):
    """A store call given up at its deadline but not cancelled: ``pending`` resolves when the
    store answers or fails. Only then is it known whether the store is slow (a box short of CPU)
    or dead, which is what a circuit breaker needs to know (``serve_apps.fallback``)."""

    def __init__(self, message: str, pending: asyncio.Future[Any]) -> None:
        super().__init__(message)
        self.pending = pending
        pending.add_done_callback(consume_outcome)


def consume_outcome(call: asyncio.Future[Any]) -> None:
    """Done-callback for a call nobody awaits any more: reading its outcome keeps asyncio from
    logging "exception was never retrieved" for every late failure."""
    if not call.cancelled():
        call.exception()


class CircuitOpen(StoreUnavailable):
    """The breaker of ``store`` is open; the next probe is allowed in ``retry_after`` seconds."""

    def __init__(self, store: str, retry_after: float) -> None:
        super().__init__(f"{store}: circuit open, next probe in {retry_after:.3f}s")
        self.store = store
        self.retry_after = retry_after


class StoreNotReady(StoreUnavailable):
    """The store answers but does not hold the complete state (emptied by a restart on a lost
    disk, or still being rehydrated from the changelog): read elsewhere; a sink must rehydrate it.
    """


class DeadlineExceeded(StoreTimeout):
    """The request's time budget is spent; no store call was (or will be) attempted for it."""


class StoreRejected(TransportError):
    """The store answered with an error reply. Not retryable: the same call fails the same way."""


class WriteThrottled(BackpressureError):
    """Part of a batch was still refused after every retry. ``unwritten`` lists exactly that part.

    Re-submitting ``unwritten`` is safe: writes are idempotent for the same (key, field, version).
    """

    def __init__(self, store: str, unwritten: Sequence[TileWrite], retry_after: float) -> None:
        super().__init__(retry_after, f"{store}: {len(unwritten)} tile writes not accepted")
        self.store = store
        self.unwritten: tuple[TileWrite, ...] = tuple(unwritten)
