"""``redis-kill``: one region's Redis dies under steady serving load and comes back empty.

Serving must keep answering through the fallback chain (the region's DynamoDB, then the nearest
other region), the sink must rehydrate the empty Redis from the compacted changelog, and the
region must return to local reads without ever serving a wrong present value. Target: at most
1 % errors while Redis is down, none once it serves locally again.
"""

from __future__ import annotations

import math
import time

from chaos import faults
from chaos.context import DrillContext, busiest_users
from chaos.drills.base import (
    ValueProbe,
    first_time,
    judge_recovery,
    pick,
    serving_load,
    sleep_until,
    warm_up,
)
from chaos.load import HttpLoad
from chaos.report import Verdict
from chaos.timeline import OK, Sampler, Timeline, error_rate, percentile, within

REGION = "us-east"


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    ledger, accepted = warm_up(ctx, "redis_kill", events=2_000, seed=101)
    users = busiest_users(ledger, 40)
    local = f"redis-{REGION}"
    service = ctx.process_service(local)
    rate = pick(ctx, 100, 300)
    down_s = pick(ctx, 8, 30)
    with (
        Sampler(timeline, lambda: {"rehydrating": float(_rehydrating(ctx))}),
        ValueProbe(ctx, REGION, users, accepted) as probe,
        serving_load(ctx, REGION, users, rate) as load,
    ):
        sleep_until(timeline, timeline.now_s() + 5)  # a baseline after the warm-up
        killed_at = timeline.now_s()
        faults.kill(service)
        time.sleep(down_s)
        service.purge()  # the replacement node has an empty disk
        faults.restart(service)
        restarted_at = timeline.now_s()
        timeline.fault(f"{local} killed", killed_at, restarted_at)
        back = _wait_local(load, local, timeout_s=pick(ctx, 90, 180))
        back_at = restarted_at + back
        sleep_until(timeline, back_at + pick(ctx, 8, 30))
    timeline.add_load(load.samples, load.started_at)
    _judge(
        ctx,
        timeline,
        verdict,
        probe,
        killed_at=killed_at,
        restarted_at=restarted_at,
        back_at=back_at,
        local=local,
    )


def _rehydrating(ctx: DrillContext) -> bool:
    sink = ctx.sink(REGION, "redis")
    return sink.get("store_state") == "rehydrating"


def _wait_local(load: HttpLoad, local: str, timeout_s: float) -> float:
    """Seconds until the last answers all come from the local Redis again (NaN: never)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        recent = [s for s in load.samples[-20:] if s.status == OK]
        if len(recent) >= 10 and all(s.store == local for s in recent):
            return time.monotonic() - began
        time.sleep(0.25)
    return float("nan")


def _judge(
    ctx: DrillContext,
    timeline: Timeline,
    verdict: Verdict,
    probe: ValueProbe,
    *,
    killed_at: float,
    restarted_at: float,
    back_at: float,
    local: str,
) -> None:
    samples = timeline.samples
    during = within(samples, killed_at, restarted_at)
    after = [] if math.isnan(back_at) else within(samples, back_at, math.inf)
    switch = first_time(timeline, killed_at, lambda s: s.status == OK and s.store != local)
    verdict.figure("switch_to_fallback_s", switch)
    verdict.figure("redis_down_s", restarted_at - killed_at)
    verdict.figure("back_to_local_after_restart_s", back_at - restarted_at)
    verdict.figure("fault_p99_ms", percentile([s.latency_s * 1e3 for s in during], 0.99))
    verdict.figure("after_p99_ms", percentile([s.latency_s * 1e3 for s in after], 0.99))
    verdict.figure("requests", len(samples))
    fallback = sum(1 for s in during if s.status == OK and s.store and s.store != local)
    verdict.check(
        "errors while Redis is down",
        error_rate(during) <= 0.01,
        target="<= 1 %",
        measured=f"{100 * error_rate(during):.2f} % of {len(during)}",
    )
    verdict.check(
        "fallback served while Redis is down",
        fallback > 0,
        target="answers from the fallback chain (DynamoDB, then the other region)",
        measured=f"{fallback} answers",
    )
    judge_recovery(verdict, probe, after, back_s=back_at, since_s=restarted_at, since="the restart")
    problems, _ = ctx.settle(60, targets=[(REGION, "redis")])
    verdict.check(
        "rehydrated Redis equals the oracle",
        not problems,
        target="0 mismatches",
        measured=f"{len(problems)} {problems[:2]}",
    )
