"""``alerts``: the shipped alert rules, evaluated by a real Prometheus on the metrics it scrapes
from the stack, fire for two real faults and resolve after them.

Prometheus (``chaos/prometheus.py``) scrapes the Ray metrics endpoint every 2 s and evaluates a
copy of ``cluster/observability/alerts.yml`` whose ``for:`` durations are divided by 60 (at least
1 s); every expression, label and annotation is byte-identical to the shipped file, and the drill
checks that first. With 100 reads/s on us-east throughout:

1. baseline: no alert fires;
2. us-east's Redis is SIGSTOPped (it hangs) until ``FreshlineBreakerOpen`` fires for
   ``redis-us-east`` in us-east, then resumed: the alert must resolve;
3. eu-west's Redis refuses writes (``CLIENT PAUSE WRITE``) while events stream in until
   ``FreshlineSinkLagging`` fires for eu-west/redis (over 50,000 changelog records behind), then
   writes resume: the alert must resolve as the sink catches up.

Per alert the drill reports whether it fired, the seconds from the fault to firing (Ray's metrics
export interval, the scrape, the evaluation and the shortened ``for:``) and from recovery to
resolved. Every other alert that fired is listed with its times: rate-based alerts
(``FreshlineFreshnessTargetMissed`` after the stall, for one) keep firing for most of their
5-minute windows, which the drill reports and does not wait for.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from chaos import faults
from chaos.context import DrillContext, busiest_users
from chaos.drills.base import (
    gauge_max,
    generator,
    in_background,
    pick,
    pipeline_probe,
    serving_load,
)
from chaos.prometheus import (
    SHIPPED_RULES,
    AlertLog,
    Episode,
    Prometheus,
    drill_rules,
    rule_differences,
)
from chaos.report import Verdict
from chaos.timeline import OK, Sampler, Timeline, error_rate
from cluster.events import GeneratorConfig

SERVED = "us-east"  # its Redis hangs under the drill's reads
STALLED = "eu-west"  # its Redis refuses the sink's writes
SPEEDUP = 60  # for: 5m -> 5s, 1m -> 1s
FLOOR_MS = 1_000
# A scrape of Ray's endpoint takes 0.15-0.35 s on a quiet box and over 1 s at load 40, when a
# 1 s timeout marked the target down and every series went stale (no alert can fire on those).
SCRAPE_S = 2.0
EVAL_S = 1.0
POLL_S = 0.5
READ_RATE = 100.0
INGEST_RATE = 5_000.0
INGEST_CHUNK = 10_000  # events per generator run while the sink stalls; checked between runs
# The sink's lag counts changelog records (one per tile changed in a commit), not events: with
# the 150 users of the other drills' streams, 300,000 events at 5,000/s stayed under 46,000
# records, since commits of up to 1 s fold each user's events into a few records; with 2,000
# users, 80,000 events made 49,000. The stall streams the demo's own population instead.
STALL_USERS = 10_000
STALL_MERCHANTS = 500
PROM_LAG = "prometheus: max sink lag"
PROM_BREAKER = "prometheus: max breaker open"
PROM_FIRING = "prometheus: alerts firing"
PROM_UP = "prometheus: target up"
PROM_SCRAPE = "prometheus: scrape duration s"


@dataclass(frozen=True)
class Expected:
    """An alert a fault must fire: its figures are ``<key>_fired``, ``_fire_s``, ``_resolve_s``."""

    key: str
    alert: str
    labels: Mapping[str, str]


BREAKER = Expected(
    "breaker_open", "FreshlineBreakerOpen", {"region": SERVED, "store": f"redis-{SERVED}"}
)
LAG = Expected("sink_lagging", "FreshlineSinkLagging", {"region": STALLED, "store": "redis"})


@dataclass(frozen=True)
class Window:
    """A fault from ``began_s`` to ``ended_s``; ``resolved_s`` is when its alert left Prometheus's
    list (NaN: not within the wait)."""

    began_s: float
    ended_s: float
    resolved_s: float


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    users = _warm_up(ctx)
    shipped = SHIPPED_RULES.read_text()
    rules = drill_rules(shipped, speedup=SPEEDUP, floor_ms=FLOOR_MS)
    differences = rule_differences(shipped, rules)
    verdict.check(
        "the drill evaluates the shipped rules",
        not differences,
        target=f"expressions, labels, annotations byte-identical; only for: / {SPEEDUP}",
        measured="identical" if not differences else "; ".join(differences[:3]),
    )
    log = AlertLog()
    target = f"127.0.0.1:{ctx.settings.ray.metrics_export_port}"
    with (
        Prometheus(target, rules, scrape_s=SCRAPE_S, eval_s=EVAL_S) as prom,
        Sampler(timeline, _probe(ctx, prom)),
        serving_load(ctx, SERVED, users, READ_RATE) as load,
    ):
        scraped = _wait_scraped(prom, timeout_s=60)
        verdict.check(
            "Prometheus scrapes the stack",
            scraped,
            target="target up; serving and sink series present",
            measured="yes" if scraped else f"no: {prom.log_tail(200)}",
        )
        baseline_from = timeline.now_s()
        _watch(prom, log, timeline, lambda: False, pick(ctx, 8, 30))
        baseline_to = timeline.now_s()
        hang = _store_hang(ctx, prom, log, timeline)
        stall, produced = _sink_stall(ctx, prom, log, timeline)
        errors = prom.rule_errors()
    timeline.add_load(load.samples, load.started_at)
    _judge_baseline(verdict, log, baseline_from, baseline_to)
    verdict.check(
        "every rule evaluates",
        not errors,
        target="no rule in error (/api/v1/rules)",
        measured="none in error" if not errors else "; ".join(errors[:3]),
    )
    during = f"while redis-{SERVED} hangs"
    _judge(verdict, log, BREAKER, hang, during=during, fire_within_s=pick(ctx, 30, 60))
    during = f"while redis-{STALLED} refuses writes"
    _judge(verdict, log, LAG, stall, during=during, fire_within_s=pick(ctx, 90, 180))
    verdict.figure("events_during_stall", produced)
    verdict.figure("prometheus_peak_sink_lag", gauge_max(timeline, PROM_LAG, *_span(stall)))
    verdict.figure("scrape_max_s", gauge_max(timeline, PROM_SCRAPE, 0.0, timeline.now_s()))
    down = [v for _, v in timeline.gauges.get(PROM_UP, []) if v == 0.0]
    verdict.figure("target_down_samples", len(down))
    verdict.figure("read_error_pct", 100 * error_rate(timeline.samples))
    verdict.figure("reads", sum(1 for s in timeline.samples if s.status == OK))
    _report_all(verdict, log, hang, stall)


def _warm_up(ctx: DrillContext) -> list[str]:
    """1,000 events of the drills' small population, applied by every sink; the busiest 40 users.
    Not judged against the oracle: this drill's stall leaves 10,000 users in the topic, and the
    oracle reads every entity of the topic from every store (minutes on moto)."""
    _, ledger = ctx.produce(generator("alerts_warm", rate=5_000, events=1_000, seed=901))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if all(s["lag"] == 0 for s in ctx.pipeline_status()["sinks"]):
            break
        time.sleep(1.0)
    return busiest_users(ledger, 40)


def _span(window: Window) -> tuple[float, float]:
    return window.began_s, window.ended_s


def _probe(ctx: DrillContext, prom: Prometheus) -> Callable[[], Mapping[str, float]]:
    """The pipeline's own gauges beside what Prometheus holds of them, for the timeline: the
    difference is Ray's export interval plus the scrape."""
    pipeline = pipeline_probe(ctx)

    def probe() -> dict[str, float]:
        out = dict(pipeline())
        queries = (
            (PROM_LAG, "max(ray_freshline_sink_lag)"),
            (PROM_BREAKER, "max(ray_freshline_serving_breaker_open)"),
            (PROM_UP, "up"),
            (PROM_SCRAPE, "scrape_duration_seconds"),
        )
        for name, promql in queries:
            found = prom.query(promql)
            if found:  # absent, not NaN: a NaN sample would poison gauge_max
                out[name] = found[0][1]
        out[PROM_FIRING] = float(sum(1 for a in prom.alerts() if a.state == "firing"))
        return out

    return probe


