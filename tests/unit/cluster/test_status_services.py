"""The start and status logic every process-backed service shares (``ProcessService``)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from cluster.exceptions import NotReady, PortInUse, ProcessStartFailed
from cluster.process import ManagedProcess
from cluster.services.base import Port, ProcessService


class _Toy(ProcessService):
    """A service whose process "answers" once it has written its ready file."""

    kind = "toy"
    ready_timeout_s = 10.0
    stop_timeout_s = 5.0

    def __init__(self, tmp: Path, script: str, port: int) -> None:
        super().__init__("toy", ManagedProcess("toy", tmp / "run", tmp / "logs"))
        self.ready_file = tmp / "ready"
        self._script = script
        self._port = port
        self.launches = 0
        self.set_up = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self._port}"

    def ports(self) -> list[Port]:
        return [Port("toy port", "127.0.0.1", self._port)]

    def probe(self) -> str | None:
        return None if self.ready_file.exists() else "no ready file"

    def launch(self) -> None:
        self.launches += 1
        script = self._script.format(ready=str(self.ready_file))
        self._proc.spawn([sys.executable, "-c", script])

    def after_ready(self) -> None:
        self.set_up += 1

    def purge(self) -> None:
        """Nothing kept."""


class _Impatient(_Toy):
    ready_timeout_s = 0.5


ANSWERS = "import time; open({ready!r}, 'w').close(); time.sleep(60)"
NEVER_ANSWERS = "import time; time.sleep(60)"
EXITS = "print('config error: no such file'); raise SystemExit(2)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_start_waits_until_healthy_and_a_second_start_leaves_it_alone(tmp_path: Path) -> None:
    toy = _Toy(tmp_path, ANSWERS, _free_port())
    try:
        toy.start()
        first = toy.status()
        assert first.state == "healthy" and first.pid is not None
        toy.start()
        assert (toy.launches, toy.set_up) == (1, 2), "no relaunch; set-up runs on every start"
        assert toy.status().pid == first.pid
    finally:
        assert toy.stop()
    assert toy.status().state == "down"


def test_a_process_that_exits_during_start_names_its_log_file(tmp_path: Path) -> None:
    toy = _Toy(tmp_path, EXITS, _free_port())
    with pytest.raises(ProcessStartFailed) as caught:
        toy.start()
    assert str(toy.process.log_file) in str(caught.value)
    assert "config error" in toy.process.log_file.read_text()


def test_a_process_that_never_answers_times_out_naming_its_log_file(tmp_path: Path) -> None:
    toy = _Impatient(tmp_path, NEVER_ANSWERS, _free_port())
    try:
        with pytest.raises(NotReady) as caught:
            toy.start()
        assert str(toy.process.log_file) in str(caught.value)
        assert "no ready file" in str(caught.value)
        assert toy.status().state == "unhealthy", "alive but not answering"
    finally:
        toy.stop()


def test_start_refuses_a_port_held_by_someone_else_before_launching(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = int(squatter.getsockname()[1])
        toy = _Toy(tmp_path, ANSWERS, port)
        assert toy.status().state == "foreign"
        with pytest.raises(PortInUse, match=f"toy port needs port {port}"):
            toy.start()
    assert toy.launches == 0
    assert not toy.process.run_dir.exists(), "nothing written for a refused start"
