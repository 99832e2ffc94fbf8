"""A local Ray head, started with ``ray start --head --block`` so that it is one tracked process.

``--block`` keeps a supervising process in the foreground; SIGTERM to it stops the head's GCS,
raylet and dashboard, which is how ``stack down`` stops Ray without ``ray stop`` (which would
find processes by name and could stop another user's cluster). The dashboard serves the Jobs API,
so ``ray job submit --address http://127.0.0.1:8265`` works exactly as on a remote cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import urllib.request
from pathlib import Path

from cluster.exceptions import MissingTool
from cluster.process import ManagedProcess, free_port, port_holder, wait_until
from cluster.services.base import Port, ProcessService
from cluster.settings import StackSettings


def head_process(settings: StackSettings) -> ManagedProcess:
    """The head's tracked process in this state dir (serving's status asks it too)."""
    return ManagedProcess("ray-head", settings.run_dir, settings.log_dir)


def ray_binary() -> str:
    """The ``ray`` CLI of the interpreter running Freshline."""
    beside = Path(sys.executable).parent / "ray"
    ray = str(beside) if beside.exists() else shutil.which("ray")
    if ray is None:
        raise MissingTool(
            "ray", "install the project: `pip install -e .` (it brings ray[serve,data])"
        )
    return ray


class RayHeadService(ProcessService):
    kind = "ray"
    ready_timeout_s = 120.0
    # `ray start --block` drains for up to 30 s on SIGTERM, then stops its own processes:
    # give it that and the shutdown, rather than SIGKILL it in the middle of it.
    stop_timeout_s = 45.0

    def __init__(self, settings: StackSettings) -> None:
        super().__init__("ray-head", head_process(settings))
        self._settings = settings
        self._ray = settings.ray

    @property
    def endpoint(self) -> str:
        return self._ray.dashboard_url

    def ports(self) -> list[Port]:
        r = self._ray
        return [
            Port("ray gcs", "127.0.0.1", r.port),
            Port("ray dashboard", "127.0.0.1", r.dashboard_port),
            Port("ray client server", "127.0.0.1", r.client_server_port),
            Port("ray metrics", "127.0.0.1", r.metrics_export_port),
            Port("ray dashboard agent", "127.0.0.1", r.dashboard_agent_port),
        ]

    def describe(self) -> str:
        return f"GCS {self._ray.address}, {self._ray.num_cpus} CPUs, ingress {self._ray.ingress}"

    def launch(self) -> None:
        self._proc.spawn(self._argv(), env=self.node_env())

    def stop(self, *, graceful: bool = True) -> bool:
        stopped = super().stop(graceful=graceful)
        stop_orphaned_ingress(self._ray.serve_port)
        return stopped

    def purge(self) -> None:
        shutil.rmtree(self._settings.ray_temp_dir, ignore_errors=True)

    def _argv(self) -> list[str]:
        r = self._ray
        return [
            ray_binary(),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            f"--port={r.port}",
            f"--dashboard-port={r.dashboard_port}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            f"--ray-client-server-port={r.client_server_port}",
            f"--min-worker-port={r.min_worker_port}",
            f"--max-worker-port={r.max_worker_port}",
            f"--metrics-export-port={r.metrics_export_port}",
            f"--dashboard-agent-listen-port={r.dashboard_agent_port}",
            f"--num-cpus={r.num_cpus}",
            f"--object-store-memory={r.object_store_mb * 1024 * 1024}",
            f"--temp-dir={self._settings.ray_temp_dir}",
        ]

    def node_env(self) -> dict[str, str]:
        """The environment of every Ray node of this stack, the head and the worker nodes beside
        it (cluster/services/ray_worker.py): actors and replicas run wherever Ray places them."""
        import os

        env = {**os.environ, **self._ray.client_env()}
        # Jobs run `python ...` on the head: it must be the interpreter with Freshline installed.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.update(self.ingress_env())
        return env

    def ingress_env(self) -> dict[str, str]:
        """The RAY_SERVE_* switches of the configured ingress (read by Serve at import time in
        the controller and replicas, which inherit the head's environment). HAProxy's stats and
        metrics ports are this head's own, so that two heads on one machine both start, and so are
        the replicas' port range and the fallback proxy's port, so that neither head's ingress
        routes to the other's replicas or proxy. ``serve_drain_s``, when set, is how long a stopping
        replica keeps answering behind the ingress."""
        from serve_apps.deploy import INGRESS_MODES

        env = dict(INGRESS_MODES[self._ray.ingress])
        if "RAY_SERVE_ENABLE_HA_PROXY" in env:
            haproxy = shutil.which("haproxy")
            if haproxy is None:
                raise MissingTool("haproxy", "apt-get install -y haproxy (or run `make setup`)")
            env["RAY_SERVE_HAPROXY_BINARY_PATH"] = haproxy
            r = self._ray
            env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(r.haproxy_stats_port or free_port())
            env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(r.haproxy_metrics_port or free_port())
            env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] = str(r.fallback_proxy_port or free_port())
            env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(r.ingress_ports[0])
            env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(r.ingress_ports[1])
        if self._ray.serve_drain_s is not None:
            env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(self._ray.serve_drain_s)
        return env

    def probe(self) -> str | None:
        try:
            with urllib.request.urlopen(  # noqa: S310 - a fixed http://127.0.0.1 URL
                f"{self._ray.dashboard_url}/api/version", timeout=2.0
            ) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"


def stop_orphaned_ingress(serve_port: int) -> bool:
    """Kill Serve's HAProxy if it still holds ``serve_port`` once the head is gone. Serve starts
    it from an actor, outside the head's process group, and a reload re-executes it (``-sf``):
    after ``stack down --purge`` killed the head, such a HAProxy lived on as an orphan holding
    the port, and the next stack's Serve could not bind it. Only a process whose command line
    names Serve's HAProxy config directory is touched. Returns whether one was killed."""
    holder = port_holder("127.0.0.1", serve_port)
    if holder is None or holder.pid is None:
        return False
    try:
        argv = Path(f"/proc/{holder.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not argv or not argv[0].endswith(b"haproxy") or not any(_SERVE_HAPROXY in a for a in argv):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(holder.pid, signal.SIGKILL)
    return wait_until(lambda: port_holder("127.0.0.1", serve_port) is None, 5.0)


_SERVE_HAPROXY = b"/haproxy-serve/"  # where Ray Serve writes its HAProxy config
