"""``region-down``: every us-east Serve replica is killed at once under load sent to us-east's
front door (cluster/services/haproxy.py).

The front door's health checks must see the region gone and send its reads to eu-west (the next
region in the failover order), which answers them: reads keep succeeding within a second of the
kill, none fails after that first second, every answer says which region served it
(``x-freshline-served-by``), and us-east serves again once Serve has replaced its replicas.
"""

from __future__ import annotations

import math
import time

from chaos.context import DrillContext, busiest_users
from chaos.drills.base import pick, sleep_until, warm_up
from chaos.faults import serve_replicas
from chaos.load import HttpLoad, LoadSpec, Sample
from chaos.report import Verdict
from chaos.timeline import OK, Timeline, within
from features.errors import StackError

REGION = "us-east"
FAILOVER = "eu-west"


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    ledger, _ = warm_up(ctx, "region_down", events=1_000, seed=707)
    users = busiest_users(ledger, 40)
    door = ctx.settings.front_door.ports[ctx.settings.topology.names.index(REGION)]
    spec = LoadSpec("127.0.0.1", door, ctx.feature_requests(REGION, users), rate=50)
    with HttpLoad(spec) as probe:
        sleep_until(timeline, timeline.now_s() + pick(ctx, 3, 10))
        killed_at = timeline.now_s()
        returned_s = _kill_every_replica(REGION)
        returned_at = killed_at + returned_s
        timeline.fault(f"every {REGION} replica killed", killed_at, returned_at)
        sleep_until(timeline, returned_at + pick(ctx, 5, 15))
        ended = timeline.now_s()
    timeline.add_load(probe.samples, probe.started_at)
    _judge(verdict, timeline.samples, killed_at, returned_at, ended)


def _judge(
    verdict: Verdict, samples: list[Sample], killed_at: float, returned_at: float, ended: float
) -> None:
    failed_over = [s for s in within(samples, killed_at, ended) if _from(s, FAILOVER)]
    failover_s = failed_over[0].sent_s - killed_at if failed_over else math.nan
    first_second = within(samples, killed_at, killed_at + 1.0)
    later = within(samples, killed_at + 1.0, ended)
    back = [s for s in within(samples, returned_at, ended) if _from(s, REGION)]
    verdict.figure("replicas_returned_s", returned_at - killed_at)
    verdict.figure("failover_s", failover_s)
    verdict.figure("errors_in_first_second", sum(1 for s in first_second if s.status != OK))
    verdict.figure("served_by_failover", len(failed_over))
    verdict.check(
        f"reads fail over to {FAILOVER}",
        failover_s <= 1.0,
        target=f"an answer from {FAILOVER} within 1 s of the kill",
        measured=f"{failover_s:.2f} s",
    )
    errors = [s for s in later if s.status != OK]
    verdict.check(
        "no errors after the first second",
        bool(later) and not errors,
        target="0 errors from 1 s after the kill to the end",
        measured=f"{len(errors)} of {len(later)}",
    )
    verdict.check(
        f"{REGION} serves again",
        bool(back),
        target=f"answers from {REGION} once its replicas returned",
        measured=f"{len(back)} answers",
    )


def _from(sample: Sample, region: str) -> bool:
    return sample.status == OK and sample.served_by == region


def _kill_every_replica(app: str, timeout_s: float = 120) -> float:
    """``ray.kill`` every replica of ``app`` at once; return the seconds until Serve has as many
    running again, none of them a killed one."""
    import ray

    before = serve_replicas(app)
    if not before:
        raise StackError(f"no running replica of Serve application {app!r}")
    began = time.monotonic()
    for victim in before:
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    while time.monotonic() < began + timeout_s:
        now = serve_replicas(app)
        if len(now) >= len(before) and not set(now) & set(before):
            return time.monotonic() - began
        time.sleep(0.2)
    raise StackError(f"Serve did not replace the replicas of {app} within {timeout_s:.0f} s")
