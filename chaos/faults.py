"""Fault injectors that act on the real processes and services of a running stack.

Every injector that leaves something broken is a context manager whose exit undoes the fault
(SIGCONT, UNPAUSE, restart), so a drill that fails half-way never leaves the stack stalled.

- Processes (Redis, the DynamoDB endpoint, the Kafka broker): SIGKILL, SIGSTOP/SIGCONT, restart
  (with the service's ``purge`` in between: a node that lost its disk comes back empty).
- Redis stalls: ``CLIENT PAUSE`` (writes or all commands) and ``DEBUG SLEEP`` (the whole server,
  reads included, as in a fork or a slow disk freezing it).
- Ray: SIGKILL of a named actor's worker process (Ray restarts it), ``ray.kill`` of a Serve
  replica (Serve's controller replaces it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol, cast

from cluster.process import ManagedProcess, wait_until
from features.errors import StackError


class ServiceLike(Protocol):
    """What the injectors need of a ``cluster.services`` service."""

    name: str

    @property
    def process(self) -> ManagedProcess: ...
    def start(self) -> None: ...
    def purge(self) -> None: ...


def _pid(service: ServiceLike) -> int:
    pid = service.process.pid()
    if pid is None:
        raise StackError(f"{service.name} is not running; the drill needs it up")
    return int(pid)


def kill(service: ServiceLike) -> int:
    """SIGKILL the service's process and wait until it is gone; returns the pid killed."""
    pid = _pid(service)
    os.kill(pid, signal.SIGKILL)
    if not wait_until(lambda: service.process.pid() is None, 15.0):
        raise StackError(f"{service.name} (pid {pid}) survived SIGKILL")
    return pid


def restart(service: ServiceLike) -> float:
    """Start the service again (idempotent) and return how long it took to be healthy."""
    began = time.monotonic()
    service.start()
    return time.monotonic() - began


@contextlib.contextmanager
def stopped(service: ServiceLike) -> Iterator[int]:
    """SIGSTOP the process for the duration of the block (it hangs: sockets accept, nothing
    answers, the nastiest failure for a client), then SIGCONT, whatever happens inside."""
    pid = _pid(service)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def redis_paused(admin: Any, seconds: float, mode: str = "WRITE") -> Iterator[None]:
    """``CLIENT PAUSE`` for ``seconds`` (``WRITE``: reads go on, writes block); always UNPAUSEd."""
    admin.execute_command("CLIENT", "PAUSE", str(int(seconds * 1000)), mode)
    try:
        yield
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")


@contextlib.contextmanager
def redis_asleep(admin: Any, seconds: float) -> Iterator[None]:
    """``DEBUG SLEEP``: the whole server blocks for ``seconds`` (connections are accepted, nothing
    answers). A sleep cannot be cut short, so the exit waits until the server answers again."""
    thread = threading.Thread(
        target=_debug_sleep, args=(admin, seconds), name="chaos-redis-sleep", daemon=True
    )
    thread.start()
    time.sleep(0.05)  # the command is on the wire before the block's body starts timing
    try:
        yield
    finally:
        thread.join(seconds + 30)
        if not wait_until(lambda: _answers(admin), timeout_s=seconds + 30):
            raise StackError("Redis did not answer again after DEBUG SLEEP")


def _debug_sleep(admin: Any, seconds: float) -> None:
    # The admin client's socket timeout is shorter than the sleep: the call times out on our
    # side while the server goes on sleeping, which is the fault itself.
    with contextlib.suppress(Exception):
        admin.execute_command("DEBUG", "SLEEP", f"{seconds:.3f}")


def _answers(admin: Any) -> bool:
    try:
        return bool(admin.ping())
    except Exception:
        return False


def kill_actor_process(name: str, namespace: str) -> tuple[int, float]:
    """SIGKILL the worker process of a named Ray actor; wait until Ray has restarted it and it
    answers ``status()`` as ready from a new process. Returns (killed pid, restart seconds)."""
    import ray

    actor = ray.get_actor(name, namespace=namespace)
    status = cast(dict[str, Any], ray.get(actor.status.remote(), timeout=60))
    pid = int(status["pid"])
    began = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = began + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            now = cast(dict[str, Any], ray.get(actor.status.remote(), timeout=10))
            if now["pid"] != pid and now.get("ready", True):
                return pid, time.monotonic() - began
        time.sleep(0.2)
    raise StackError(f"actor {name} did not come back within 180 s after SIGKILL")


def serve_replicas(app: str) -> list[str]:
    """Names of the running replica actors of a Serve application."""
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app}#")
    )


def kill_serve_replica(app: str) -> tuple[str, float]:
    """``ray.kill`` one replica of ``app``; wait until Serve has replaced it (a new replica name
    at the same count). Returns (killed replica, replacement seconds)."""
    import ray

    before = serve_replicas(app)
    if not before:
        raise StackError(f"no running replica of Serve application {app!r}")
    victim = before[0]
    began = time.monotonic()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    deadline = began + 120
    while time.monotonic() < deadline:
        now = serve_replicas(app)
        if victim not in now and len(now) >= len(before):
            return victim, time.monotonic() - began
        time.sleep(0.2)
    raise StackError(f"Serve did not replace replica {victim} within 120 s")
