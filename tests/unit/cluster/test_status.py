"""`freshline stack status` judges services from its own state dir and writes nothing.

A port held by a process this state dir did not start is ``foreign``, never healthy, whatever
answers there; the serving apps count only on this state dir's own Ray head, with its key file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from cluster import cli
from cluster.isolated import free_ports, isolated_settings
from cluster.process import ManagedProcess
from cluster.secrets import read_secrets
from cluster.services.base import ServiceStatus
from cluster.services.ray_head import head_process
from cluster.services.redis import RedisService
from cluster.serving import ServingService, api_key_file
from cluster.settings import Secrets, StackSettings
from cluster.settings_env import settings_to_env
from cluster.stack import Stack
from regions.config import default_topology

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
SECRETS = Secrets(
    redis_admin_password=SecretStr("a"),
    redis_writer_password=SecretStr("w"),
    redis_reader_password=SecretStr("r"),
)


def _settings(state_dir: Path, *, serve_port: int | None = None) -> StackSettings:
    settings = isolated_settings(state_dir, with_ray=True)
    if serve_port is not None:
        ray = settings.ray.model_copy(update={"serve_port": serve_port})
        settings = settings.model_copy(update={"ray": ray})
    return settings.model_copy(update={"with_serving": True})


@contextlib.contextmanager
def _listener() -> Iterator[int]:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield int(squatter.getsockname()[1])


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is not the place for access logs."""


@contextlib.contextmanager
def _apps_answering() -> Iterator[int]:
    """An HTTP server answering 200 to every path, as healthy region apps do on /v1/health."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_held_by_a_process_we_did_not_start_is_foreign_with_its_pid(
    tmp_path: Path,
) -> None:
    with _listener() as port:
        settings = _settings(tmp_path)
        (other,) = free_ports(1, avoid={p for _, p in settings.listeners()})
        settings = settings.model_copy(
            update={"topology": default_topology(redis_ports=(port, other))}
        )
        east = settings.topology.regions[0]
        status = RedisService(settings, east, SECRETS).status()
        assert status.state == "foreign" and not status.healthy
        assert status.pid is None, "the squatter is not our process"
        assert status.holder_pid == os.getpid()
        assert f"port {port}" in status.detail and "did not start" in status.detail
    assert RedisService(settings, east, SECRETS).status().state == "down"


def test_serving_that_answers_without_our_head_is_foreign_not_healthy(tmp_path: Path) -> None:
    with _apps_answering() as port:
        settings = _settings(tmp_path, serve_port=port)
        api_key_file(settings).write_text("fl_key")  # even with a key file: the head is not ours
        status = ServingService(settings).status()
        assert status.state == "foreign"
        assert status.holder_pid == os.getpid()


def test_serving_is_healthy_only_on_our_head_and_with_the_api_key_file(tmp_path: Path) -> None:
    with _apps_answering() as port:
        settings = _settings(tmp_path, serve_port=port)
        head = head_process(settings)
        head.spawn(SLEEPER)
        try:
            service = ServingService(settings, head)
            without_key = service.status()
            assert without_key.state == "unhealthy"
            assert str(api_key_file(settings)) in without_key.detail
            api_key_file(settings).write_text("fl_key")
            assert service.status().state == "healthy"
        finally:
            head.stop(timeout_s=5)
        assert service.status().state == "foreign", "apps answering after our head stopped"


def test_status_of_a_fresh_state_dir_writes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "never-created"
    stack = Stack.build(_settings(missing), environ={}, create_secrets=False)
    statuses = stack.status()
    names = [s.name for s in statuses][-4:]
    assert names == ["ray-head", "serving", "front-door-us-east", "front-door-eu-west"]
    assert {s.state for s in statuses} == {"down"}
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    Stack.build(_settings(empty), environ={}, create_secrets=False).status()
    assert list(empty.iterdir()) == []


def test_the_status_command_writes_nothing_and_exits_3_when_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "fresh"
    for var, value in settings_to_env(_settings(state_dir)).items():
        monkeypatch.setenv(var, value)
    assert cli.main(["stack", "status", "--json"]) == cli.EXIT_UNHEALTHY == 3
    rows = json.loads(capsys.readouterr().out)
    assert {row["state"] for row in rows} == {"down"}
    assert not any(row["healthy"] for row in rows)
    assert not state_dir.exists(), "status created files in the state dir"


def _status(state: str) -> ServiceStatus:
    return ServiceStatus("svc", "kind", "endpoint", None, state)  # type: ignore[arg-type]


def test_exit_code_is_0_healthy_3_not_ours_to_start_yet_4_for_a_foreign_port() -> None:
    assert cli.status_exit_code([_status("healthy"), _status("healthy")]) == 0
    assert cli.status_exit_code([_status("healthy"), _status("down")]) == 3
    assert cli.status_exit_code([_status("unhealthy")]) == 3
    assert cli.status_exit_code([_status("down"), _status("foreign")]) == cli.EXIT_FOREIGN == 4


def test_reading_secrets_takes_the_environment_then_the_file_and_writes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secrets.json"
    blank = read_secrets(path, {})
    assert blank.redis_admin_password.get_secret_value() == ""
    assert not path.exists()
    path.write_text(json.dumps({"redis_admin_password": "from-file"}))
    env = {"FRESHLINE_REDIS_READER_PASSWORD": "from-env"}
    read = read_secrets(path, env)
    assert read.redis_admin_password.get_secret_value() == "from-file"
    assert read.redis_reader_password.get_secret_value() == "from-env"
    assert json.loads(path.read_text()) == {"redis_admin_password": "from-file"}


def test_a_managed_process_alive_is_ours_and_its_status_probes_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    east = settings.topology.regions[0]
    service = RedisService(settings, east, SECRETS)
    assert isinstance(service.process, ManagedProcess)
    service.process.spawn(SLEEPER)  # alive, but no Redis answers on its port
    try:
        status = service.status()
        assert status.state == "unhealthy"
        assert status.pid is not None and status.holder_pid is None
    finally:
        service.process.stop(timeout_s=5)
