"""Entry point of the pipeline as a Ray job: ``python -m cluster.pipeline_job run|status``.

``run`` is the pipeline's whole life: submitted with ``ray job submit --working-dir . -- python -m
cluster.pipeline_job run``, unchanged on the local head, a multi-node cluster or a KubeRay RayJob,
its driver starts the supervisor (which it owns, so the pipeline ends with the job), logs a status
line every 30 s, exits 1 if the supervisor is lost for good, and drains on SIGTERM (``ray job
stop``). This is a top of the program: it reads the environment once (the same ``FRESHLINE_*``
variables as the CLI) and the secrets, builds the frozen configs and hands them to the supervisor
(``actors/job.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from actors import job
from actors.config import (
    DEFAULT_CONSUMERS,
    DEFAULT_OFFLINE_WRITERS,
    DEFAULT_SINK_SHARDS,
    PipelineConfig,
)
from actors.registry_feed import latest, publish_to_regions
from actors.runtime import NAMESPACE
from cluster.embeddings import (
    ensure_topics,
    fleet_config,
    index_status,
    start_catalogs,
    stop_index_actors,
)
from cluster.pipeline import READY_LINE
from cluster.secrets import node_secrets
from cluster.settings import StackSettings
from cluster.settings_env import settings_from_env
from features.demo import card_transactions_catalog, item_embedding_views


@dataclass(frozen=True)
class Liveness:
    """How the job's driver watches its supervisor: a poll every ``poll_s``, a status line every
    ``report_s``, and exit 1 once it has been unreachable for ``fatal_after_s`` (Ray restarts a
    lost supervisor in seconds; minutes without one means the cluster cannot place it)."""

    poll_s: float = 2.0
    report_s: float = 30.0
    fatal_after_s: float = 300.0


LIVENESS = Liveness()


def pipeline_config(
    settings: StackSettings,
    consumers: int,
    sink_shards: int = DEFAULT_SINK_SHARDS,
    offline_writers: int = DEFAULT_OFFLINE_WRITERS,
) -> PipelineConfig:
    return PipelineConfig(
        bootstrap=settings.kafka.bootstrap,
        tenant=settings.tenant,
        consumers=consumers,
        sink_shards=sink_shards,
        offline_writers=offline_writers,
        topology=settings.topology,
        iceberg_catalog_uri=settings.iceberg_catalog_uri,
        iceberg_warehouse=settings.iceberg_warehouse,
        redis_users=settings.redis,
    )


def start(settings: StackSettings, shape: tuple[int, int, int], secrets: Any) -> Any:
    """Start the supervisor (owned by this driver) and the embedding catalogs; returns the
    supervisor's handle, which the driver holds for the pipeline's life (see ``job.up``)."""
    config = pipeline_config(settings, *shape)
    # The latest applied registry version; the demo catalog until a repository is applied.
    current = latest(settings.kafka.bootstrap, settings.tenant)
    catalog = card_transactions_catalog() if current is None else current.catalog
    version = None if current is None else current.number
    supervisor, result = job.up(config, catalog, secrets, version)
    if current is not None and result["registry_version"] == current.number:
        # The consumers compute it now: each region's Serve replicas may follow it. (A pipeline
        # already running an older version rolls to it and publishes it itself.)
        publish_to_regions(settings.topology, settings.redis, secrets, settings.tenant, current)
    views = item_embedding_views()
    fleet = fleet_config(
        settings.topology,
        bootstrap=settings.kafka.bootstrap,
        state_dir=settings.state_dir / "embeddings",
        users=settings.redis,
        secrets=secrets,
    )
    ensure_topics(settings.kafka.bootstrap, views)
    # Each view's catalog actor starts its index actors (one per region and live version).
    start_catalogs(views, fleet)
    return supervisor


def run(settings: StackSettings, shape: tuple[int, int, int], stop: threading.Event) -> int:
    """The job's whole life: start the pipeline, supervise it until ``stop`` is set (SIGTERM from
    ``ray job stop``), then drain it. Exit status 0 after a drain, 2 when a pipeline already runs
    on this cluster, 1 when the supervisor is lost for good."""
    if job.status() is not None:
        _say({"event": "refused", "reason": "a pipeline is already running in this namespace"})
        return 2
    # Read, never generated: a job on a worker must not mint passwords no Redis knows.
    secrets = node_secrets(settings.secrets_file, os.environ)
    # The handle is held until after the drain: Ray destroys a non-detached actor with its last
    # handle, which would kill the pipeline instead of draining it.
    supervisor = None
    try:
        supervisor = start(settings, shape, secrets)
        code = supervise(job.status, stop, LIVENESS)
    finally:
        drain(settings)
    del supervisor
    return code


def supervise(
    read: Callable[[], dict[str, Any] | None],
    stop: threading.Event,
    liveness: Liveness,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Log the pipeline's state until ``stop`` is set (0), or until the supervisor is lost (1):
    gone from the namespace (killed for good), or unreachable for ``liveness.fatal_after_s``
    (Ray restarts it in seconds where it can be placed). ``read`` is ``job.status``. Prints
    ``READY_LINE`` once every consumer has restored: ``freshline pipeline up`` waits for it."""
    ready = False
    last_seen = last_said = clock()
    while not stop.wait(liveness.poll_s):
        now = clock()
        try:
            state = read()
        except Exception as exc:  # restarting, or its node is gone: Ray places it again
            if now - last_seen > liveness.fatal_after_s:
                _say({"event": "fatal", "reason": f"supervisor unreachable: {type(exc).__name__}"})
                return 1
            continue
        if state is None:
            _say({"event": "fatal", "reason": "the supervisor actor is gone"})
            return 1
        last_seen = now
        if not ready and all(c["ready"] for c in state["consumers"]):
            ready = True
            print(READY_LINE, flush=True)
        if now - last_said >= liveness.report_s:
            last_said = now
            _say(summary(state))
    return 0


