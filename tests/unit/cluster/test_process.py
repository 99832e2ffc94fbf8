from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from cluster.exceptions import PortInUse
from cluster.process import ManagedProcess, require_free_port, wait_until
from cluster.services.base import Port, ProcessService, Service
from cluster.settings import Secrets, StackSettings
from cluster.stack import Stack

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_spawned_process_is_tracked_and_stopped(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", tmp_path / "run", tmp_path / "logs")
    pid = proc.spawn(SLEEPER)
    assert proc.pid() == pid
    assert proc.stop(timeout_s=5)
    assert proc.pid() is None
    assert not proc.pid_file.exists()
    assert not proc.stop(), "stopping twice is harmless and reports nothing stopped"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by its new parent


def test_what_a_service_left_in_its_process_group_is_stopped_with_it(tmp_path: Path) -> None:
    """Ray's agents once outlived their head: a stop must not leave the service's children."""
    proc = ManagedProcess("parent", tmp_path / "run", tmp_path / "logs")
    child_file = tmp_path / "child.pid"
    proc.spawn(["sh", "-c", f"sleep 60 & echo $! > {child_file}; exec sleep 60"])
    assert wait_until(lambda: child_file.exists() and child_file.read_text().strip() != "", 5)
    child = int(child_file.read_text())
    assert _alive(child)
    assert proc.stop(timeout_s=5)
    assert wait_until(lambda: not _alive(child), 5), "the child in the service's group was left"


def test_a_reused_pid_is_not_mistaken_for_ours(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", tmp_path / "run", tmp_path / "logs")
    pid = proc.spawn(SLEEPER)
    try:
        record = json.loads(proc.pid_file.read_text())
        record["start_ticks"] -= 1  # same pid, different process start time
        proc.pid_file.write_text(json.dumps(record))
        assert proc.pid() is None
        assert not proc.stop(), "must not signal a process it did not start"
        assert Path(f"/proc/{pid}").exists()
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_process_that_dies_is_reported_dead(tmp_path: Path) -> None:
    proc = ManagedProcess("quick", tmp_path / "run", tmp_path / "logs")
    proc.spawn([sys.executable, "-c", "print('bye')"])
    assert wait_until(lambda: proc.pid() is None, 10)
    assert "bye" in proc.log_file.read_text()


def test_a_taken_port_is_reported_with_the_service_name() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(PortInUse, match=f"redis-us-east needs port {port}"):
            require_free_port("redis-us-east", "127.0.0.1", port)


class _Recording:
    """A stand-in for ManagedProcess that records how long it was told to wait."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def stop(self, timeout_s: float = 20.0) -> bool:
        self.timeouts.append(timeout_s)
        return True


class _Slow(ProcessService):
    kind = "test"
    ready_timeout_s = 1.0
    stop_timeout_s = 45.0  # Ray's head drains up to 30 s on SIGTERM
    purged = False

    @property
    def endpoint(self) -> str:
        return "nowhere"

    def ports(self) -> list[Port]:
        return []

    def launch(self) -> None:
        raise AssertionError("not started in this test")

    def probe(self) -> str | None:
        return None

    def purge(self) -> None:
        self.purged = True


def test_a_purged_stack_kills_its_services_instead_of_waiting_for_their_shutdown(
    tmp_path: Path,
) -> None:
    procs = [_Recording(), _Recording()]
    services = tuple(_Slow(f"s{i}", proc) for i, proc in enumerate(procs))  # type: ignore[arg-type]
    stack_services: tuple[Service, ...] = services
    settings = StackSettings(state_dir=tmp_path)
    secrets = Secrets(
        redis_admin_password=SecretStr("a"),
        redis_writer_password=SecretStr("w"),
        redis_reader_password=SecretStr("r"),
    )
    stack = Stack(settings, secrets, stack_services)
    assert stack.down() == ["s1", "s0"], "stopped in reverse start order"
    assert [p.timeouts for p in procs] == [[45.0], [45.0]], "a plain down waits for a clean stop"
    stack.down(purge=True)
    assert [p.timeouts[-1] for p in procs] == [0.0, 0.0], "data about to be deleted: no grace"
    assert all(service.purged for service in services)
