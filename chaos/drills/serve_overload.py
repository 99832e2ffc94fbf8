"""``serve-overload``: serving is driven past its capacity through the region's front door and
one of its replicas is killed.

Excess requests must be shed quickly with 503 and ``Retry-After`` rather than queued, accepted
requests must keep a bounded latency, and Serve must replace the killed replica by itself. All
load goes to us-east's front door (cluster/services/haproxy.py), as clients' does: the door admits
``maxconn`` requests to Serve and refuses the rest itself after its short queue. Refusals are
reported per layer that sent them: the front door (``x-freshline-served-by: front-door``), Serve's
own backpressure (a 503 without a gate), and our gates (``x-freshline-shed``).

The flood is 256 clients that honour ``Retry-After`` (as the header asks; twice what the
region's replicas admit, each wanting an answer continuously), from Debian's ``wrk``
(chaos/wrk.py), so that no Python generator's loop lag is in it. wrk cannot time one answer apart
from another, so the drill's Python probe (50 requests/s, open loop, timed from each scheduled
send) judges: its refusals and accepted answers during the flood are the per-answer figures. After
recovery, a second wrk flood of clients that ignore ``Retry-After`` and ask again at once is
measured and reported, not judged: what those clients get depends on the machine's cores more
than on the shedding policy.
"""

from __future__ import annotations

import math

from chaos import faults
from chaos.context import DrillContext, busiest_users
from chaos.drills.base import pick, sleep_until, warm_up
from chaos.load import DEFAULTS, HttpLoad, LoadSpec, Sample
from chaos.report import Verdict
from chaos.timeline import OK, SHED, Timeline, error_rate, percentile, within
from chaos.wrk import WrkFlood, WrkSummary

REGION = "us-east"
# Twice what the region's two replicas admit by default (32 in flight + 32 queued each,
# serve_apps.config.Limits), and many times what its front door lets through (maxconn 8).
OVERLOAD_CONCURRENCY = 256


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    ledger, _ = warm_up(ctx, "overload", events=1_000, seed=606)
    users = busiest_users(ledger, 40)
    overload_s = pick(ctx, 15, 40)
    requests = ctx.feature_requests(REGION, users)
    door = f"http://127.0.0.1:{ctx.door_port(REGION)}"
    with HttpLoad(LoadSpec("127.0.0.1", ctx.door_port(REGION), requests, rate=50)) as probe:
        # The warm-up ran on this timeline too: the baseline is 5 s of probe load from here.
        sleep_until(timeline, timeline.now_s() + 5)
        flood_s = overload_s + 30  # wrk's own bound; the block below stops it
        with WrkFlood(
            door, requests, connections=OVERLOAD_CONCURRENCY, max_s=flood_s, honor_retry_after=True
        ) as flood:
            began = timeline.now_s()
            sleep_until(timeline, began + overload_s / 3)
            killed_at = timeline.now_s()
            victim, replaced_s = faults.kill_serve_replica(REGION)
            timeline.fault(f"kill {victim.split('#')[-1]}", killed_at)
            sleep_until(timeline, began + overload_s)
        ended = timeline.now_s()
        timeline.fault("overload", began, ended)
        sleep_until(timeline, ended + pick(ctx, 10, 20))
        rude, rude_began, rude_ended = _rude_flood(ctx, timeline, users)
        sleep_until(timeline, rude_ended + 3)
    timeline.add_load(probe.samples, probe.started_at)
    _report_rude_flood(verdict, rude, within(timeline.samples, rude_began, rude_ended))
    before = within(timeline.samples, 0, began)
    during = within(timeline.samples, began, ended)
    after = within(timeline.samples, ended + 3, rude_began)
    _report_flood(verdict, flood.summary)
    _judge_overload(verdict, before, during, after, flood.summary)
    verdict.figure("replica_replaced_s", replaced_s)
    shed = [s for s in during if s.status == SHED]
    _report_shed_by_window(verdict, shed, killed_at, replaced_s, 0.0)
    _report_generators(verdict, probe=probe)
    verdict.check(
        "the killed replica was replaced",
        not math.isnan(replaced_s),
        target="a new replica at the same count",
        measured=f"{replaced_s:.1f} s",
    )
    verdict.check(
        "healthy after the overload",
        bool(after) and error_rate(after) == 0.0,
        target="0 errors at the baseline rate",
        measured=f"{sum(1 for s in after if s.status != OK)} of {len(after)}",
    )


