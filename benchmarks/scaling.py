"""Scaling benchmark: events/s and CPU per event with 1, 2 and 4 consumer actors, on one Ray node
and on two (the head and one worker node, ``ray.worker_nodes``, on the same machine).

    .venv/bin/python benchmarks/scaling.py [--quick] [--events N] [--consumers 1,2,4]
        [--nodes 1,2] [--sink-shards 1] [--offline-writers 1]

For each node count a private stack on free ports; in it, for each consumer count, with the
pipeline down:

1. ``--events`` valid demo events are produced to ``fl.card_tx`` (8 partitions), a backlog;
2. the pipeline starts with that many consumers (spread over the nodes, docs/pipeline.md) and the
   backlog's drain is timed from the moment the consumers had restored (their own clocks:
   ``started_at + restore_s``) until nothing lags (consumers and all four sinks):
   ``events_per_s``, ``drain_s``;
3. then, on the caught-up pipeline, ``--rate`` events/s are produced for ``--seconds``, and the CPU
   every process spent on them is read from ``/proc/<pid>/stat`` before and once they are all
   applied: the consumer actors, the Redis and DynamoDB sinks, the offline writer, the broker,
   each region's Redis and moto. Divided by the events: ``cpu_us_per_event`` per group, the
   figures docs/scale.md sizes a deployment from; ``consumer_cores`` is the consumers' CPU over
   that phase's wall time. Just before it, the same processes are read over as many seconds with
   no event arriving: ``idle_cores`` per group (polls, heartbeats, empty commits), and
   ``marginal_us_per_event`` is the phase's CPU less that idle rate over the phase, per event.
   A gross figure at one rate mixes the two; the sizing model needs them apart, since the idle
   part grows with the number of processes and the marginal part with the event rate;
4. the pipeline is stopped (``freshline pipeline down``) before the next consumer count.

With ``--sink-shards 1,2`` every consumer count runs once per sink shard count (``--sink-shards``
of ``pipeline up``): the sinks' per-event cost with their work split over more processes;
``--offline-writers 1,2`` likewise for the offline writers.

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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling ingest.py, as a script

from ingest import _cpu_by_group, _drained, _process_groups, _produce_backlog, _produce_paced

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
    return marginal_us(before, after, dict.fromkeys(before, 0.0), 0.0, events)


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
        groups = _process_groups(self._stack, status)
        redis = [s.pid for s in self._stack.status() if s.kind == "redis" and s.pid]
        return {**groups, "redis": redis}

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


def _applied_redis(status: dict[str, Any]) -> int:
    return sum(s["applied_records"] for s in status["sinks"] if s["store"] == "redis")


def _wait_drained(pipeline: _Pipeline, n: int, timeout_s: float, sinks: int) -> dict[str, Any]:
    """The supervisor's status once its consumers took ``n`` events and nothing lags in them or
    in its ``sinks`` sink actors."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = pipeline.status()
        if status and status["consumers"] and _drained(status, n, sinks):
            return status
        time.sleep(0.2)
    raise TimeoutError(f"the pipeline did not drain {n} events in {timeout_s:.0f} s")


def _drain_s(pipeline: _Pipeline, n: int, sinks: int) -> float:
    """Seconds from the consumers' restore (their own clocks) to no lag anywhere."""
    status = _wait_drained(pipeline, n, timeout_s=900, sinks=sinks)
    ended = time.time()
    restored = min(c["started_at"] + (c["restore_s"] or 0.0) for c in status["consumers"])
    return float(ended - restored)


def _cpu_phase(
    pipeline: _Pipeline, bootstrap: str, phase: tuple[int, float], seq: int, sinks: int
) -> dict[str, Any]:
    """CPU per event of each group while events stream into the caught-up pipeline at
    ``phase = (events/s, seconds)``."""
    status = pipeline.status()
    if status is None:
        raise RuntimeError("the pipeline's supervisor does not answer")
    groups = pipeline.groups(status)
    taken = sum(c["events_in"] for c in status["consumers"])
    applied = _applied_redis(status)
    idle = idle_cores(groups, phase[1])
    cpu0, started = _cpu_by_group(groups, _cpu_of), time.perf_counter()
    sent = _produce_paced(bootstrap, phase[0], phase[1], start_seq=seq)
    final = _wait_drained(pipeline, taken + sent, timeout_s=600, sinks=sinks)
    wall = time.perf_counter() - started
    cpu1 = _cpu_by_group(groups, _cpu_of)
    regions = len({s["region"] for s in final["sinks"] if s["store"] == "redis"})
    consumer_s = _spent(cpu0["consumers"], cpu1["consumers"])
    return {
        "cpu_events": sent,
        "cpu_us_per_event": per_event_us(cpu0, cpu1, sent),
        "idle_cores": idle,
        "marginal_us_per_event": marginal_us(cpu0, cpu1, idle, wall, sent),
        "consumer_cores": None if consumer_s is None else round(consumer_s / wall, 2),
        "changelog_records_per_event": round(
            (_applied_redis(final) - applied) / max(1, regions) / sent, 4
        ),
        # Offline commits written again after losing a race to another writer (whole run).
        "offline_commit_retries": sum(w.get("commit_retries", 0) for w in final["offline"]),
    }


def idle_cores(groups: dict[str, list[int]], seconds: float) -> dict[str, float | None]:
    """Cores each group spends with no event arriving, over ``seconds``."""
    cpu0, started = _cpu_by_group(groups, _cpu_of), time.perf_counter()
    time.sleep(seconds)
    cpu1, wall = _cpu_by_group(groups, _cpu_of), time.perf_counter() - started
    return {
        g: None if (s := _spent(cpu0[g], cpu1.get(g))) is None else round(s / wall, 4) for g in cpu0
    }