def _wait_scraped(prom: Prometheus, timeout_s: float) -> bool:
    """Until the target is up and both serving's and the sinks' series are in the TSDB."""
    deadline = time.monotonic() + timeout_s
    wanted = (
        "up{job='freshline'} == 1",
        "ray_freshline_serving_requests_total",
        "ray_freshline_sink_lag",
    )
    while time.monotonic() < deadline:
        if all(prom.query(q) for q in wanted):
            return True
        time.sleep(POLL_S)
    return False


def _watch(
    prom: Prometheus,
    log: AlertLog,
    timeline: Timeline,
    done: Callable[[], bool],
    timeout_s: float,
) -> float:
    """Poll the active alerts into ``log`` every :data:`POLL_S` until ``done()`` or the timeout;
    returns the drill time ``done()`` first held (NaN: never)."""
    deadline = timeline.now_s() + timeout_s
    while True:
        now = timeline.now_s()
        log.observe(now, prom.alerts())
        if done():
            return now
        if now >= deadline:
            return math.nan
        time.sleep(POLL_S)


def _firing(log: AlertLog, expected: Expected) -> Callable[[], bool]:
    return lambda: log.firing_now(expected.alert, expected.labels)


def _gone(log: AlertLog, expected: Expected) -> Callable[[], bool]:
    return lambda: not log.active_now(expected.alert, expected.labels)


