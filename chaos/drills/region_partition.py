"""``region-partition``: the network between serving and one region's Redis (eu-west) degrades,
then splits, then heals, under steady serving load.

The serving path reaches eu-west's Redis through a TCP fault proxy (``chaos.proxy``, which works
where the kernel has no netem qdisc); the sinks keep writing to the real Redis, so only
reads see the fault. The region apps are redeployed on a topology in which eu-west's Redis port
is the proxy's, and the normal deployment is restored at the end, whatever happens.

Faults, in order: a delay of three times the local Redis step's timeout (so every local read
times out), a blackhole (a partition: connections hang), then heal. While faulty, eu-west must
answer 200 within the request deadline from the rest of the chain (its DynamoDB replica or
us-east), its Redis breaker must open, no present value may differ from the oracle, and at most
1 % of requests may fail; after the heal it must read its local Redis again, with no errors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

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
from chaos.exceptions import DrillSetupFailed
from chaos.load import HttpLoad, Sample
from chaos.proxy import FaultProxy
from chaos.report import Verdict
from chaos.timeline import OK, Sampler, Timeline, error_rate, percentile, within
from regions.config import RegionTopology
from serve_apps.config import Limits, StoreTimeouts

REGION = "eu-west"
LOCAL = f"redis-{REGION}"
BREAKER = f"breaker {LOCAL}"  # gauge: 0 closed, 0.5 half open, 1 open
_BREAKER_LEVEL = {"closed": 0.0, "half_open": 0.5, "open": 1.0}
DEADLINE_S = Limits().default_deadline_ms / 1000  # the load's requests name no deadline
SLACK_S = 0.05  # ingress and scheduling on top of the chain's own deadline
# The local Redis step's timeout: its cap, or its share of a fresh request's budget if smaller.
LOCAL_STEP_S = StoreTimeouts().redis_read_s(0, DEADLINE_S)
DELAY_MS = 3 * LOCAL_STEP_S * 1000
NOTE = (
    "network fault by a TCP fault proxy (chaos/proxy.py) between serving and redis-eu-west, not "
    "tc netem: this kernel has no netem qdisc ('Specified qdisc kind is unknown')"
)


@dataclass(frozen=True)
class Marks:
    """Timeline seconds of each switch; ``back_s`` is NaN when local reads never resumed."""

    delay_s: float
    blackhole_s: float
    healed_s: float
    back_s: float


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    ledger, accepted = warm_up(ctx, "region_partition", events=2_000, seed=909)
    users = busiest_users(ledger, 40)
    home = ctx.settings.topology.get(REGION)
    verdict.note(NOTE)
    with FaultProxy(home.redis_host, home.redis_port) as proxy:
        try:
            _deploy(ctx, _through_proxy(ctx.settings.topology, proxy.port))
            _check_proxied(proxy)
            with (
                Sampler(timeline, _breaker_probe(ctx), interval_s=0.25),
                ValueProbe(ctx, REGION, users, accepted) as probe,
                serving_load(ctx, REGION, users, pick(ctx, 100, 200)) as load,
            ):
                marks = _inject(ctx, timeline, proxy, load)
        finally:
            proxy.heal()
            _deploy(ctx, ctx.settings.topology)  # the normal deployment, whatever happened
        stats = proxy.stats()
    timeline.add_load(load.samples, load.started_at)
    verdict.figure("delay_ms", DELAY_MS)
    verdict.figure("proxy_connections", stats.accepted)
    verdict.figure("proxy_bytes", f"{stats.bytes_up} up, {stats.bytes_down} down")
    _judge(timeline, verdict, probe, marks)


def _through_proxy(topology: RegionTopology, port: int) -> RegionTopology:
    """``topology`` with only eu-west's Redis reached at the proxy's port."""
    regions = tuple(
        r.model_copy(update={"redis_port": port}) if r.name == REGION else r for r in topology
    )
    return RegionTopology(regions=regions)


def _deploy(ctx: DrillContext, topology: RegionTopology) -> None:
    """Every region's app on ``topology``, deployed as ``freshline serve up`` does, and ready."""
    from cluster import serving

    serving.serve_up(ctx.settings.model_copy(update={"topology": topology}))
    ctx.connect()  # serve_up ends this process's Ray connection when it is done
    for region in topology.names:
        ctx.wait_ready(region, timeout_s=120)