def marginal_us(
    before: dict[str, float | None],
    after: dict[str, float | None],
    idle: dict[str, float | None],
    wall_s: float,
    events: int,
) -> dict[str, float | None]:
    """CPU microseconds per event of each group beyond its idle rate over ``wall_s``."""
    out: dict[str, float | None] = {}
    for name, start in before.items():
        spent, base = _spent(start, after.get(name)), idle.get(name)
        out[name] = (
            None
            if spent is None or base is None
            else round((spent - base * wall_s) * 1e6 / events, 2)
        )
    return out


def run_case(
    stack: Stack,
    pipeline: _Pipeline,
    n: int,
    shape: tuple[int, int, int],
    *,
    phase: tuple[int, float],
    seq: int,
) -> dict[str, Any]:
    """One ``shape = (consumers, sink shards, offline writers)`` on a running stack, the pipeline
    down before and after."""
    consumers, shards, writers = shape
    sinks = 2 * len(stack.settings.topology.regions) * shards  # Redis and DynamoDB per region
    bootstrap = stack.settings.kafka.bootstrap
    produce_rate = _produce_backlog(bootstrap, n, start_seq=seq)
    submitter = threading.Thread(
        target=pipeline_job.up,
        args=(stack.settings, consumers),
        kwargs={"sink_shards": shards, "offline_writers": writers},
    )
    submitter.start()
    try:
        drain_s = _drain_s(pipeline, n, sinks)
    finally:
        submitter.join()
    cpu = _cpu_phase(pipeline, bootstrap, phase, seq=seq + n, sinks=sinks)
    placement = pipeline.consumers_by_node()
    pipeline_job.down(stack.settings)
    per_event = cpu["cpu_us_per_event"]
    return {
        "nodes": 1 + stack.settings.ray.worker_nodes,
        "consumers": consumers,
        "sink_shards": shards,
        "offline_writers": writers,
        "events": n,
        "events_per_s": round(n / drain_s),
        "drain_s": round(drain_s, 2),
        **cpu,
        "cpu_us_per_event_total": round(sum(v for v in per_event.values() if v is not None), 2),
        "consumers_by_node": placement,
        "produce_events_per_s": round(produce_rate),
    }


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def run_nodes(
    nodes: int, n: int, shapes: list[tuple[int, int, int]], phase: tuple[int, float]
) -> list[dict[str, Any]]:
    """Every (consumers, sink shards, offline writers) shape on one private stack of ``nodes``
    Ray nodes."""
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
                    run_case(stack, pipeline, n, shape, phase=phase, seq=i * 10 * n)
                    for i, shape in enumerate(shapes)
                ]
            finally:
                pipeline.close()
        finally:
            stack.down(purge=True)


def summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's headline figures: events/s and consumer CPU per event by (nodes, consumers), and
    the median per-event CPU of each group over every case (what a sizing model multiplies)."""
    return {
        "events_per_s": {_case_name(c): c["events_per_s"] for c in cases},
        "consumer_us_per_event": {_case_name(c): c["cpu_us_per_event"]["consumers"] for c in cases},
        "sink_marginal_us_per_event": {
            _case_name(c): {
                g: c["marginal_us_per_event"].get(g)
                for g in ("redis_sinks", "dynamodb_sinks", "offline_writer")
            }
            for c in cases
        },
        "median_cpu_us_per_event": _median_by_group(cases, "cpu_us_per_event"),
        "median_marginal_us_per_event": _median_by_group(cases, "marginal_us_per_event"),
        "median_idle_cores": _median_by_group(cases, "idle_cores", digits=4),
    }


def _case_name(case: dict[str, Any]) -> str:
    """``1n2c``: one node, two consumers; ``1n2c2s`` with two sink shards, ``1n2c2w`` with two
    offline writers."""
    shards, writers = case.get("sink_shards", 1), case.get("offline_writers", 1)
    name = f"{case['nodes']}n{case['consumers']}c"
    return name + (f"{shards}s" if shards != 1 else "") + (f"{writers}w" if writers != 1 else "")


def _median_by_group(cases: list[dict[str, Any]], key: str, digits: int = 2) -> dict[str, float]:
    groups = sorted({g for case in cases for g in case[key]})
    return {
        g: round(statistics.median(v), digits)
        for g in groups
        if (v := [c[key][g] for c in cases if c[key].get(g) is not None])
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="50,000 events per case")
    parser.add_argument("--events", type=int, default=None, help="backlog per case")
    parser.add_argument("--consumers", default="1,2,4", help="consumer counts, comma-separated")
    parser.add_argument("--nodes", default="1,2", help="Ray node counts, comma-separated")
    parser.add_argument(
        "--sink-shards", default="1", help="sink shard counts per store, comma-separated"
    )
    parser.add_argument(
        "--offline-writers", default="1", help="offline writer counts, comma-separated"
    )
    parser.add_argument("--rate", type=int, default=5000, help="events/s of the CPU phase")
    parser.add_argument("--seconds", type=float, default=None, help="length of the CPU phase")
    args = parser.parse_args()
    n = args.events or (50_000 if args.quick else 200_000)
    shapes = [
        (int(c), int(s), int(w))
        for c in args.consumers.split(",")
        for s in args.sink_shards.split(",")
        for w in args.offline_writers.split(",")
    ]
    phase = (args.rate, args.seconds or (6.0 if args.quick else 20.0))
    cases = [
        case
        for nodes in (int(x) for x in args.nodes.split(","))
        for case in run_nodes(nodes, n, shapes, phase)
    ]
    result = {
        **summary(cases),
        "cases": cases,
        "events_per_case": n,
        "cpu_phase": {"events_per_s": phase[0], "seconds": phase[1]},
        "cpus": os.cpu_count(),
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
    }
    record_run("scaling", result, command=current_command())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
