"""``broker-restart``: the Kafka broker is SIGKILLed for ten seconds mid-stream, then restarted.

The producer retries; every event it saw acknowledged must still be in the topic, the pipeline
must resume by itself (consumers and sinks reconnect; transactions of the killed session abort
and are replayed), and every region and store must then equal the oracle. Reported: the stall,
from the kill to the first event the consumers read after the restart.
"""

from __future__ import annotations

import itertools
import math
import time

from chaos import faults, verify
from chaos.context import DrillContext
from chaos.drills.base import generator, in_background, pick, pipeline_probe, sleep_until
from chaos.report import Verdict
from chaos.timeline import Sampler, Timeline

DOWN_S = 10.0


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    rate = pick(ctx, 400, 800)
    seconds = pick(ctx, 30, 60)
    config = generator("broker_restart", rate=rate, events=int(rate * seconds), seed=404)
    broker = ctx.process_service("kafka")
    with Sampler(timeline, pipeline_probe(ctx)):  # sampling goes on while the pipeline settles
        with in_background(lambda: ctx.produce(config, config.run_id)) as produced:
            sleep_until(timeline, 8)
            killed_at = timeline.now_s()
            faults.kill(broker)
            time.sleep(DOWN_S)
            restart_s = faults.restart(broker)
            restarted_at = timeline.now_s()
            timeline.fault("kafka SIGKILL", killed_at, restarted_at)
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
    verdict.check(
        "no acknowledged event lost",
        bool(acked) and not lost,
        target="every acked (partition, offset) still in the topic",
        measured=f"{len(lost)} lost of {len(acked)}",
    )
    verdict.check(
        "the pipeline resumed by itself",
        not math.isnan(resumed),
        target="consumers read again after the restart",
        measured=f"{resumed - killed_at:.1f} s after the kill",
    )
    verdict.check(
        "every region and store equals the oracle",
        not problems,
        target="0 mismatches",
        measured=f"{len(problems)} after {settle_s:.1f} s {problems[:2]}",
    )


def _first_progress(timeline: Timeline, after_s: float) -> float:
    """When the consumers' event counter first rose after ``after_s`` (NaN: never)."""
    points = [(t, v) for t, v in timeline.gauges.get("events in", []) if t >= after_s]
    for (_, v0), (t1, v1) in itertools.pairwise(points):
        if v1 > v0:
            return t1
    return float("nan")
