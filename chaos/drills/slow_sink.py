"""``slow-sink``: one region's Redis stops accepting writes (``CLIENT PAUSE WRITE``) under full
ingest. Its sink backs off with its partitions paused, consumer memory stays bounded, the other
region stays current meanwhile, and once the stall ends the lag drains with nothing lost.
"""

from __future__ import annotations

from chaos import faults
from chaos.context import DrillContext
from chaos.drills.base import gauge_max, generator, pick, pipeline_probe, sleep_until
from chaos.report import Verdict
from chaos.timeline import Sampler, Timeline

STALLED = "eu-west"
OTHER = "us-east"
MEMORY_BOUND_MIB = 256.0


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    stall_s = pick(ctx, 20, 30)
    rate = pick(ctx, 2_000, 4_000)
    events = int(rate * stall_s / 3)  # produced in the first third: two thirds to catch up
    admin = ctx.redis_service(STALLED).admin_client()
    failures_before = ctx.sink(STALLED, "redis")["store_failures"]
    with Sampler(timeline, pipeline_probe(ctx)):
        sleep_until(timeline, timeline.now_s() + 3)  # a baseline after the warm-up
        memory_before = gauge_max(timeline, "consumers MiB", 0, timeline.now_s())
        began = timeline.now_s()
        with faults.redis_paused(admin, stall_s + 5):
            report, _ = ctx.produce(generator("slow_sink", rate=rate, events=events, seed=303))
            remaining = stall_s - (timeline.now_s() - began)
            fresh, _ = ctx.settle(max(remaining, 1.0), targets=[(OTHER, "redis")])
            sink_during = ctx.sink(STALLED, "redis")
            sleep_until(timeline, began + stall_s)
        ended = timeline.now_s()
        timeline.fault(f"redis-{STALLED} CLIENT PAUSE WRITE", began, ended)
        problems, drain_s = ctx.settle(pick(ctx, 120, 240))
        sleep_until(timeline, timeline.now_s() + 2)
    admin.close()
    peak = gauge_max(timeline, "consumers MiB", began, timeline.now_s())
    lag_peak = gauge_max(timeline, f"lag {STALLED}/redis", began, ended)
    verdict.figure("stall_s", ended - began)
    verdict.figure("events_during_stall", report.acked)
    verdict.figure("consumers_rss_before_mib", memory_before)
    verdict.figure("consumers_rss_peak_mib", peak)
    verdict.figure(f"peak_lag_{STALLED}_redis_records", lag_peak)
    verdict.figure("drain_after_stall_s", drain_s)
    verdict.check(
        "the stalled sink backed off",
        sink_during["store_failures"] > failures_before or bool(sink_during["paused"]),
        target="store failures counted, partitions paused",
        measured=f"{sink_during['store_failures'] - failures_before} failures, "
        f"paused={sink_during['paused']}",
    )
    verdict.check(
        f"{OTHER} stays current during the stall",
        not fresh,
        target="equals the oracle before the stall ends",
        measured=f"{len(fresh)} mismatches {fresh[:2]}",
    )
    verdict.check(
        "consumer memory bounded",
        peak - memory_before <= MEMORY_BOUND_MIB,
        target=f"growth <= {MEMORY_BOUND_MIB:.0f} MiB",
        measured=f"{peak - memory_before:.0f} MiB (peak {peak:.0f} MiB)",
    )
    verdict.check(
        "lag drains, nothing lost",
        not problems,
        target="every region and store equals the oracle",
        measured=f"{len(problems)} mismatches after {drain_s:.1f} s {problems[:2]}",
    )
