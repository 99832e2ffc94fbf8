"""Processes the stack starts, tracked by pid files, never by process name.

A pid file holds the pid *and* the process start time (field 22 of ``/proc/<pid>/stat``), so a pid
reused by an unrelated process after a crash is never mistaken for ours and never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.exceptions import PortInUse, ProcessStartFailed


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses; split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if no such live process."""
    fields = _proc_stat(pid)
    if fields is None or fields[0] in {"Z", "X"}:
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    # A child of ours that died stays a zombie until waited for; reap it so it is not "alive".
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True)
class ManagedProcess:
    """One long-running service process with its pid file and log file."""

    name: str
    run_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid if our process is alive (same pid and same start time as recorded), else None."""
        try:
            record = json.loads(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        pid, ticks = int(record["pid"]), int(record["start_ticks"])
        _reap(pid)
        return pid if process_start_ticks(pid) == ticks else None

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Start ``argv`` in its own session, output appended to the log file; record the pid."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} start {argv[0]}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C in the terminal must not kill the services
            )
        ticks = process_start_ticks(proc.pid)
        if ticks is None:
            raise ProcessStartFailed(self.name, proc.wait(), self.log_file)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "start_ticks": ticks, "argv": list(argv)}))
        tmp.replace(self.pid_file)
        return proc.pid

    def signal(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to our process if it is alive; returns whether it was sent."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, sig)
        return True

    def stop(self, timeout_s: float = 20.0) -> bool:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL. Returns whether one was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a SIGSTOPped process (chaos drill) cannot handle TERM
            os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: self.pid() is None, timeout_s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: self.pid() is None, 5.0)
        # The service ran in its own session, so its process group is its own: whatever it left
        # behind there (Ray's agents outlived a head SIGKILLed mid-drain) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``condition`` until it is true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class PortHolder:
    """The process listening on a port, as far as ``ss`` can see it: the pid and command of a
    process of the same user (or any, as root); both unknown otherwise."""

    pid: int | None
    command: str | None

    def __str__(self) -> str:
        if self.pid is None:
            return "an unknown process"
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def port_holder(host: str, port: int) -> PortHolder | None:
    """None when ``host:port`` can be bound; else who listens on it. Reads only."""
    if port_is_free(host, port):
        return None
    return _listener(port)


def require_free_port(service: str, host: str, port: int) -> None:
    """Raise PortInUse naming the port, the service that wanted it and who holds it (if known)."""
    holder = port_holder(host, port)
    if holder is not None:
        raise PortInUse(service, port, str(holder))


_SS_USER = re.compile(r'\(\("(?P<command>[^"]*)",pid=(?P<pid>\d+)')


def _listener(port: int) -> PortHolder:
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return PortHolder(None, None)
    found = _SS_USER.search(out)
    if found is None:
        return PortHolder(None, None)
    return PortHolder(int(found["pid"]), found["command"])


def free_port() -> int:
    """A port the OS considers free right now (tests use it to run a stack beside the dev one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
