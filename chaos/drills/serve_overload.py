"""``serve-overload``: serving is driven past its capacity and one of its replicas is killed.

Excess requests must be shed quickly with 503 and ``Retry-After`` rather than queued, accepted
requests must keep a bounded latency, and Serve must replace the killed replica by itself.

The judged flood is 256 clients that honour ``Retry-After`` (as the header asks; twice what
the region's replicas admit, each wanting an answer continuously). After recovery, a second flood
of clients that ignore it and ask again at once is measured and reported, not judged: every
refusal still costs a replica's event loop, so what those clients get depends on the machine's
cores more than on the shedding policy. That flood comes from Debian's ``wrk`` (chaos/wrk.py), so
no Python generator's loop lag is in its figures; the probe's answers during it are the per-answer
figures.
"""

from __future__ import annotations

import math

from chaos import faults
from chaos.context import DrillContext, busiest_users
from chaos.drills.base import pick, serving_load, sleep_until, warm_up
from chaos.load import DEFAULTS, HttpLoad, LoadSpec, ProcessLoad, Sample
from chaos.report import Verdict
from chaos.timeline import OK, SHED, Timeline, error_rate, percentile, within
from chaos.wrk import WrkFlood, WrkSummary

REGION = "us-east"
# Twice what the region's two replicas admit by default (32 in flight + 32 queued each,
# serve_apps.config.Limits).
OVERLOAD_CONCURRENCY = 256


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    ledger, _ = warm_up(ctx, "overload", events=1_000, seed=606)
    users = busiest_users(ledger, 40)
    overload_s = pick(ctx, 15, 40)
    with serving_load(ctx, REGION, users, rate=50) as probe:
        # The warm-up ran on this timeline too: the baseline is 5 s of probe load from here.
        sleep_until(timeline, timeline.now_s() + 5)
        flood = ProcessLoad(_flood_spec(ctx, users))
        with flood:
            began = timeline.now_s()  # the flood's process is up and sending
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
    flooded = flood.samples
    before = within(timeline.samples, 0, began)
    during = within(timeline.samples, began, ended)
    after = within(timeline.samples, ended + 3, rude_began)
    shed = [s for s in flooded if s.status == SHED]
    base_p99 = percentile([s.latency_s * 1e3 for s in before if s.status == OK], 0.99)
    load_p99 = percentile([s.latency_s * 1e3 for s in during if s.status == OK], 0.99)
    shed_p99 = percentile([s.latency_s * 1e3 for s in shed], 0.99)
    verdict.figure("flood_requests", len(flooded))
    verdict.figure("flood_rps", len(flooded) / max(1e-9, ended - began))
    verdict.figure("shed_share_pct", 100 * len(shed) / max(1, len(flooded)))
    verdict.figure("baseline_p99_ms", base_p99)
    verdict.figure("accepted_p99_under_overload_ms", load_p99)
    verdict.figure("shed_p99_ms", shed_p99)
    verdict.figure("replica_replaced_s", replaced_s)
    _report_shed_by_window(verdict, shed, killed_at, replaced_s, flood.started_at - timeline.t0)
    _report_generators(verdict, flood=flood, probe=probe)
    verdict.check(
        "excess shed with 503 and Retry-After",
        bool(shed) and all(s.retry_after for s in shed),
        target="503s, every one with Retry-After",
        measured=f"{len(shed)} shed, {sum(1 for s in shed if s.retry_after)} with Retry-After",
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


def _rude_flood(
    ctx: DrillContext, timeline: Timeline, users: list[str]
) -> tuple[WrkSummary, float, float]:
    """wrk's flood of clients that ask again at once; its summary and its window."""
    began = timeline.now_s()
    seconds = pick(ctx, 8, 20)
    url = f"http://127.0.0.1:{ctx.serve_port}"
    requests = ctx.feature_requests(REGION, users)
    with WrkFlood(url, requests, connections=OVERLOAD_CONCURRENCY, max_s=seconds + 30) as rude:
        sleep_until(timeline, began + seconds)
    ended = timeline.now_s()
    timeline.fault("flood ignoring Retry-After", began, ended)
    return rude.summary, began, ended


def _flood_spec(ctx: DrillContext, users: list[str]) -> LoadSpec:
    return LoadSpec(
        "127.0.0.1",
        ctx.serve_port,
        ctx.feature_requests(REGION, users),
        concurrency=OVERLOAD_CONCURRENCY,
        timeout_s=10.0,
        honor_retry_after=True,
    )


def _report_generators(verdict: Verdict, **loads: HttpLoad | ProcessLoad) -> None:
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
    """Figures only: count and p99 of the 503s per gate that sent them (``Sample.shed_by``;
    ``serve`` for Serve's own backpressure answer, which carries no gate): a refusal at admission
    should be quick, one after a read that timed out on a lagging loop cannot be."""
    by_gate: dict[str, list[float]] = {}
    for sample in shed:
        by_gate.setdefault(sample.shed_by or "serve", []).append(sample.latency_s * 1e3)
    for gate in ("loop-lag", "in-flight", "late-read", "serve"):
        latencies = by_gate.get(gate, [])
        verdict.figure(f"shed_{gate.replace('-', '_')}_count", len(latencies))
        verdict.figure(f"shed_{gate.replace('-', '_')}_p99_ms", percentile(latencies, 0.99))


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
