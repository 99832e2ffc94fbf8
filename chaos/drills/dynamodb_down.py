"""``dynamodb-down``: one region's DynamoDB endpoint hangs (SIGSTOP) for a minute while events
stream in and serving reads that region. Its durable replica lags and then catches up with
nothing lost; serving, reading a healthy Redis, does not notice.
"""

from __future__ import annotations

import time

from chaos import faults
from chaos.context import DrillContext, busiest_users
from chaos.drills.base import (
    gauge_back_to,
    gauge_max,
    generator,
    in_background,
    pick,
    pipeline_probe,
    serving_load,
    sleep_until,
    warm_up,
)
from chaos.report import Verdict
from chaos.timeline import OK, Sampler, Timeline, error_rate, within

REGION = "eu-west"


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    ledger, _ = warm_up(ctx, "dynamodb_down_warm", events=1_000, seed=801)
    users = busiest_users(ledger, 40)
    down_s = pick(ctx, 20, 60)
    rate = pick(ctx, 300, 500)
    service = ctx.process_service(f"dynamodb-{REGION}")
    # The stream runs at its rate before the fault begins, so the judged window changes one
    # thing: a generator and a pipeline starting up in the same second as the fault would add a
    # CPU burst on this machine's shared cores that is not the outage's doing.
    lead_s = 3.0
    events = int(rate * (lead_s + down_s * 0.75))
    config = generator("dynamodb_down", rate=rate, events=events, seed=802)
    with Sampler(timeline, pipeline_probe(ctx)), serving_load(ctx, REGION, users, 100) as load:
        sleep_until(timeline, timeline.now_s() + 3)  # a baseline after the warm-up
        with in_background(lambda: ctx.produce(config, config.run_id)) as produced:
            sleep_until(timeline, timeline.now_s() + lead_s)
            applied_before = ctx.sink(REGION, "dynamodb")["applied_records"]
            began = timeline.now_s()
            with faults.stopped(service):
                report, _ = produced.result(timeout=down_s * 4 + 60)
                sink_during = ctx.sink(REGION, "dynamodb")
                sleep_until(timeline, began + down_s)
            ended = timeline.now_s()
        timeline.fault(f"dynamodb-{REGION} SIGSTOP", began, ended)
        problems, drain_s = ctx.settle(pick(ctx, 120, 240))
        time.sleep(2)
    timeline.add_load(load.samples, load.started_at)
    during = within(timeline.samples, began, ended)
    local = f"redis-{REGION}"
    verdict.figure("down_s", ended - began)
    verdict.figure("events_streamed", report.acked)  # from lead_s before the fault
    verdict.figure("peak_lag_records", gauge_max(timeline, f"lag {REGION}/dynamodb", began, ended))
    # Until every store equals the oracle (including the comparison's own reads, ~2 s polls);
    # the sink's own catch-up is its committed lag back at 0.
    verdict.figure("catch_up_s", drain_s)
    verdict.figure("sink_caught_up_s", gauge_back_to(timeline, f"lag {REGION}/dynamodb", 0, ended))
    # A sink blocked in a call to the hung endpoint reports its last figures: no record applied
    # while events were produced is the lag (its lag gauge is refreshed between calls only).
    stalled = sink_during["applied_records"] == applied_before
    verdict.check(
        "the DynamoDB sink lagged",
        report.acked > 0 and (stalled or sink_during["store_failures"] > 0),
        target="applied nothing (or backed off) while the endpoint hung",
        measured=f"{sink_during['applied_records'] - applied_before} records applied during the "
        f"fault, failures={sink_during['store_failures']}, {report.acked} events streamed",
    )
    verdict.check(
        "caught up, nothing lost",
        not problems,
        target="every region and store equals the oracle",
        measured=f"{len(problems)} mismatches after {drain_s:.1f} s {problems[:2]}",
    )
    answered = [s for s in during if s.status == OK]
    local_pct = 100 * sum(1 for s in answered if s.store == local) / max(1, len(answered))
    verdict.figure("served_by_local_redis_pct", local_pct)
    # Not 100 %: a local read that misses its budget share on a loaded machine moves on down the
    # chain, with or without this fault; the fault must not add errors or move the bulk.
    verdict.check(
        "serving unaffected",
        bool(during) and error_rate(during) == 0.0 and local_pct >= 99.0,
        target=f"0 errors, >= 99 % of answers from {local}",
        measured=f"{100 * error_rate(during):.2f} % errors of {len(during)}, "
        f"{local_pct:.2f} % from {local}",
    )
