"""Extra Ray worker nodes (``ray.worker_nodes``): the setting, where they sit in the stack, how
each is started, and how its status is judged (its own raylet, and the head listing it alive).

The real thing (a worker's raylet SIGKILLed mid-stream) is tests/integration/test_multinode.py.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.isolated import isolated_settings
from cluster.process import wait_until
from cluster.services.ray_worker import NODE_LABEL, RayWorkerService, child_named
from cluster.settings import StackSettings
from cluster.settings_env import ENV_VARS, settings_from_env, settings_to_env
from cluster.stack import Stack
from features.errors import ConfigError


def _settings(state_dir: Path, workers: int, dashboard_port: int | None = None) -> StackSettings:
    settings = isolated_settings(state_dir, with_ray=True)
    update: dict[str, int] = {"worker_nodes": workers}
    if dashboard_port is not None:
        update["dashboard_port"] = dashboard_port
    return settings.model_copy(update={"ray": settings.ray.model_copy(update=update)})


def test_no_worker_nodes_by_default_and_the_variable_round_trips(tmp_path: Path) -> None:
    assert settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path)}).ray.worker_nodes == 0
    settings = settings_from_env(
        {"FRESHLINE_STATE_DIR": str(tmp_path), "FRESHLINE_RAY_WORKER_NODES": "2"}
    )
    assert settings.ray.worker_nodes == 2
    assert settings_to_env(settings)["FRESHLINE_RAY_WORKER_NODES"] == "2"
    assert "FRESHLINE_RAY_WORKER_NODES" in {v.name for v in ENV_VARS}


@pytest.mark.parametrize(("raw", "field"), [("-1", "ray.worker_nodes"), ("9", "ray.worker_nodes")])
def test_a_bad_worker_count_is_refused_naming_the_field(raw: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"FRESHLINE_STATE_DIR": "state", "FRESHLINE_RAY_WORKER_NODES": raw})
    assert caught.value.field == field


def test_worker_nodes_start_after_the_head_and_stop_before_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, workers=2).model_copy(update={"with_serving": True})
    names = [s.name for s in Stack.build(settings, environ={}, create_secrets=False).services]
    head = names.index("ray-head")
    assert names[head : head + 4] == ["ray-head", "ray-worker-1", "ray-worker-2", "serving"]
    without_ray = settings.model_copy(update={"with_ray": False, "with_serving": False})
    built = Stack.build(without_ray, environ={}, create_secrets=False)
    assert not [s.name for s in built.services if s.name.startswith("ray-")]


def test_a_worker_joins_the_head_with_its_own_resources_label_and_temp_dir(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, workers=1)
    worker = RayWorkerService(settings, 1)
    argv = worker._argv()
    assert argv[1:4] == ["start", f"--address=127.0.0.1:{settings.ray.port}", "--block"]
    assert "--head" not in argv
    assert f"--labels={NODE_LABEL}=ray-worker-1" in argv
    assert f"--num-cpus={settings.ray.num_cpus}" in argv
    assert f"--temp-dir={settings.ray_temp_dir}-ray-worker-1" in argv
    # Ray's defaults (workers in 10002-19999, the agent at 52365) collide with the head and the
    # stores: the OS chooses the workers' ports, the agent's is picked free.
    assert {"--min-worker-port=0", "--max-worker-port=0"} <= set(argv)
    (agent,) = [a for a in argv if a.startswith("--dashboard-agent-listen-port=")]
    assert int(agent.split("=")[1]) != settings.ray.dashboard_agent_port
    assert worker.ports() == []


@contextlib.contextmanager
def _head_listing(nodes: list[dict[str, object]]) -> Iterator[int]:
    """An HTTP server answering the state API's node list as a head would."""
    body = json.dumps({"data": {"result": {"result": nodes}}}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _fake_node(tmp_path: Path) -> list[str]:
    """A tracked process with a child named ``raylet``, as ``ray start --block`` has."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    raylet = tmp_path / "bin" / "raylet"
    raylet.parent.mkdir(parents=True)
    shutil.copy(sleep, raylet)
    return ["/bin/sh", "-c", f"{raylet} 60 & {sleep} 60 & wait"]


def test_a_worker_is_healthy_only_with_its_raylet_and_the_head_listing_it(tmp_path: Path) -> None:
    ours = {"state": "ALIVE", "labels": {NODE_LABEL: "ray-worker-1"}}
    other = {"state": "ALIVE", "labels": {NODE_LABEL: "ray-worker-2"}}
    with _head_listing([ours, other]) as port:
        worker = RayWorkerService(_settings(tmp_path, 1, dashboard_port=port), 1)
        assert worker.status().state == "down"
        worker.process.spawn(_fake_node(tmp_path))
        try:
            assert wait_until(lambda: worker.raylet_pid() is not None, 10.0)
            assert worker.status().state == "healthy"
            assert child_named(os.getpid(), "raylet") is None, "a grandchild is not ours"
            os.kill(worker.raylet_pid() or 0, 9)
            assert wait_until(lambda: worker.raylet_pid() is None, 10.0)
            status = worker.status()
            assert (status.state, status.detail) == ("unhealthy", "no raylet")
        finally:
            worker.stop()
    with _head_listing([other]) as port:
        lonely = RayWorkerService(_settings(tmp_path, 1, dashboard_port=port), 1)
        lonely.process.spawn(_fake_node(tmp_path / "again"))
        try:
            assert wait_until(lambda: lonely.raylet_pid() is not None, 10.0)
            status = lonely.status()
            assert status.state == "unhealthy"
            assert "not (yet) an alive node" in status.detail
        finally:
            lonely.stop()
