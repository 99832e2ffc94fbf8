"""``poison-flood``: a tenth of the stream is malformed or late.

Every refused event must land in the dead-letter topic with its reason (matched to the ledger by
source partition and offset), no valid event may be dead-lettered or lost, and the throughput
cost of the poison is reported against a clean stream of the same size in the same run.
"""

from __future__ import annotations

import time

from chaos import verify
from chaos.context import DrillContext
from chaos.drills.base import generator, pick
from chaos.report import Verdict
from chaos.timeline import Sampler, Timeline
from cluster.events import GeneratorConfig, LedgerRecord

MALFORMED_SHARE = 0.09
LATE_SHARE = 0.01
INGESTED = ("valid", "out_of_order")


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    events = int(pick(ctx, 8_000, 40_000))
    clean = generator("flood_clean", rate=20_000, events=events, seed=404)
    poison = generator(
        "flood_poison",
        rate=20_000,
        events=events,
        seed=405,
        malformed_share=MALFORMED_SHARE,
        late_share=LATE_SHARE,
        late_warmup_events=events // 10,
    )
    with Sampler(timeline, lambda: {"events in": _events_in(ctx)}):
        clean_s, _ = _timed_run(ctx, timeline, clean)
        poison_s, ledger = _timed_run(ctx, timeline, poison)
    refused = [r for r in ledger if r.kind not in INGESTED]
    mine = _dead_letters_of(ctx, ledger, expected=len(refused), timeout_s=pick(ctx, 90, 180))
    wrong = [
        (r.kind, mine.get((r.partition, r.offset)))
        for r in refused
        if mine.get((r.partition, r.offset)) != r.kind
    ]
    problems, _ = ctx.settle(pick(ctx, 120, 240))
    verdict.figure("events_per_run", events)
    verdict.figure("clean_events_per_s", events / clean_s)
    verdict.figure("poisoned_events_per_s", events / poison_s)
    verdict.figure("throughput_cost_pct", 100 * (1 - clean_s / poison_s))
    verdict.figure("refused", len(refused))
    verdict.check(
        "poison share",
        len(refused) >= 0.08 * len(ledger),
        target="about 10 % malformed or late",
        measured=f"{100 * len(refused) / max(1, len(ledger)):.1f} %",
    )
    verdict.check(
        "every refused event dead-lettered with its reason",
        not wrong,
        target="0 without their reason",
        measured=f"{len(wrong)} {wrong[:3]}",
    )
    verdict.check(
        "no valid event dead-lettered",
        len(mine) == len(refused),
        target=f"{len(refused)} dead letters from this run",
        measured=len(mine),
    )
    verdict.check(
        "no valid event lost",
        not problems,
        target="every region and store equals the oracle",
        measured=f"{len(problems)} mismatches {problems[:2]}",
    )


def _events_in(ctx: DrillContext) -> float:
    return float(sum(c["events_in"] for c in ctx.pipeline_status()["consumers"]))


def _timed_run(
    ctx: DrillContext, timeline: Timeline, config: GeneratorConfig
) -> tuple[float, list[LedgerRecord]]:
    """Produce ``config`` and time it until the consumers have read every event of it."""
    before = _events_in(ctx)
    began = timeline.now_s()
    _, ledger = ctx.produce(config, config.run_id)
    deadline = time.monotonic() + 180
    # A restarted consumer starts its counter again: the deadline keeps a lost count from hanging.
    while _events_in(ctx) < before + len(ledger) and time.monotonic() < deadline:
        time.sleep(0.1)
    if config.malformed_share:
        timeline.fault("poisoned stream", began)
    return timeline.now_s() - began, ledger


def _dead_letters_of(
    ctx: DrillContext, ledger: list[LedgerRecord], expected: int, timeout_s: float
) -> dict[tuple[int, int], str]:
    """The reasons of this run's dead letters, by source (partition, offset)."""
    ours = {(r.partition, r.offset) for r in ledger}
    deadline = time.monotonic() + timeout_s
    while True:
        letters = {
            (int(h["source.partition"]), int(h["source.offset"])): h["reason"]
            for h in verify.dead_letters(ctx.bootstrap)
        }
        mine = {k: v for k, v in letters.items() if k in ours}
        if len(mine) >= expected or time.monotonic() > deadline:
            return mine
        time.sleep(2)
