"""``broker-restart``: a Kafka broker is SIGKILLed for ten seconds mid-stream, then restarted.

The producer retries; every event it saw acknowledged must still be in the topic, the pipeline
must resume by itself (consumers and sinks reconnect; transactions of the killed session abort
and are replayed), and every region and store must then equal the oracle. Reported: the stall,
from the kill to the first event the consumers read after the restart.

On the three-broker profile (``FRESHLINE_KAFKA_BROKERS=3``) the victim is the node that leads
the most partitions of the stack's topics, the other two keep every partition in sync (min ISR
2), and us-east's reads go on through the fault: they must not notice it. The stall is then
counted from the kill itself, since the cluster keeps serving while the node is down.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter

from chaos import faults, verify
from chaos.context import DrillContext
from chaos.drills.base import (
    generator,
    in_background,
    pick,
    pipeline_probe,
    serving_load,
    sleep_until,
)
from chaos.faults import ServiceLike
from chaos.report import Verdict
from chaos.timeline import Sampler, Timeline, error_rate, percentile, within
from cluster.services.kafka import service_name

DOWN_S = 10.0
READ_REGION = "us-east"


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    if ctx.settings.kafka.brokers > 1:
        _run_on_profile(ctx, timeline, verdict)
        return
    rate = pick(ctx, 400, 800)
    seconds = pick(ctx, 30, 60)
    config = generator("broker_restart", rate=rate, events=int(rate * seconds), seed=404)
    broker = ctx.process_service("kafka")
    with Sampler(timeline, pipeline_probe(ctx)):  # sampling goes on while the pipeline settles
        with in_background(lambda: ctx.produce(config, config.run_id)) as produced:
            sleep_until(timeline, 8)
            killed_at, restarted_at, restart_s = _kill_and_restart(timeline, broker)
            report, ledger = produced.result(timeout=seconds * 4 + 180)
        acked = [(r.partition, r.offset) for r in ledger]
        lost = verify.lost_acknowledged(ctx.bootstrap, acked)
        problems, settle_s = ctx.settle(pick(ctx, 180, 300))
    # The broker answers before `start` returns (it also checks topics): progress is looked for
    # from the moment a new broker process could exist, not from start's return.
    resumed = _first_progress(timeline, killed_at + DOWN_S)
    verdict.figure("broker_down_s", restarted_at - killed_at)
    verdict.figure("broker_restart_s", restart_s)
    verdict.figure("stall_s", resumed - killed_at)
    verdict.figure("events_acked", report.acked)
    verdict.figure("events_failed", report.failed)
    _judge_pipeline(
        verdict,
        acked=acked,
        lost=lost,
        stall_s=resumed - killed_at,
        problems=problems,
        settle_s=settle_s,
    )


def _run_on_profile(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    """The same fault on one node of three, with reads of us-east judged through it."""
    rate = pick(ctx, 400, 800)
    seconds = pick(ctx, 30, 60)
    config = generator("broker_restart", rate=rate, events=int(rate * seconds), seed=404)
    # The generator's population (cluster/events/synth.py names users u_000000 on).
    users = [f"u_{i:06d}" for i in range(config.n_users)]
    node, led = _busiest_leader(ctx)
    broker = ctx.process_service(service_name(ctx.settings, node))
    with Sampler(timeline, pipeline_probe(ctx)):
        with (
            serving_load(ctx, READ_REGION, users, pick(ctx, 50, 100)) as reads,
            in_background(lambda: ctx.produce(config, config.run_id)) as produced,
        ):
            sleep_until(timeline, 8)
            killed_at, restarted_at, restart_s = _kill_and_restart(timeline, broker)
            report, ledger = produced.result(timeout=seconds * 4 + 180)
        acked = [(r.partition, r.offset) for r in ledger]
        lost = verify.lost_acknowledged(ctx.bootstrap, acked)
        problems, settle_s = ctx.settle(pick(ctx, 180, 300))
    timeline.add_load(reads.samples, reads.started_at)
    resumed = _first_progress(timeline, killed_at)
    verdict.figure("victim", broker.name)
    verdict.figure("victim_led_partitions", led)
    verdict.figure("broker_down_s", restarted_at - killed_at)
    verdict.figure("broker_restart_s", restart_s)
    verdict.figure("stall_s", resumed - killed_at)
    verdict.figure("events_in_while_down", _progress(timeline, killed_at, restarted_at))
    verdict.figure("events_acked", report.acked)
    verdict.figure("events_failed", report.failed)
    _judge_reads(timeline, verdict, killed_at, restarted_at)
    _judge_pipeline(
        verdict,
        acked=acked,
        lost=lost,
        stall_s=resumed - killed_at,
        problems=problems,
        settle_s=settle_s,
    )


def _kill_and_restart(timeline: Timeline, broker: ServiceLike) -> tuple[float, float, float]:
    """SIGKILL, ``DOWN_S`` down, restart; (killed at, restarted at, restart seconds)."""
    killed_at = timeline.now_s()
    faults.kill(broker)
    time.sleep(DOWN_S)
    restart_s = faults.restart(broker)
    restarted_at = timeline.now_s()
    timeline.fault(f"{broker.name} SIGKILL", killed_at, restarted_at)
    return killed_at, restarted_at, restart_s


def _busiest_leader(ctx: DrillContext) -> tuple[int, int]:
    """(node id, partitions it leads) of the node leading the most partitions of the stack's
    topics: its death moves the most leaders and transaction coordinators' logs."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=ctx.bootstrap, client_id="freshline-chaos")
    try:
        described = admin.describe_topics([t.name for t in ctx.settings.kafka.topics])
    finally:
        admin.close()
    leaders = Counter(p["leader_id"] for d in described for p in d["partitions"])
    node, led = max(leaders.items(), key=lambda item: (item[1], -item[0]))
    return int(node), led