def _store_hang(ctx: DrillContext, prom: Prometheus, log: AlertLog, timeline: Timeline) -> Window:
    """SIGSTOP the served region's Redis until the breaker alert fires (full: at least 30 s),
    SIGCONT it, and wait for the alert to resolve."""
    service = ctx.process_service(f"redis-{SERVED}")
    with faults.stopped(service):
        began = timeline.now_s()
        fired_at = _watch(prom, log, timeline, _firing(log, BREAKER), pick(ctx, 30, 60))
        hold_until = began + pick(ctx, 0, 30)
        _watch(prom, log, timeline, lambda: timeline.now_s() >= hold_until, 60)
        ended = timeline.now_s()
    timeline.fault(f"redis-{SERVED} SIGSTOP", began, ended)
    if math.isnan(fired_at):
        return Window(began, ended, math.nan)
    resolved = _watch(prom, log, timeline, _gone(log, BREAKER), pick(ctx, 30, 60))
    return Window(began, ended, resolved)


def _sink_stall(
    ctx: DrillContext, prom: Prometheus, log: AlertLog, timeline: Timeline
) -> tuple[Window, int]:
    """Pause the stalled region's Redis writes and stream events until the sink-lag alert fires
    (or the time is up), resume writes, wait for the alert to resolve and the sink to drain.
    Returns the window and the events acknowledged during the stall."""
    limit_s = pick(ctx, 90, 180)
    admin = ctx.redis_service(STALLED).admin_client()
    stop = threading.Event()
    try:
        with faults.redis_paused(admin, limit_s + 30):
            began = timeline.now_s()
            with in_background(lambda: _stream_until(ctx, stop)) as streamed:
                fired_at = _watch(prom, log, timeline, _firing(log, LAG), limit_s)
                stop.set()
                produced = int(streamed.result(timeout=120))
            ended = timeline.now_s()
    finally:
        admin.close()
    timeline.fault(f"redis-{STALLED} CLIENT PAUSE WRITE", began, ended)
    if math.isnan(fired_at):
        return Window(began, ended, math.nan), produced
    resolved = _watch(prom, log, timeline, _gone(log, LAG), pick(ctx, 60, 120))
    _wait_drained(ctx, timeout_s=pick(ctx, 60, 120))
    return Window(began, ended, resolved), produced


