"""Stack lifecycle on a dedicated stack (no Ray, to keep it quick): idempotent up, status after a
kill, restart of what died, clean down, and a clear error for a port taken by someone else."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.exceptions import PortInUse
from cluster.process import wait_until
from cluster.stack import Stack
from regions.config import RegionTopology
from tests.integration.conftest import isolated_settings, stack_env

pytestmark = pytest.mark.integration


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        env={**stack_env(stack.settings), "FRESHLINE_WITH_RAY": "0"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_lifecycle_up_twice_kill_status_restart_down(tmp_path: Path) -> None:
    stack = Stack.build(isolated_settings(tmp_path, with_ray=False), environ={})
    try:
        first = {s.name: s.pid for s in stack.up()}
        assert all(pid is not None for name, pid in first.items() if name != "iceberg")
        assert {s.name: s.pid for s in stack.up()} == first, "a second up must not restart anything"

        victim = stack.service("redis-eu-west")
        os.kill(first["redis-eu-west"], signal.SIGKILL)
        assert wait_until(lambda: not victim.status().healthy, 10)
        result = _cli(stack, "stack", "status", "--json")
        assert result.returncode == 3, result.stderr
        by_name = {row["name"]: row for row in json.loads(result.stdout)}
        assert by_name["redis-eu-west"]["healthy"] is False
        assert by_name["redis-eu-west"]["state"] == "down", "a dead process frees its port"
        assert by_name["redis-us-east"]["healthy"] is True

        result = _cli(stack, "stack", "up", "--json")
        assert result.returncode == 0, result.stderr
        after = {s.name: s for s in stack.status()}
        assert (
            after["redis-eu-west"].healthy and after["redis-eu-west"].pid != first["redis-eu-west"]
        )
        assert after["kafka"].pid == first["kafka"], "healthy services are left alone"
    finally:
        stack.down()
    pids = [p for p in first.values() if p is not None]
    assert all(not Path(f"/proc/{pid}").exists() or _is_zombie(pid) for pid in pids)
    assert all(s.pid is None and not s.healthy for s in stack.status() if s.name != "iceberg")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_port_taken_by_another_process_gives_an_error_naming_it(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path, with_ray=False)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    east, west = settings.topology.regions
    topology = RegionTopology(regions=(east.model_copy(update={"redis_port": taken}), west))
    settings = settings.model_copy(update={"topology": topology})
    stack = Stack.build(settings, environ={})
    try:
        with pytest.raises(PortInUse) as caught:
            stack.service("redis-us-east").start()
        assert str(taken) in str(caught.value) and "redis-us-east" in str(caught.value)
    finally:
        squatter.close()
        stack.down(purge=True)