def _judge_overload(
    verdict: Verdict,
    before: list[Sample],
    during: list[Sample],
    after: list[Sample],
    flood: WrkSummary,
) -> None:
    """The probe's answers judge the flood (wrk cannot tell one answer's latency from another's):
    refusals quick and with Retry-After (the flood's too), accepted answers quick and from a
    store."""
    shed = [s for s in during if s.status == SHED]
    bare = flood.statuses.get(SHED, 0) - flood.retry_after
    base_p99 = percentile([s.latency_s * 1e3 for s in before if s.status == OK], 0.99)
    load_p99 = percentile([s.latency_s * 1e3 for s in during if s.status == OK], 0.99)
    shed_p99 = percentile([s.latency_s * 1e3 for s in shed], 0.99)
    verdict.figure("probe_shed_share_pct", 100 * len(shed) / max(1, len(during)))
    verdict.figure("baseline_p99_ms", base_p99)
    verdict.figure("accepted_p99_under_overload_ms", load_p99)
    verdict.figure("shed_p99_ms", shed_p99)
    verdict.check(
        "excess shed with 503 and Retry-After",
        bool(shed) and all(s.retry_after for s in shed) and bare == 0,
        target="503s, every one with Retry-After",
        measured=f"probe: {len(shed)} shed, {sum(1 for s in shed if s.retry_after)} with "
        f"Retry-After; flood: {flood.statuses.get(SHED, 0)} shed, {bare} without",
    )
    verdict.check(
        "shedding is quick",
        shed_p99 <= 250,
        target="p99 of a 503 <= 250 ms",
        measured=f"{shed_p99:.1f} ms",
    )
    verdict.check(
        "accepted requests keep their latency",
        load_p99 <= max(10 * base_p99, 500.0),
        target="p99 <= max(10 x baseline, 500 ms)",
        measured=f"{load_p99:.1f} ms (baseline {base_p99:.1f} ms)",
    )
    answered = [s for s in (*during, *after) if s.status == OK]
    defaults = sum(1 for s in answered if s.store == DEFAULTS)
    verdict.figure("accepted_defaults_pct", 100 * defaults / max(1, len(answered)))
    verdict.check(
        # Every store is healthy: a default is the replica failing its own stores. A fast
        # default would pass the latency check while serving the model nothing.
        "accepted answers come from a store",
        bool(answered) and defaults <= 0.01 * len(answered),
        target="<= 1% defaults during and after the flood",
        measured=f"{defaults} defaults of {len(answered)}",
    )


def _report_flood(verdict: Verdict, flood: WrkSummary) -> None:
    """Figures only: what the polite flood sent and got (wrk's counts and its latency over every
    answer, refused or not)."""
    verdict.figure("flood_requests", flood.requests)
    verdict.figure("flood_rps", flood.requests / max(1e-9, flood.duration_s))
    verdict.figure("flood_goodput_rps", flood.statuses.get(OK, 0) / max(1e-9, flood.duration_s))
    verdict.figure("shed_share_pct", 100 * flood.statuses.get(SHED, 0) / max(1, flood.requests))
    verdict.figure("flood_wrk_p99_ms", flood.p99_ms)
    verdict.figure("flood_socket_errors", flood.socket_errors)


def _rude_flood(
    ctx: DrillContext, timeline: Timeline, users: list[str]
) -> tuple[WrkSummary, float, float]:
    """wrk's flood of clients that ask again at once; its summary and its window."""
    began = timeline.now_s()
    seconds = pick(ctx, 8, 20)
    url = f"http://127.0.0.1:{ctx.door_port(REGION)}"
    requests = ctx.feature_requests(REGION, users)
    with WrkFlood(url, requests, connections=OVERLOAD_CONCURRENCY, max_s=seconds + 30) as rude:
        sleep_until(timeline, began + seconds)
    ended = timeline.now_s()
    timeline.fault("flood ignoring Retry-After", began, ended)
    return rude.summary, began, ended