def _stream_until(ctx: DrillContext, stop: threading.Event) -> int:
    """Produce :data:`INGEST_CHUNK`-event runs at :data:`INGEST_RATE` until ``stop``; returns the
    events acknowledged."""
    acked = 0
    for i in range(1_000):
        if stop.is_set():
            break
        run_id = f"alerts_stall_{i}"
        config = GeneratorConfig(
            run_id=run_id,
            seed=910 + i,
            n_users=STALL_USERS,
            n_merchants=STALL_MERCHANTS,
            rate_per_s=INGEST_RATE,
            max_events=INGEST_CHUNK,
        )
        report, _ = ctx.produce(config, run_id)
        acked += report.acked
    return acked


def _wait_drained(ctx: DrillContext, timeout_s: float) -> None:
    """Until the stalled sink has applied its backlog, so the next drill starts from a settled
    pipeline (its own warm-up checks that against the oracle)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ctx.sink(STALLED, "redis")["lag"] == 0:
            return
        time.sleep(1.0)


def _judge_baseline(verdict: Verdict, log: AlertLog, start_s: float, end_s: float) -> None:
    fired = [e.describe() for e in log.fired_between(0.0, end_s)]
    pending = [e.describe() for e in log.episodes if e.seen_s <= end_s and e.firing_s is None]
    verdict.figure("baseline_s", end_s - start_s)
    verdict.check(
        "no alert at baseline",
        not fired,
        target="none firing under the drill's reads before any fault",
        measured=", ".join(fired) or f"none firing ({len(pending)} pending: {pending[:3]})",
    )


def _judge(
    verdict: Verdict,
    log: AlertLog,
    expected: Expected,
    window: Window,
    *,
    during: str,
    fire_within_s: float,
) -> None:
    episode = log.first_firing(expected.alert, expected.labels, window.began_s)
    fired_at = math.nan if episode is None or episode.firing_s is None else episode.firing_s
    fire_s = fired_at - window.began_s
    resolve_s = window.resolved_s - window.ended_s
    verdict.figure(f"{expected.key}_fired", episode is not None)
    verdict.figure(f"{expected.key}_fire_s", fire_s)
    verdict.figure(f"{expected.key}_resolve_s", resolve_s)
    verdict.figure(f"{expected.key}_fault_s", window.ended_s - window.began_s)
    labels = ",".join(f"{k}={v}" for k, v in expected.labels.items())
    verdict.check(
        f"{expected.alert} fires {during}",
        fire_s <= fire_within_s,
        target=f"{{{labels}}} firing within {fire_within_s:.0f} s of the fault",
        measured="never" if math.isnan(fire_s) else f"{fire_s:.1f} s",
    )
    verdict.check(
        f"{expected.alert} resolves after recovery",
        not math.isnan(resolve_s),
        target="gone from /api/v1/alerts once the fault is undone",
        measured="not resolved" if math.isnan(resolve_s) else f"{resolve_s:.1f} s",
    )


def _report_all(verdict: Verdict, log: AlertLog, hang: Window, stall: Window) -> None:
    """Every alert that fired, when, relative to the fault it fired in."""
    lines = []
    for episode in log.episodes:
        if episode.firing_s is None:
            continue
        phase, window = _phase(episode.firing_s, hang, stall)
        fired = episode.firing_s - window.began_s
        lines.append(
            f"{episode.describe()}: fired {fired:.1f} s into the {phase}, {_ended(episode, window)}"
        )
    verdict.figure("alerts_fired", "; ".join(lines) or "none")
    for line in lines:
        verdict.note(line)


def _ended(episode: Episode, window: Window) -> str:
    if episode.gone_s is None:
        return "still firing at the end"
    if episode.gone_s <= window.ended_s:
        return f"gone {episode.gone_s - (episode.firing_s or 0.0):.1f} s after firing, in the fault"
    return f"gone {episode.gone_s - window.ended_s:.1f} s after recovery"


def _phase(t_s: float, hang: Window, stall: Window) -> tuple[str, Window]:
    """The fault a time belongs to: before the hang it is the baseline (times from the hang)."""
    if t_s >= stall.began_s:
        return "stall", stall
    return ("Redis hang", hang) if t_s >= hang.began_s else ("baseline (before the hang)", hang)
