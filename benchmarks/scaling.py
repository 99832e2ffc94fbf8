"""Scaling benchmark: events/s and CPU per event with 1, 2 and 4 consumer actors, on one Ray node
and on two (the head and one worker node, ``ray.worker_nodes``, on the same machine).

    .venv/bin/python benchmarks/scaling.py [--quick] [--events N] [--consumers 1,2,4]

For each node count a private stack on free ports; in it, for each consumer count, with the
pipeline down:

1. ``--events`` valid demo events are produced to ``fl.card_tx`` (8 partitions), a backlog;
2. the pipeline starts with that many consumers (spread over the nodes, docs/pipeline.md) and is
   timed from the first event taken to no lag anywhere (consumers and all four sinks):
   ``events_per_s``, ``drain_s``;
3. meanwhile, from ``/proc/<pid>/stat`` at the first event and at the end, the CPU of every
   process the events cost: the consumer actors, the Redis and DynamoDB sinks, the offline
   writer, the broker, each region's Redis and moto. Divided by the events drained:
   ``cpu_us_per_event`` per group, the figures docs/scale.md sizes a deployment from;
   ``consumer_cores`` is the consumers' CPU over the drain's wall time (how many cores they used);
4. the pipeline is stopped (``freshline pipeline down``) before the next consumer count.

On two nodes the same two cores serve both: the two-node figures show what the placement costs
(Ray's cross-node calls, a second raylet), not more capacity. Prints its figures last as one JSON
line and appends them to ``benchmarks/results/scaling.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ingest import _drained, _produce_backlog
from cluster import pipeline as pipeline_job
from cluster.isolated import isolated_settings
from cluster.results import current_command, record_run
from cluster.services.ray_worker import NODE_LABEL
from cluster.stack import Stack

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
HEAD = "head"


def cpu_seconds(stat_line: str) -> float:
    """User + system CPU seconds of one ``/proc/<pid>/stat`` line (the command name may hold
    spaces and parentheses: fields are counted after the last ')')."""
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def _cpu_of(pid: int) -> float | None:
    try:
        return cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None  # gone (restarted): its group's figure is not reported


def per_event_us(
    before: dict[str, float | None], after: dict[str, float | None], events: int
) -> dict[str, float | None]:
    """CPU microseconds per event of each group; None where a process was lost in between."""
    out: dict[str, float | None] = {}
    for name, start in before.items():
        end = after.get(name)
        out[name] = None if start is None or end is None else round((end - start) * 1e6 / events, 2)
    return out


class _Pipeline:
    """A Ray client of the stack's head: the supervisor's status and where its actors run."""

    def __init__(self, stack: Stack) -> None:
        import ray

        from actors.runtime import NAMESPACE

        os.environ.update(stack.settings.ray.client_env())
        ray.init(address=stack.settings.ray.address, namespace=NAMESPACE, log_to_driver=False)
        self._ray, self._stack = ray, stack

    def close(self) -> None:
        self._ray.shutdown()

    def status(self) -> dict[str, Any] | None:
        from actors.runtime import NAMESPACE, SUPERVISOR

        try:
            supervisor = self._ray.get_actor(SUPERVISOR, namespace=NAMESPACE)
            return cast(dict[str, Any], self._ray.get(supervisor.status.remote(), timeout=30))
        except Exception:  # not up yet, or restarting
            return None

    def groups(self, status: dict[str, Any]) -> dict[str, list[int]]:
        """The pids of each process group the events cost CPU in."""
        services = self._stack.status()
        offline = status.get("offline") or {}
        return {
            "consumers": [c["pid"] for c in status["consumers"]],
            "redis_sinks": [s["pid"] for s in status["sinks"] if s["store"] == "redis"],
            "dynamodb_sinks": [s["pid"] for s in status["sinks"] if s["store"] == "dynamodb"],
            "offline_writer": [offline["pid"]] if offline.get("pid") else [],
            "broker": [s.pid for s in services if s.kind == "kafka" and s.pid],
            "redis": [s.pid for s in services if s.kind == "redis" and s.pid],
            "moto": [s.pid for s in services if s.kind == "dynamodb" and s.pid],
        }

    def consumers_by_node(self) -> dict[str, int]:
        """How many consumer actors run on each node (``head`` or its ``freshline-node``)."""
        from ray.util.state import list_actors, list_nodes

        address = self._stack.settings.ray.dashboard_url
        nodes = {
            n.node_id: HEAD if n.is_head_node else n.labels.get(NODE_LABEL, n.node_id)
            for n in list_nodes(address=address, limit=1000)
        }
        alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=10_000)
        counts: dict[str, int] = {}
        for actor in alive:
            if (actor.name or "").startswith("fl-consumer-"):
                node = nodes.get(str(actor.node_id), str(actor.node_id))
                counts[node] = counts.get(node, 0) + 1
        return counts


def _cpu_by_group(groups: dict[str, list[int]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, pids in groups.items():
        each = [_cpu_of(pid) for pid in pids]
        out[name] = None if not each or None in each else sum(e or 0.0 for e in each)
    return out


def _applied_redis(status: dict[str, Any]) -> int:
    return sum(s["applied_records"] for s in status["sinks"] if s["store"] == "redis")


def _drain(pipeline: _Pipeline, n: int, timeout_s: float) -> dict[str, Any]:
    """From the first event the consumers take until nothing lags: the time, the events, each
    group's CPU seconds and the changelog records one region's Redis applied."""
    first_at: float | None = None
    groups: dict[str, list[int]] = {}
    cpu0: dict[str, float | None] = {}
    applied0 = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = pipeline.status()
        if status and status["consumers"]:
            events = sum(c["events_in"] for c in status["consumers"])
            if first_at is None and events > 0:
                first_at = time.perf_counter()
                groups = pipeline.groups(status)
                cpu0, applied0 = _cpu_by_group(groups), _applied_redis(status)
            if first_at is not None and _drained(status, n):
                elapsed = time.perf_counter() - first_at
                regions = sum(1 for s in status["sinks"] if s["store"] == "redis")
                return {
                    "events": events,
                    "elapsed_s": elapsed,
                    "cpu_before": cpu0,
                    "cpu_after": _cpu_by_group(groups),
                    "changelog_records": (_applied_redis(status) - applied0) / max(1, regions),
                }
        time.sleep(0.2)
    raise TimeoutError(f"the pipeline did not drain {n} events in {timeout_s:.0f} s")


def run_case(stack: Stack, pipeline: _Pipeline, n: int, consumers: int, seq: int) -> dict[str, Any]:
    """One consumer count on a running stack, the pipeline down before and after."""
    produce_rate = _produce_backlog(stack.settings.kafka.bootstrap, n, start_seq=seq)
    submitter = threading.Thread(target=pipeline_job.up, args=(stack.settings, consumers))
    submitter.start()
    try:
        drain = _drain(pipeline, n, timeout_s=900)
    finally:
        submitter.join()
    placement = pipeline.consumers_by_node()
    pipeline_job.down(stack.settings)
    cpu = per_event_us(drain["cpu_before"], drain["cpu_after"], drain["events"])
    consumer_s = _spent(drain["cpu_before"]["consumers"], drain["cpu_after"]["consumers"])
    return {
        "nodes": 1 + stack.settings.ray.worker_nodes,
        "consumers": consumers,
        "events": drain["events"],
        "events_per_s": round(drain["events"] / drain["elapsed_s"]),
        "drain_s": round(drain["elapsed_s"], 2),
        "cpu_us_per_event": cpu,
        "cpu_us_per_event_total": round(sum(v for v in cpu.values() if v is not None), 2),
        "consumer_cores": None if consumer_s is None else round(consumer_s / drain["elapsed_s"], 2),
        "changelog_records_per_event": round(drain["changelog_records"] / drain["events"], 4),
        "consumers_by_node": placement,
        "produce_events_per_s": round(produce_rate),
    }


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def run_nodes(nodes: int, n: int, consumer_counts: list[int]) -> list[dict[str, Any]]:
    """Every consumer count on one private stack of ``nodes`` Ray nodes."""
    with tempfile.TemporaryDirectory(prefix="fl-scaling-") as tmp:
        settings = isolated_settings(Path(tmp) / "state", with_ray=True)
        ray_settings = settings.ray.model_copy(update={"worker_nodes": nodes - 1})
        settings = settings.model_copy(update={"ray": ray_settings})
        stack = Stack.build(settings, environ={})
        try:
            stack.up()
            pipeline = _Pipeline(stack)
            try:
                return [
                    run_case(stack, pipeline, n, c, seq=i * n)
                    for i, c in enumerate(consumer_counts)
                ]
            finally:
                pipeline.close()
        finally:
            stack.down(purge=True)


def summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's headline figures: events/s and consumer CPU per event by (nodes, consumers), and
    the median per-event CPU of each group over every case (what a sizing model multiplies)."""
    groups = {g for case in cases for g in case["cpu_us_per_event"]}
    medians = {
        g: round(statistics.median(v), 2)
        for g in sorted(groups)
        if (v := [c["cpu_us_per_event"][g] for c in cases if c["cpu_us_per_event"][g] is not None])
    }
    return {
        "events_per_s": {f"{c['nodes']}n{c['consumers']}c": c["events_per_s"] for c in cases},
        "consumer_us_per_event": {
            f"{c['nodes']}n{c['consumers']}c": c["cpu_us_per_event"]["consumers"] for c in cases
        },
        "median_cpu_us_per_event": medians,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="30,000 events per case")
    parser.add_argument("--events", type=int, default=None, help="backlog per case")
    parser.add_argument("--consumers", default="1,2,4", help="consumer counts, comma-separated")
    parser.add_argument("--nodes", default="1,2", help="Ray node counts, comma-separated")
    args = parser.parse_args()
    n = args.events or (30_000 if args.quick else 200_000)
    consumer_counts = [int(c) for c in args.consumers.split(",")]
    cases = [
        case
        for nodes in (int(x) for x in args.nodes.split(","))
        for case in run_nodes(nodes, n, consumer_counts)
    ]
    result = {
        **summary(cases),
        "cases": cases,
        "events_per_case": n,
        "cpus": os.cpu_count(),
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
    }
    record_run("scaling", result, command=current_command())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
