"""``region-evacuation``: every store of one region hangs (its Redis in ``DEBUG SLEEP``, its
DynamoDB endpoint SIGSTOPped).

Clients (``FeatureClient``, us-east first, eu-west second) keep getting answers: the region's
app falls back to the nearest healthy region, and the client fails over to that region's app
when an answer does not come. Values served from the other region must equal the oracle, which
is what "within its replication lag" means once the lag measured before the fault is zero.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from chaos import faults, verify
from chaos.context import USER_FEATURES, DrillContext, busiest_users
from chaos.drills.base import first_time, pick, sleep_until, warm_up
from chaos.load import TRANSPORT_ERROR, Sample
from chaos.report import Verdict
from chaos.timeline import OK, Timeline, error_rate, percentile, within
from serve_apps.client import FeatureClient

EVACUATED = "us-east"
OTHER = "eu-west"


class ClientLoad:
    """``FeatureClient`` calls in a loop at about ``rate`` per second, each judged on the spot."""

    def __init__(
        self, ctx: DrillContext, users: list[str], accepted: list[dict[str, Any]], rate: float
    ) -> None:
        self._client = FeatureClient(
            f"http://127.0.0.1:{ctx.serve_port}", ctx.api_key, (EVACUATED, OTHER), timeout_s=2.0
        )
        self._users = users
        self._by_user = verify.by_entity(accepted, "user_id")
        self._interval = 1.0 / rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-client-load", daemon=True)
        self.samples: list[Sample] = []
        self.wrong: list[str] = []
        self.started_at = 0.0

    def __enter__(self) -> ClientLoad:
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._client.close()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            scheduled = self.started_at + i * self._interval
            delay = scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._one(self._users[i % len(self._users)], scheduled)
            i += 1

    def _one(self, user: str, scheduled: float) -> None:
        try:
            body = self._client.get_features({"user": [user]}, list(USER_FEATURES))
        except Exception:  # any failure the client surfaces is a user-visible error
            self.samples.append(
                Sample(scheduled - self.started_at, time.monotonic() - scheduled, TRANSPORT_ERROR)
            )
            return
        latency = time.monotonic() - scheduled
        self.samples.append(
            Sample(scheduled - self.started_at, latency, OK, str(body.get("store")))
        )
        self.wrong += verify.wrong_served_values(body, self._by_user)


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    ledger, accepted = warm_up(ctx, "evacuation", events=2_000, seed=505)
    users = busiest_users(ledger, 40)
    lag_before = {s: ctx.sink(OTHER, s)["lag"] for s in ("redis", "dynamodb")}
    down_s = pick(ctx, 15, 60)
    admin = ctx.redis_service(EVACUATED).admin_client()
    dynamodb = ctx.process_service(f"dynamodb-{EVACUATED}")
    with ClientLoad(ctx, users, accepted, rate=pick(ctx, 20, 50)) as load:
        sleep_until(timeline, timeline.now_s() + 5)  # a baseline after the warm-up
        began = timeline.now_s()
        # Redis sleeps 2 s past the window, so both stores are surely down until `released`
        # (DEBUG SLEEP ends on its own clock); the exit SIGCONTs moto, then waits for Redis.
        with faults.redis_asleep(admin, down_s + 2), faults.stopped(dynamodb):
            sleep_until(timeline, began + down_s)
            released = timeline.now_s()
        ended = timeline.now_s()
        timeline.fault(f"{EVACUATED} Redis DEBUG SLEEP + DynamoDB SIGSTOP", began, ended)
        sleep_until(timeline, ended + pick(ctx, 10, 30))
    timeline.add_load(load.samples, load.started_at)
    during = within(timeline.samples, began, ended)
    switch = first_time(timeline, began, lambda s: s.status == OK and s.store.endswith(OTHER))
    verdict.figure("switch_s", switch)
    verdict.figure("fault_p99_ms", percentile([s.latency_s * 1e3 for s in during], 0.99))
    verdict.figure(f"{OTHER}_lag_before_records", str(lag_before))
    verdict.check(
        "client errors during the evacuation",
        error_rate(during) <= 0.01,
        target="<= 1 %",
        measured=f"{100 * error_rate(during):.2f} % of {len(during)}",
    )
    # Judged while both stores are down, less the last second: a request sent then may be
    # answered by a store already back, which is the recovery, not a failed evacuation.
    settled = within(during, began + (down_s if math.isnan(switch) else switch), released - 1)
    verdict.check(
        f"served from {OTHER} after the switch",
        bool(settled) and all(s.store.endswith(OTHER) for s in settled if s.status == OK),
        target=f"every answer from an {OTHER} store",
        measured=f"{sum(1 for s in settled if s.store.endswith(OTHER))} of {len(settled)}",
    )
    verdict.check(
        "values within the replication lag",
        not load.wrong,
        target="0 present values differ from the oracle (lag was 0 at the fault)",
        measured=f"{len(load.wrong)} {load.wrong[:2]}",
    )
    after = within(timeline.samples, ended + 5, float("inf"))
    verdict.check(
        f"{EVACUATED} serves locally again",
        bool(after) and after[-1].store == f"redis-{EVACUATED}",
        target=f"last answers from redis-{EVACUATED}",
        measured=after[-1].store if after else "no answers",
    )
