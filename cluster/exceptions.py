"""Errors of the local stack. All derive from :class:`features.errors.StackError`::

StackError
├── MissingTool          java, mvn, redis-server or moto_server is not installed
├── PortInUse            a configured port is held by a process the stack did not start
├── ProcessStartFailed   a service process exited during start-up
└── NotReady             a service started but did not answer its readiness probe in time
"""

from __future__ import annotations

from pathlib import Path

from features.errors import StackError


class MissingTool(StackError):
    def __init__(self, tool: str, how_to_install: str) -> None:
        super().__init__(f"{tool} is not installed; {how_to_install}")
        self.tool = tool


class PortInUse(StackError):
    def __init__(self, service: str, port: int, holder: str) -> None:
        super().__init__(
            f"{service} needs port {port}, but it is taken by {holder}; stop that process or set "
            f"another port (see docs/operations.md)"
        )
        self.service = service
        self.port = port


class ProcessStartFailed(StackError):
    def __init__(self, service: str, exit_code: int | None, log_file: Path) -> None:
        super().__init__(f"{service} exited during start-up (code {exit_code}); see {log_file}")
        self.service = service
        self.log_file = log_file


class NotReady(StackError):
    def __init__(self, service: str, waited_s: float, log_file: Path, last_error: str = "") -> None:
        detail = f": {last_error}" if last_error else ""
        super().__init__(
            f"{service} did not become ready within {waited_s:.0f}s{detail}; see {log_file}"
        )
        self.service = service
        self.log_file = log_file
