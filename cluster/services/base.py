"""What every stack service looks like to the orchestrator in ``cluster.stack``, and the status and
start logic shared by the services that run as one tracked process.

A service's state is judged from one state directory (its pid files), never from a port alone:

- ``healthy``: the process this state dir started is alive and answers its probe.
- ``unhealthy``: that process is alive but does not answer (starting, hung, stopped by a drill).
- ``down``: no process of this state dir, and the service's ports are free.
- ``foreign``: no process of this state dir, but a port of the service is held by a process it did
  not start (another stack, another program). Whatever answers there is not ours: it is never
  reported healthy, and ``stack up`` would refuse to start beside it (PortInUse).

Reading a status writes nothing: no pid file, no log folder, no secrets.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Protocol

from cluster.exceptions import NotReady, ProcessStartFailed
from cluster.process import ManagedProcess, port_holder, require_free_port

ServiceState = Literal["healthy", "unhealthy", "down", "foreign"]


@dataclass(frozen=True)
class ServiceStatus:
    """A point-in-time view of one service, as ``freshline stack status --json`` prints it.

    ``pid`` is the process this state dir started (None if none is alive); ``holder_pid`` is the
    process holding the port of a ``foreign`` service, when the OS tells who it is."""

    name: str
    kind: str
    endpoint: str
    pid: int | None
    state: ServiceState
    detail: str = ""
    holder_pid: int | None = None

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "endpoint": self.endpoint,
            "state": self.state,
            "healthy": self.healthy,
            "pid": self.pid,
            "holder_pid": self.holder_pid,
            "detail": self.detail,
        }


class Service(Protocol):
    """A service the stack manages. ``start`` is idempotent: a no-op when already healthy."""

    name: str

    def status(self) -> ServiceStatus: ...

    def start(self) -> None: ...

    def stop(self, *, graceful: bool = True) -> bool:
        """Stop it; ``graceful=False`` when its data is about to be purged: nothing it could
        flush or hand over on the way down would be kept, so it is killed at once."""
        ...

    def purge(self) -> None: ...


@dataclass(frozen=True)
class Port:
    """A port a service binds, with the label a PortInUse error names."""

    label: str
    host: str
    number: int


def status_without_process(
    name: str, kind: str, endpoint: str, ports: Sequence[Port]
) -> ServiceStatus:
    """The status of a service none of whose processes this state dir has alive: ``foreign`` if
    one of its ports is held (by whom, if known), else ``down``. Nothing is probed: an answer on a
    port we do not own would be someone else's."""
    for port in ports:
        holder = port_holder(port.host, port.number)
        if holder is not None:
            detail = (
                f"port {port.number} ({port.label}) is held by {holder}, "
                "which this state dir did not start"
            )
            return ServiceStatus(name, kind, endpoint, None, "foreign", detail, holder.pid)
    return ServiceStatus(name, kind, endpoint, None, "down", "not running")


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


class ProcessService(ABC):
    """A service that is one process tracked by a pid file in the state dir (Kafka, Redis, moto,
    the Ray head). Subclasses say how to launch it, which ports it binds and how to probe it;
    this class owns the shared status and start logic."""

    kind: ClassVar[str]
    ready_timeout_s: ClassVar[float]
    stop_timeout_s: ClassVar[float]

    def __init__(self, name: str, process: ManagedProcess) -> None:
        self.name = name
        self._proc = process

    @property
    def process(self) -> ManagedProcess:
        return self._proc

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """Where clients reach the service, as status shows it."""

    @abstractmethod
    def ports(self) -> Sequence[Port]:
        """Every port the process binds: checked free before a start, and for a foreign holder."""

    @abstractmethod
    def probe(self) -> str | None:
        """None when the service answers, else the error (one line). Never raises."""

    @abstractmethod
    def launch(self) -> None:
        """Spawn the process through ``self.process`` (its ports are known to be free)."""

    def describe(self) -> str:
        """The status detail of a healthy service."""
        return ""

    def after_ready(self) -> None:  # noqa: B027 - an optional hook, not a missing method
        """Idempotent set-up once the service answers (topics, tables); runs on every start."""

    def status(self) -> ServiceStatus:
        pid = self._proc.pid()
        if pid is None:
            return status_without_process(self.name, self.kind, self.endpoint, self.ports())
        error = self.probe()
        if error is not None:
            return ServiceStatus(self.name, self.kind, self.endpoint, pid, "unhealthy", error)
        return ServiceStatus(self.name, self.kind, self.endpoint, pid, "healthy", self.describe())

    def is_up(self) -> bool:
        """Our process is alive and answers."""
        return self._proc.pid() is not None and self.probe() is None

    def start(self) -> None:
        """Leave a healthy process alone; otherwise stop what is left of ours, check the ports,
        launch, and wait until it answers (ProcessStartFailed or NotReady name the log file)."""
        if not self.is_up():
            self._proc.stop()
            for port in self.ports():
                require_free_port(port.label, port.host, port.number)
            self.launch()
            wait_ready(
                self.name,
                self.probe,
                self.ready_timeout_s,
                self._proc.log_file,
                lambda: self._proc.pid() is not None,
            )
        self.after_ready()

    def stop(self, *, graceful: bool = True) -> bool:
        return self._proc.stop(timeout_s=self.stop_timeout_s if graceful else 0.0)
