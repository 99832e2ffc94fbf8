"""``consumer-kill``: consumer actors are SIGKILLed three times while events stream in.

Ray restarts each one; it restores its tiles and watermarks from the changelog and committed
offsets (docs/pipeline.md). Afterwards every window value in every region and store must equal
the oracle: zero missing, zero double-counted. Reported: each restart's time.
"""

from __future__ import annotations

from actors.runtime import NAMESPACE
from chaos import faults
from chaos.context import DrillContext
from chaos.drills.base import generator, in_background, pick, pipeline_probe, sleep_until
from chaos.report import Verdict
from chaos.timeline import Sampler, Timeline

KILLS = 3


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    rate = pick(ctx, 600, 1_000)
    seconds = pick(ctx, 24, 60)
    config = generator("consumer_kill", rate=rate, events=int(rate * seconds), seed=202)
    restarts: list[float] = []
    with (
        Sampler(timeline, pipeline_probe(ctx)),
        in_background(lambda: ctx.produce(config, config.run_id)) as produced,
    ):
        for i in range(KILLS):
            sleep_until(timeline, 3 + i * (seconds - 6) / KILLS)
            began = timeline.now_s()
            victim = f"fl-consumer-{i % ctx.consumers}"
            _, restart_s = faults.kill_actor_process(victim, NAMESPACE)
            timeline.fault(f"kill {victim}", began)
            restarts.append(restart_s)
        report, ledger = produced.result(timeout=seconds * 4 + 120)
    problems, settle_s = ctx.settle(pick(ctx, 180, 300))
    for i, restart_s in enumerate(restarts):
        verdict.figure(f"restart_{i + 1}_s", restart_s)
    verdict.figure("events_acked", report.acked)
    verdict.figure("settle_after_stream_s", settle_s)
    verdict.check(
        "consumers restarted",
        len(restarts) == KILLS,
        target=f"{KILLS} kills, each back in a new process",
        measured=", ".join(f"{r:.1f} s" for r in restarts),
    )
    verdict.check(
        "every event acknowledged",
        report.failed == 0 and len(ledger) == report.acked,
        target="0 failed sends",
        measured=f"{report.failed} failed, {report.acked} acked",
    )
    verdict.check(
        "every region and store equals the oracle",
        not problems,
        target="0 missing, 0 double-counted",
        measured=f"{len(problems)} mismatches {problems[:2]}",
    )