def _judge_reads(timeline: Timeline, verdict: Verdict, killed_at: float, end_s: float) -> None:
    during = within(timeline.samples, killed_at, end_s)
    verdict.figure("reads_while_down", len(during))
    verdict.figure("read_p99_while_down_ms", percentile([s.latency_s * 1e3 for s in during], 0.99))
    verdict.check(
        "reads unaffected while the broker is down",
        bool(during) and error_rate(during) <= 0.01,
        target="<= 1 % errors (reads come from the stores, not Kafka)",
        measured=f"{100 * error_rate(during):.2f} % of {len(during)}",
    )


def _judge_pipeline(
    verdict: Verdict,
    *,
    acked: list[tuple[int, int]],
    lost: list[tuple[int, int]],
    stall_s: float,
    problems: list[str],
    settle_s: float,
) -> None:
    verdict.check(
        "no acknowledged event lost",
        bool(acked) and not lost,
        target="every acked (partition, offset) still in the topic",
        measured=f"{len(lost)} lost of {len(acked)}",
    )
    verdict.check(
        "the pipeline resumed by itself",
        not math.isnan(stall_s),
        target="consumers read again after the restart",
        measured=f"{stall_s:.1f} s after the kill",
    )
    verdict.check(
        "every region and store equals the oracle",
        not problems,
        target="0 mismatches",
        measured=f"{len(problems)} after {settle_s:.1f} s {problems[:2]}",
    )


def _progress(timeline: Timeline, start_s: float, end_s: float) -> float:
    """How far the consumers' event counter rose between two times (NaN: not sampled)."""
    points = [v for t, v in timeline.gauges.get("events in", []) if start_s <= t <= end_s]
    return points[-1] - points[0] if points else float("nan")


def _first_progress(timeline: Timeline, after_s: float) -> float:
    """When the consumers' event counter first rose after ``after_s`` (NaN: never)."""
    points = [(t, v) for t, v in timeline.gauges.get("events in", []) if t >= after_s]
    for (_, v0), (t1, v1) in itertools.pairwise(points):
        if v1 > v0:
            return t1
    return float("nan")
