"""The pipeline supervisor, driven from a Ray driver: start it, read it, stop it.

Nothing here reads the environment or a secrets file: the caller (``cluster/pipeline_job.py``, the
Ray job's entry point) builds the frozen config and the secrets and passes them in. ``up`` starts
the supervisor owned by the calling driver, so the pipeline lives exactly as long as the job (a
detached one would outlive ``ray job stop`` and a SIGKILLed driver), and waits until every
consumer has restored its state. All three need ``ray.init`` in the calling process.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from actors.config import PipelineConfig
from actors.runtime import NAMESPACE, SUPERVISOR, Supervisor
from features.catalog import Catalog


def up(
    config: PipelineConfig,
    catalog: Catalog,
    secrets: Any,
    registry_version: int | None = None,
    timeout_s: float = 180.0,
) -> tuple[Any, dict[str, Any]]:
    """Start the supervisor on ``catalog`` (registry version ``registry_version``, None for a
    catalog from code), or find the running one, which follows newer versions by itself.

    Returns its handle and its status once every consumer has restored (or at ``timeout_s``).
    The caller must keep the handle for as long as the pipeline should run: Ray destroys a
    non-detached actor, named or not, once no handle to it is left."""
    supervisor = Supervisor.options(
        name=SUPERVISOR, namespace=NAMESPACE, get_if_exists=True
    ).remote(config, catalog, secrets, registry_version)
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = ray.get(supervisor.status.remote(), timeout=60)
        if all(c["ready"] for c in status["consumers"]) or time.monotonic() > deadline:
            return supervisor, status
        time.sleep(0.5)


def status() -> dict[str, Any] | None:
    try:
        supervisor = ray.get_actor(SUPERVISOR, namespace=NAMESPACE)
    except ValueError:
        return None
    result: Any = ray.get(supervisor.status.remote(), timeout=60)
    return dict(result)


def down() -> bool:
    try:
        supervisor = ray.get_actor(SUPERVISOR, namespace=NAMESPACE)
    except ValueError:
        return False
    ray.get(supervisor.stop.remote(), timeout=120)
    ray.kill(supervisor, no_restart=True)
    return True
