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