def _report_generators(verdict: Verdict, **loads: HttpLoad) -> None:
    """Figures only: each generator's own loop delay, part of every latency it records on a
    2-core box, and the requests it sent again because a proxy reload closed their idle
    keep-alive connection (chaos.load.StaleConnection)."""
    for name, load in loads.items():
        verdict.figure(f"{name}_generator_lag_p99_ms", percentile(load.own_lag_ms, 0.99))
        verdict.figure(f"{name}_stale_connection_retries", load.stale_retries)


def _report_shed_by_window(
    verdict: Verdict, shed: list[Sample], killed_at: float, replaced_s: float, shift_s: float
) -> None:
    """Figures only: the 503s sent while one replica was down (killed until replaced) and the
    rest, so that the kill's share of the shed latency and the overload's can be told apart.
    ``shift_s`` moves the flood's sample times onto the timeline's clock. Then the split by
    gate (:func:`_report_shed_by_gate`)."""
    replacing = (killed_at, killed_at + (0.0 if math.isnan(replaced_s) else replaced_s))
    for name, inside in (("during", True), ("outside", False)):
        latencies = [
            s.latency_s * 1e3
            for s in shed
            if (replacing[0] <= s.sent_s + shift_s <= replacing[1]) == inside
        ]
        verdict.figure(f"shed_p99_{name}_replacement_ms", percentile(latencies, 0.99))
    _report_shed_by_gate(verdict, shed)


def _report_shed_by_gate(verdict: Verdict, shed: list[Sample]) -> None:
    """Figures only: count and p99 of the 503s per layer that sent them (:func:`layer`), then
    per gate of ours (``Sample.shed_by``): a refusal at admission should be quick, one after a
    read that timed out on a lagging loop cannot be."""
    by_layer: dict[str, list[float]] = {}
    by_gate: dict[str, list[float]] = {}
    for sample in shed:
        by_layer.setdefault(layer(sample), []).append(sample.latency_s * 1e3)
        if sample.shed_by:
            by_gate.setdefault(sample.shed_by, []).append(sample.latency_s * 1e3)
    for key in (FRONT_DOOR, SERVE, GATES):
        _count_and_p99(verdict, key, by_layer.get(key, []))
    for key in _GATES:
        _count_and_p99(verdict, key, by_gate.get(key, []))


def _count_and_p99(verdict: Verdict, key: str, latencies_ms: list[float]) -> None:
    verdict.figure(f"shed_{key.replace('-', '_')}_count", len(latencies_ms))
    verdict.figure(f"shed_{key.replace('-', '_')}_p99_ms", percentile(latencies_ms, 0.99))


FRONT_DOOR, SERVE, GATES = "front-door", "serve", "gates"
_GATES = ("loop-lag", "in-flight", "late-read")


def layer(sample: Sample) -> str:
    """Which layer refused a 503: the front door (its own answer says so), one of our gates (it
    names itself in ``x-freshline-shed``), else Serve's own backpressure."""
    if sample.served_by == FRONT_DOOR:
        return FRONT_DOOR
    return GATES if sample.shed_by else SERVE


def _report_rude_flood(verdict: Verdict, flooded: WrkSummary, probed: list[Sample]) -> None:
    """Figures only: what clients that ignore Retry-After do to the region on this machine (wrk's
    counts and its latency over every answer; the probe's shed and accepted answers)."""
    verdict.figure("ignoring_retry_after_rps", flooded.requests / max(1e-9, flooded.duration_s))
    verdict.figure("ignoring_retry_after_shed", flooded.statuses.get(SHED, 0))
    verdict.figure("ignoring_retry_after_with_retry_after", flooded.retry_after)
    verdict.figure("ignoring_retry_after_wrk_p99_ms", flooded.p99_ms)
    # Connections refused, reset or timed out: a flood the front door turns away at the socket.
    verdict.figure("ignoring_retry_after_socket_errors", flooded.socket_errors)
    verdict.figure(
        "ignoring_retry_after_probe_shed_p99_ms",
        percentile([s.latency_s * 1e3 for s in probed if s.status == SHED], 0.99),
    )
    verdict.figure(
        "ignoring_retry_after_accepted_p99_ms",
        percentile([s.latency_s * 1e3 for s in probed if s.status == OK], 0.99),
    )
