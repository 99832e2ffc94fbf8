"""A replica's own log records reach Serve's replica log at once, not after 1,000 more."""

from __future__ import annotations

import io
import logging
import logging.handlers
from collections.abc import Iterator

import pytest

from serve_apps.app import adopt_serve_logging


class _Tag(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.replica = "us-east#abc"  # what Serve's context filters add
        return True


@pytest.fixture
def serve_log() -> Iterator[io.StringIO]:
    """Serve's replica logging as throughput-optimised mode sets it up: a 1,000-record buffer
    that flushes on ERROR, with context filters, in front of the log file."""
    out = io.StringIO()
    target = logging.StreamHandler(out)
    target.setFormatter(logging.Formatter("%(levelname)s %(replica)s %(name)s %(message)s"))
    buffered = logging.handlers.MemoryHandler(1_000, logging.ERROR, target)
    buffered.addFilter(_Tag())
    serve = logging.getLogger("ray.serve")
    saved = serve.handlers
    serve.handlers = [buffered]
    try:
        yield out
    finally:
        serve.handlers = saved
        for name in ("test_serve_pkg", "test_serve_pkg.fallback"):
            logging.getLogger(name).handlers = []


def test_a_warning_is_in_the_replica_log_at_once_with_serves_context(
    serve_log: io.StringIO,
) -> None:
    adopt_serve_logging("INFO", package="test_serve_pkg")
    logging.getLogger("test_serve_pkg.fallback").warning("store redis-us-east failed")
    assert serve_log.getvalue() == (
        "WARNING us-east#abc test_serve_pkg.fallback store redis-us-east failed\n"
    )
    logging.getLogger("test_serve_pkg.fallback").debug("below the level")
    assert serve_log.getvalue().count("\n") == 1
