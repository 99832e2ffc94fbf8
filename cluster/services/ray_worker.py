"""Extra Ray worker nodes on this machine (``ray.worker_nodes``), each one tracked process:
``ray start --address <head> --block``.

A worker node is a node like any other to Ray: the head's GCS schedules actors on it and, when it
dies, restarts them elsewhere. It has the head's CPUs and object store, its own temp dir (its own
sockets and logs), OS-chosen ports for everything Ray would otherwise bind at a fixed port (so
that it never collides with the head or another stack), and the node label
``freshline-node=<service name>`` that ``stack status``, the tests and ``ray list nodes`` name it
by. ``--block`` keeps a supervising process in the foreground, as for the head: SIGTERM to it
stops the node's raylet and agents, and when the raylet dies (a drill's SIGKILL) it stops the
rest and exits, so the service reads ``down``.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from cluster.process import ManagedProcess, free_port
from cluster.services.base import Port, ProcessService
from cluster.services.ray_head import RayHeadService, ray_binary
from cluster.settings import StackSettings

NODE_LABEL = "freshline-node"
_RAYLET = "raylet"


def worker_name(index: int) -> str:
    """The service (and node label) name of the ``index``-th worker node, from 1."""
    return f"ray-worker-{index}"


def worker_services(settings: StackSettings) -> list[RayWorkerService]:
    return [RayWorkerService(settings, i) for i in range(1, settings.ray.worker_nodes + 1)]


class RayWorkerService(ProcessService):
    kind = "ray"
    ready_timeout_s = 120.0
    # Like the head: `ray start --block` stops its own processes on SIGTERM; let it finish.
    stop_timeout_s = 45.0

    def __init__(self, settings: StackSettings, index: int) -> None:
        name = worker_name(index)
        super().__init__(name, ManagedProcess(name, settings.run_dir, settings.log_dir))
        self._settings = settings
        self._ray = settings.ray

    @property
    def endpoint(self) -> str:
        return f"{NODE_LABEL}={self.name} -> {self._ray.address}"

    @property
    def temp_dir(self) -> Path:
        # Beside the head's short temp dir: Ray's unix socket paths must stay under 107 bytes.
        return Path(f"{self._settings.ray_temp_dir}-{self.name}")

    def ports(self) -> list[Port]:
        """None fixed: every listener of a worker node is OS-chosen or picked free at launch."""
        return []

    def describe(self) -> str:
        return f"joined {self._ray.address}, {self._ray.num_cpus} CPUs, raylet {self.raylet_pid()}"

    def launch(self) -> None:
        self._proc.spawn(self._argv(), env=RayHeadService(self._settings).node_env())

    def purge(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _argv(self) -> list[str]:
        r = self._ray
        return [
            ray_binary(),
            "start",
            f"--address={r.address}",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            f"--node-name={self.name}",
            f"--labels={NODE_LABEL}={self.name}",
            f"--num-cpus={r.num_cpus}",
            f"--object-store-memory={r.object_store_mb * 1024 * 1024}",
            # Ray's defaults would bind workers in 10002-19999 (Kafka's and Redis's ports) and the
            # dashboard agent at the head's 52365; 0 lets the OS choose each worker's port.
            "--min-worker-port=0",
            "--max-worker-port=0",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
        ]

    def raylet_pid(self) -> int | None:
        """The pid of this node's raylet (a child of the tracked ``ray start`` process), or None.
        Found by parent pid, never by name across the machine: another stack's raylets are not
        ours."""
        parent = self._proc.pid()
        return None if parent is None else child_named(parent, _RAYLET)

    def probe(self) -> str | None:
        """Healthy when the raylet runs and the head's GCS lists this node alive."""
        if self.raylet_pid() is None:
            return "no raylet"
        try:
            nodes = alive_nodes(self._ray.dashboard_url)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        if not any(n.get("labels", {}).get(NODE_LABEL) == self.name for n in nodes):
            return f"not (yet) an alive node of {self._ray.address}"
        return None


def alive_nodes(dashboard_url: str) -> list[dict[str, Any]]:
    """The head's alive nodes, from its state API (one HTTP call, no Ray client)."""
    query = "limit=1000&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
    url = f"{dashboard_url}/api/v0/nodes?{query}"
    with urllib.request.urlopen(url, timeout=5.0) as response:  # noqa: S310 - http://127.0.0.1
        body = json.loads(response.read())
    nodes: list[dict[str, Any]] = body["data"]["result"]["result"]
    return nodes


def child_named(parent: int, comm: str) -> int | None:
    """A live child process of ``parent`` whose command name is ``comm``, from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:  # exited while we looked
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        state, ppid = raw[raw.rindex(")") + 2 :].split()[:2]
        if name == comm and int(ppid) == parent and state not in {"Z", "X"}:
            return int(stat.parent.name)
    return None
