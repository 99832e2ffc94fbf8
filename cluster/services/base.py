"""What every stack service looks like to the orchestrator in ``cluster.stack``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cluster.exceptions import NotReady, ProcessStartFailed


@dataclass(frozen=True)
class ServiceStatus:
    """A point-in-time view of one service, as ``freshline stack status --json`` prints it."""

    name: str
    kind: str
    endpoint: str
    pid: int | None
    healthy: bool
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "endpoint": self.endpoint,
            "pid": self.pid,
            "healthy": self.healthy,
            "detail": self.detail,
        }


class Service(Protocol):
    """A service the stack manages. ``start`` is idempotent: a no-op when already healthy."""

    name: str

    def status(self) -> ServiceStatus: ...

    def start(self) -> None: ...

    def stop(self) -> bool: ...

    def purge(self) -> None: ...


def wait_ready(
    name: str,
    probe: Callable[[], str | None],
    timeout_s: float,
    log_file: Path,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``probe`` (None means ready, a string is the last error) until ready or timeout.

    Fails fast when ``alive`` says the process already exited, instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        error = probe()
        if error is None:
            return
        last = error
        if alive is not None and not alive():
            raise ProcessStartFailed(name, None, log_file)
        time.sleep(0.25)
    raise NotReady(name, timeout_s, log_file, last)
