"""What every drill is made of: a registry entry, warm-up, load, probes and timings.

A drill is a function ``run(ctx, timeline, verdict)``: it injects one real fault into the
running system while load is applied, records what happened on the timeline, and states its
pass criteria on the verdict. Faults are always undone inside the drill (context managers), so
a drill that fails half-way leaves the stack as it found it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from chaos import verify
from chaos.context import USER_FEATURES, DrillContext, rss_mib
from chaos.load import HttpLoad, LoadSpec, Sample
from chaos.report import Verdict
from chaos.timeline import OK, Timeline, error_rate
from cluster.events import GeneratorConfig, LedgerRecord

DrillFn = Callable[[DrillContext, Timeline, Verdict], None]


@dataclass(frozen=True)
class Drill:
    name: str
    summary: str
    run: DrillFn
    in_ci: bool  # CI runs the quick version of these on every change


def pick(ctx: DrillContext, quick: float, full: float) -> float:
    return quick if ctx.quick else full


def generator(run_id: str, *, rate: float, events: int, seed: int, **extra: Any) -> GeneratorConfig:
    """Demo events for a drill: a small population, so the oracle stays cheap to recompute."""
    return GeneratorConfig(
        run_id=run_id,
        seed=seed,
        n_users=150,
        n_merchants=25,
        rate_per_s=rate,
        max_events=events,
        **extra,
    )


def warm_up(
    ctx: DrillContext, run_id: str, events: int, seed: int, timeout_s: float = 180
) -> tuple[list[LedgerRecord], list[dict[str, Any]]]:
    """Produce ``events`` and wait until every region and store equals the oracle.

    Returns the ledger and the accepted events of the whole topic (earlier runs count in the
    same windows). Raises when the system does not settle: the drill's premise is broken."""
    _, ledger = ctx.produce(generator(run_id, rate=5_000, events=events, seed=seed), run_id)
    problems, _ = ctx.settle(timeout_s)
    if problems:
        from chaos.exceptions import DrillSetupFailed

        raise DrillSetupFailed(f"the system did not settle before the fault: {problems[:3]}")
    return ledger, ctx.accepted()


def serving_load(
    ctx: DrillContext, region: str, users: Sequence[str], rate: float, connections: int = 16
) -> HttpLoad:
    spec = LoadSpec(
        "127.0.0.1",
        ctx.serve_port,
        ctx.feature_requests(region, users),
        rate=rate,
        connections=connections,
    )
    return HttpLoad(spec)


@contextmanager
def in_background(fn: Callable[[], Any]) -> Iterator[Future[Any]]:
    """Run ``fn`` in a thread for the duration of the block; the block may wait on the future."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-bg") as pool:
        yield pool.submit(fn)


def pipeline_probe(ctx: DrillContext) -> Callable[[], Mapping[str, float]]:
    """Gauges of the pipeline once a second: lag per sink, consumer lag and memory."""

    def probe() -> dict[str, float]:
        state = ctx.pipeline_status()
        out: dict[str, float] = {}
        for sink in state["sinks"]:  # summed over a (region, store)'s shards
            if sink["lag"] is not None:
                name = f"lag {sink['region']}/{sink['store']}"
                out[name] = out.get(name, 0.0) + float(sink["lag"])
        consumers = state["consumers"]
        out["consumer lag"] = float(sum(sum(c["lag"].values()) for c in consumers))
        out["consumers MiB"] = sum(rss_mib(c["pid"]) for c in consumers)
        out["events in"] = float(sum(c["events_in"] for c in consumers))
        return out

    return probe


def gauge_max(timeline: Timeline, name: str, start_s: float, end_s: float) -> float:
    values = [v for t, v in timeline.gauges.get(name, []) if start_s <= t <= end_s]
    return max(values) if values else float("nan")


def gauge_back_to(timeline: Timeline, name: str, level: float, after_s: float) -> float:
    """Seconds from ``after_s`` until the gauge first read ``level`` or less; NaN if it never
    did while it was sampled (e.g. a lag that had not drained when the drill stopped looking)."""
    for t, v in timeline.gauges.get(name, []):
        if t >= after_s and v <= level:
            return t - after_s
    return float("nan")


class ValueProbe:
    """Asks serving for one user at a time, all the drill long, and judges every present value
    against the oracle at the answer's own as-of time (see ``verify.wrong_served_values``)."""

    def __init__(
        self, ctx: DrillContext, region: str, users: Sequence[str], accepted: list[dict[str, Any]]
    ) -> None:
        self._url = f"http://127.0.0.1:{ctx.serve_port}/{region}/v1/features"
        self._headers = {"x-api-key": ctx.api_key, "content-type": "application/json"}
        self._users = list(users)
        self._by_user = verify.by_entity(accepted, "user_id")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-value-probe", daemon=True)
        self.checked = 0
        self.wrong: list[str] = []
        self.stores: dict[str, int] = {}

    def __enter__(self) -> ValueProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(timeout=5.0, headers=self._headers) as http:
            i = 0
            while not self._stop.wait(0.2):
                user = self._users[i % len(self._users)]
                i += 1
                body = {"entities": {"user": [user]}, "features": list(USER_FEATURES)}
                try:
                    answer = http.post(self._url, content=orjson.dumps(body))
                except httpx.HTTPError:
                    continue
                if answer.status_code != 200:
                    continue
                payload = answer.json()
                self.checked += 1
                store = str(payload.get("store"))
                self.stores[store] = self.stores.get(store, 0) + 1
                self.wrong += verify.wrong_served_values(payload, self._by_user)


def first_time(timeline: Timeline, after_s: float, predicate: Callable[[Any], bool]) -> float:
    """Seconds from ``after_s`` to the first sample sent at or after it matching ``predicate``."""
    for sample in sorted(timeline.samples, key=lambda s: s.sent_s):
        if sample.sent_s >= after_s and predicate(sample):
            return sample.sent_s - after_s
    return float("nan")


def sleep_until(timeline: Timeline, t_s: float) -> None:
    delay = t_s - timeline.now_s()
    if delay > 0:
        time.sleep(delay)


def judge_recovery(
    verdict: Verdict,
    probe: ValueProbe,
    after: list[Sample],
    *,
    back_s: float,
    since_s: float,
    since: str,
) -> None:
    """The three recovery criteria of a store-fault drill: local reads again (``back_s``, nan when
    never), no error after, no wrong value served all along (judged by ``probe``)."""
    verdict.check(
        "returned to local reads",
        not math.isnan(back_s),
        target="the local Redis serves again",
        measured=f"{back_s - since_s:.1f} s after {since}",
    )
    verdict.check(
        "errors after recovery",
        bool(after) and error_rate(after) == 0.0,
        target="0",
        measured=f"{sum(1 for s in after if s.status != OK)} of {len(after)}",
    )
    verdict.check(
        "no wrong value served",
        probe.checked > 0 and not probe.wrong,
        target="0 present values differ from the oracle",
        measured=f"{len(probe.wrong)} wrong in {probe.checked} answers {probe.wrong[:2]}",
    )
