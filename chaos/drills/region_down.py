"""``region-down``: every us-east Serve replica is killed at once under load sent to us-east's
front door (cluster/services/haproxy.py).

The front door's health checks must see the region gone and send its reads to eu-west (the next
region in the failover order), which answers them: reads keep succeeding within a second of the
kill, none fails after that first second, every answer says which region served it
(``x-freshline-served-by``), and us-east serves again once Serve has replaced its replicas.

The probe is a client with a deadline: 64 keep-alive connections and a 1 s timeout. Requests the
door forwarded in the instant before its checks saw the region go are held by Serve until the
region has replicas again; they fail (in the first second, by their send time). With no more
connections than those held requests, the generator's own queue would delay every later request
by seconds and measure the generator, not the failover. The drill waits (bounded, 120 s) for
us-east's first answer after its replicas return rather than a fixed time, as a busy box may
take longer to start them.
"""

from __future__ import annotations

import math
import time
from collections import Counter

from chaos.context import DrillContext, busiest_users
from chaos.drills.base import pick, sleep_until, warm_up
from chaos.faults import serve_replicas
from chaos.load import HttpLoad, LoadSpec, Sample
from chaos.report import Verdict
from chaos.timeline import OK, Timeline, within
from features.errors import StackError

REGION = "us-east"
FAILOVER = "eu-west"
CLIENT_TIMEOUT_S = 1.0


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    ledger, _ = warm_up(ctx, "region_down", events=1_000, seed=707)
    users = busiest_users(ledger, 40)
    spec = LoadSpec(
        "127.0.0.1",
        ctx.door_port(REGION),
        ctx.feature_requests(REGION, users),
        rate=50,
        connections=64,
        timeout_s=CLIENT_TIMEOUT_S,
    )
    with HttpLoad(spec) as probe:
        sleep_until(timeline, timeline.now_s() + pick(ctx, 3, 10))
        killed_at, returned_at = _kill_every_replica(REGION, timeline)
        timeline.fault(f"every {REGION} replica killed", killed_at, returned_at)
        _wait_for_region(probe, returned_at - (probe.started_at - timeline.t0))
        sleep_until(timeline, max(timeline.now_s() + 2, returned_at + pick(ctx, 5, 15)))
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
    verdict.figure("back_after_replicas_s", back[0].sent_s - returned_at if back else math.nan)
    errors = [s for s in later if s.status != OK]
    verdict.check(
        "no errors after the first second",
        bool(later) and not errors,
        target="0 errors from 1 s after the kill to the end",
        measured=f"{len(errors)} of {len(later)}{_when(errors, killed_at)}{_kinds(errors)}",
    )
    verdict.check(
        f"{REGION} serves again",
        bool(back),
        target=f"answers from {REGION} once its replicas returned",
        measured=f"{len(back)} answers",
    )


def _when(errors: list[Sample], killed_at: float) -> str:
    if not errors:
        return ""
    sent = [s.sent_s - killed_at for s in errors]
    return f" (sent {min(sent):.2f}-{max(sent):.2f} s after the kill)"


def _kinds(errors: list[Sample]) -> str:
    """What the failed answers were (status, who answered, gate or error code), most first."""
    kinds = Counter(
        f"{s.status or 'no answer'} {s.served_by or '-'} {s.shed_by or s.error or '-'}"
        for s in errors
    )
    return "".join(f"; {n} x {kind}" for kind, n in kinds.most_common(4))


def _wait_for_region(probe: HttpLoad, since_s: float, timeout_s: float = 120) -> None:
    """Until the probe has an answer from :data:`REGION` sent after ``since_s`` (on the probe's
    clock), or ``timeout_s``: the judgement then says whether it came."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(s.sent_s >= since_s and _from(s, REGION) for s in list(probe.samples)):
            return
        time.sleep(0.2)


def _from(sample: Sample, region: str) -> bool:
    return sample.status == OK and sample.served_by == region


def _kill_every_replica(
    app: str, timeline: Timeline, timeout_s: float = 120
) -> tuple[float, float]:
    """``ray.kill`` every replica of ``app`` at once; return when the kills were sent and when
    Serve had as many running again, none of them a killed one (timeline seconds). The kill time
    is taken once the replicas are listed and their handles fetched: on a busy box those calls
    take a second or more, which is not failover time."""
    import ray

    before = serve_replicas(app)
    if not before:
        raise StackError(f"no running replica of Serve application {app!r}")
    victims = [ray.get_actor(name, namespace="serve") for name in before]
    killed_at = timeline.now_s()
    for victim in victims:
        ray.kill(victim, no_restart=True)
    while timeline.now_s() < killed_at + timeout_s:
        now = serve_replicas(app)
        if len(now) >= len(before) and not set(now) & set(before):
            return killed_at, timeline.now_s()
        time.sleep(0.2)
    raise StackError(f"Serve did not replace the replicas of {app} within {timeout_s:.0f} s")
