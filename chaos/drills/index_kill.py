"""``index-kill``: an embedding index actor is SIGKILLed mid-stream, after it has snapshotted.

Item embeddings stream to the demo view's topic (upserts, re-upserts and deletes of a run's own
items). Once the first region's index actor has written a snapshot that covers part of the
stream, its process is killed; Ray restarts it, it restores the snapshot and replays from the
snapshot's offsets (docs/embeddings.md). When the stream is over and every region's actor has
caught up, each index must hold exactly the producer's ledger for the run: the latest vector of
every live item, no deleted item, no id missing, none twice.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import orjson

from chaos import faults
from chaos.context import DrillContext
from chaos.drills.base import in_background, pick
from chaos.report import Verdict
from chaos.timeline import Sampler, Timeline
from features.demo import item_embedding_views
from features.embedding_search import Query, compile_filter
from features.embeddings import INDEX_ACTOR_NAMESPACE, EmbeddingView, index_actor_name

ITEMS = 400  # distinct items: most are written several times


class Ledger:
    """What the producer sent and Kafka acknowledged: the latest vector per live item."""

    def __init__(self, view: EmbeddingView, run: str) -> None:
        self.view, self.run = view, run
        self.live: dict[str, list[float]] = {}
        self.sent = 0
        self._rng = np.random.default_rng(404)

    def event(self, seq: int, time_ms: int) -> tuple[str, dict[str, Any]]:
        item = f"{self.run}-{seq % ITEMS}"
        base = {"id": item, "model": self.view.model, "version": self.view.serving_version}
        if seq % 7 == 3:
            self.live.pop(item, None)
            return item, {**base, "op": "delete", "time": time_ms}
        vector = self._rng.standard_normal(self.view.dimension).astype(np.float32).tolist()
        self.live[item] = vector
        return item, {
            **base,
            "op": "upsert",
            "time": time_ms,
            "vector": vector,
            "categories": {"category": self.run},
            "numbers": {"price": float(seq % 50)},
        }


def _produce(ctx: DrillContext, ledger: Ledger, rate: float, events: int) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=ctx.bootstrap, acks="all", linger_ms=5)
    base_ms = int(time.time() * 1000) - 60_000  # per-item times strictly increase with seq
    started = time.monotonic()
    try:
        for seq in range(events):
            delay = started + seq / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            item, event = ledger.event(seq, base_ms + seq)
            producer.send(ledger.view.topic, key=item.encode(), value=orjson.dumps(event))
            ledger.sent += 1
        producer.flush()
    finally:
        producer.close()
    return events


def _status(actor: Any) -> dict[str, Any] | None:
    import ray

    try:
        return dict(ray.get(actor.status.remote(), timeout=10))
    except Exception:  # dead or restarting: the probe shows a gap
        return None


def _wait(actors: list[Any], end: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        statuses = [_status(a) for a in actors]
        if all(s and s["ready"] and sum(s["positions"].values()) >= end for s in statuses):
            return True
        time.sleep(0.5)
    return False


def _held(actor: Any, view: EmbeddingView, run: str) -> list[str]:
    """Every id the index holds for the run: a filtered search as deep as the run's items scans
    the rows that pass exactly, so it returns each live row, a duplicate twice."""
    import ray

    flt = compile_filter({"category": run}, view)
    probe = np.zeros(view.dimension, dtype=np.float32)
    answer = ray.get(actor.search.remote(None, [Query(probe, 2 * ITEMS, flt)]), timeout=60)
    return list(answer.results[0].ids)


def run(ctx: DrillContext, timeline: Timeline, verdict: Verdict) -> None:
    import ray

    view = item_embedding_views()[0]
    regions = ctx.settings.topology.names
    names = [index_actor_name(view.name, r, view.serving_version) for r in regions]
    actors = [ray.get_actor(n, namespace=INDEX_ACTOR_NAMESPACE) for n in names]
    before = _status(actors[0])
    start_end = sum(before["positions"].values()) if before else 0  # earlier runs' events
    rate = pick(ctx, 100, 200)
    events = int(rate * pick(ctx, 45, 90))
    ledger = Ledger(view, f"ik{uuid.uuid4().hex[:8]}")

    def probe() -> dict[str, float]:
        status = _status(actors[0])
        if status is None:
            return {}
        return {
            "consumed": float(sum(status["positions"].values()) - start_end),
            "snapshotted": float(sum(status["snapshotted"].values()) - start_end),
        }

    restart_s = float("nan")
    killed_mid_stream = False
    with (
        Sampler(timeline, probe),
        in_background(lambda: _produce(ctx, ledger, rate, events)) as sent,
    ):
        # Kill once a snapshot covers part of this run's stream, while the stream goes on.
        while not sent.done():
            status = _status(actors[0])
            if status and sum(status["snapshotted"].values()) > start_end + rate:
                began = timeline.now_s()
                killed_mid_stream = ledger.sent < events
                _, restart_s = faults.kill_actor_process(names[0], INDEX_ACTOR_NAMESPACE)
                timeline.fault(f"kill {names[0]}", began)
                break
            time.sleep(0.5)
        sent.result(timeout=events / rate * 4 + 120)
    caught_up = _wait(actors, start_end + events, pick(ctx, 120, 240))
    verdict.figure("events", events)
    verdict.figure("restart_s", restart_s)
    verdict.check(
        "index actor killed mid-stream after a snapshot",
        killed_mid_stream,
        target="SIGKILL while events stream, a snapshot behind it",
        measured=f"killed={killed_mid_stream}, back in {restart_s:.1f} s",
    )
    verdict.check(
        "every region's index caught up",
        caught_up,
        target=f"{events} events consumed",
        measured="yes" if caught_up else "no",
    )
    for region, actor in zip(regions, actors, strict=True):
        held = _held(actor, view, ledger.run)
        duplicates = len(held) - len(set(held))
        missing = set(ledger.live) - set(held)
        extra = set(held) - set(ledger.live)
        wrong = sum(
            1
            for item in list(ledger.live)[:50]
            if not np.allclose(
                ray.get(actor.vector_of.remote(None, item), timeout=30) or [], ledger.live[item]
            )
        )
        verdict.figure(f"{region}_items", len(held))
        verdict.check(
            f"{region}: the index equals the producer's ledger",
            not (duplicates or missing or extra or wrong),
            target="0 missing, 0 duplicate, 0 deleted back, latest vectors",
            measured=f"{len(missing)} missing, {duplicates} duplicate, {len(extra)} deleted back, "
            f"{wrong} of 50 stale vectors",
        )