def _check_proxied(proxy: FaultProxy, timeout_s: float = 20) -> None:
    """The premise: eu-west's reads go through the proxy (its readiness probe reads Redis)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if proxy.stats().bytes_down > 0:
            return
        time.sleep(0.25)
    raise DrillSetupFailed(f"serving never read {LOCAL} through the fault proxy")


def _breaker_probe(ctx: DrillContext) -> Callable[[], Mapping[str, float]]:
    url = f"http://127.0.0.1:{ctx.serve_port}/{REGION}/v1/stores"
    headers = {"x-api-key": ctx.api_key}

    def probe() -> dict[str, float]:
        breakers = httpx.get(url, headers=headers, timeout=2.0).json()["breakers"]
        return {BREAKER: _BREAKER_LEVEL.get(breakers.get(LOCAL), math.nan)}

    return probe


def _inject(ctx: DrillContext, timeline: Timeline, proxy: FaultProxy, load: HttpLoad) -> Marks:
    fault_s = pick(ctx, 15, 60)
    sleep_until(timeline, timeline.now_s() + 5)  # a baseline of local reads through the proxy
    delay_s = timeline.now_s()
    proxy.delay(DELAY_MS)
    sleep_until(timeline, delay_s + fault_s)
    blackhole_s = timeline.now_s()
    proxy.blackhole()
    sleep_until(timeline, blackhole_s + fault_s)
    healed_s = timeline.now_s()
    proxy.heal()
    timeline.fault(f"{LOCAL} +{DELAY_MS:.0f} ms each way", delay_s, blackhole_s)
    timeline.fault(f"{LOCAL} partitioned", blackhole_s, healed_s)
    back_s = healed_s + _wait_local(load, timeout_s=pick(ctx, 60, 120))
    sleep_until(timeline, (timeline.now_s() if math.isnan(back_s) else back_s) + pick(ctx, 8, 30))
    return Marks(delay_s, blackhole_s, healed_s, back_s)


def _wait_local(load: HttpLoad, timeout_s: float) -> float:
    """Seconds until the last answers all come from the local Redis again (NaN: never)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        recent = [s for s in load.samples[-20:] if s.status == OK]
        if len(recent) >= 10 and all(s.store == LOCAL for s in recent):
            return time.monotonic() - began
        time.sleep(0.25)
    return math.nan


def _not_local(sample: Sample) -> bool:
    return sample.status == OK and sample.store != LOCAL


def _late(samples: Sequence[Sample]) -> int:
    return sum(1 for s in samples if s.status == OK and s.latency_s > DEADLINE_S + SLACK_S)


def _shares(samples: Sequence[Sample]) -> str:
    counts: dict[str, int] = {}
    for s in samples:
        if s.status == OK:
            counts[s.store or "?"] = counts.get(s.store or "?", 0) + 1
    total = sum(counts.values()) or 1
    return ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in sorted(counts.items()))


def _breaker_opened(timeline: Timeline, start_s: float, end_s: float) -> float:
    """Seconds from ``start_s`` to the first sample of the breaker open (NaN: not seen)."""
    seen = [t for t, v in timeline.gauges.get(BREAKER, []) if start_s <= t < end_s and v == 1.0]
    return min(seen) - start_s if seen else math.nan


def _judge(timeline: Timeline, verdict: Verdict, probe: ValueProbe, marks: Marks) -> None:
    samples = timeline.samples
    phases = {
        "before": within(samples, 0, marks.delay_s),
        "delay": within(samples, marks.delay_s, marks.blackhole_s),
        "partition": within(samples, marks.blackhole_s, marks.healed_s),
        "after": [] if math.isnan(marks.back_s) else within(samples, marks.back_s, math.inf),
    }
    for name, group in phases.items():
        verdict.figure(f"{name}_p99_ms", percentile([s.latency_s * 1e3 for s in group], 0.99))
        verdict.figure(f"{name}_stores", _shares(group))
    verdict.figure("switch_s", first_time(timeline, marks.delay_s, _not_local))
    verdict.figure("partition_switch_s", first_time(timeline, marks.blackhole_s, _not_local))
    verdict.figure("back_to_local_after_heal_s", marks.back_s - marks.healed_s)
    _judge_faults(timeline, verdict, phases, marks)
    judge_recovery(
        verdict,
        probe,
        phases["after"],
        back_s=marks.back_s,
        since_s=marks.healed_s,
        since="the heal",
    )


def _judge_faults(
    timeline: Timeline, verdict: Verdict, phases: Mapping[str, list[Sample]], marks: Marks
) -> None:
    for name in ("delay", "partition"):
        group = phases[name]
        verdict.check(
            f"errors during the {name}",
            bool(group) and error_rate(group) <= 0.01,
            target="<= 1 %",
            measured=f"{100 * error_rate(group):.2f} % of {len(group)}",
        )
    faulty = phases["delay"] + phases["partition"]
    late = _late(faulty)
    verdict.check(
        "answered within the deadline",
        bool(faulty) and late <= 0.01 * len(faulty),
        target=f"<= 1 % of 200s slower than {DEADLINE_S * 1e3:.0f} ms + {SLACK_S * 1e3:.0f} ms",
        measured=f"{late} of {len(faulty)}",
    )
    chain = [s for s in faulty if s.status == OK]
    rest = sum(1 for s in chain if s.store not in (LOCAL, "defaults", ""))
    verdict.check(
        "served by the replica or the other region",
        bool(chain) and rest >= 0.99 * len(chain),
        target=f">= 99 % of answers from dynamodb-{REGION} or us-east (not defaults)",
        measured=f"{rest} of {len(chain)}",
    )
    opened = {
        "delay": _breaker_opened(timeline, marks.delay_s, marks.blackhole_s),
        "partition": _breaker_opened(timeline, marks.blackhole_s, marks.healed_s),
    }
    verdict.figure("breaker_open_after_s", opened["delay"])
    verdict.check(
        f"{LOCAL} breaker opened",
        not any(math.isnan(v) for v in opened.values()),
        target="seen open in both the delay and the partition",
        measured=", ".join(f"{k}: {v:.2f} s" for k, v in opened.items()),
    )
