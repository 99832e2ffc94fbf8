from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from cluster.exceptions import PortInUse
from cluster.process import ManagedProcess, require_free_port, wait_until

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