def drain(settings: StackSettings) -> None:
    """Stop the index actors and the supervisor's children (each commits or flushes first)."""
    indexes = stop_index_actors(item_embedding_views(), settings.topology)
    _say({"event": "drained", "stopped": job.down(), "index_actors_stopped": indexes})


def summary(state: dict[str, Any]) -> dict[str, Any]:
    """One status line for ``ray job logs -f``: what an operator checks first."""
    consumers = state["consumers"]
    return {
        "event": "status",
        "registry_version": state.get("registry_version"),
        "consumers_ready": sum(1 for c in consumers if c["ready"]),
        "consumers": len(consumers),
        "events_in": sum(c.get("events_in", 0) for c in consumers),
        "lag": sum(sum(c.get("lag", {}).values()) for c in consumers),
        "sink_lag": _sink_lag(state["sinks"]),
        "replaced": state.get("replaced", 0),
    }


def _sink_lag(sinks: list[dict[str, Any]]) -> dict[str, int | None]:
    """Per region/store, the lag summed over its shards; None while a shard has no figure."""
    lags: dict[str, list[int | None]] = {}
    for s in sinks:
        lags.setdefault(f"{s['region']}/{s['store']}", []).append(s.get("lag"))
    return {
        name: None if None in values else sum(v for v in values if v is not None)
        for name, values in lags.items()
    }


def _say(line: dict[str, Any]) -> None:
    print(json.dumps(line, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.pipeline_job")
    parser.add_argument("verb", choices=["run", "status"])
    parser.add_argument("--consumers", type=int, default=DEFAULT_CONSUMERS)
    parser.add_argument("--sink-shards", type=int, default=DEFAULT_SINK_SHARDS)
    parser.add_argument("--offline-writers", type=int, default=DEFAULT_OFFLINE_WRITERS)
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or auto)"
    )
    args = parser.parse_args(argv)
    settings = settings_from_env(os.environ)
    stop = threading.Event()
    if args.verb == "run":
        # `ray job stop` sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S: drain first.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    ray.init(
        address=args.address or os.environ.get("RAY_ADDRESS", "auto"),
        namespace=NAMESPACE,
        log_to_driver=False,
    )
    if args.verb == "run":
        shape = (args.consumers, args.sink_shards, args.offline_writers)
        return run(settings, shape, stop)
    result = job.status()
    if result is not None:
        result["embeddings"] = index_status(item_embedding_views(), settings.topology)
    print(json.dumps(result, indent=2, default=str))
    return 0 if result is not None else 3


if __name__ == "__main__":
    sys.exit(main())
