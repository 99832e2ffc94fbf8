"""Ingest benchmark: Kafka -> Ray consumer actors -> changelog -> both regions' Redis and DynamoDB.

    .venv/bin/python benchmarks/ingest.py [--quick] [--events N] [--consumers 2]

Starts a private stack on free ports (its ``fl.card_tx`` topic is fresh, 8 partitions), runs the
demo catalog's pipeline as a real Ray job and measures, in one run:

1. ``--events`` valid events are pre-produced, and the raw kafka-python consume rate of those
   records is measured (baseline: no parsing, no group);
2. the pipeline is started and the sustained end-to-end rate is measured: from the first status
   listing every actor (the consumers may have taken ``drain_events_before`` events by then,
   which are left out) to the moment all four sinks (2 regions x 2 stores) have no lag;
3. freshness p50/p99 while producing at a fixed rate (5,000 events/s by default) to the caught-up
   pipeline: event time -> written in the region's Redis (servable), the worst Redis sink's
   percentile; beside it the DynamoDB sinks' (``durable_freshness_*``), every sink's, and the
   consumers' share (``changelog_visible_*``: event time -> changelog transaction committed).
   Each window is an actor's last 20,000 samples; below 20,000 ``freshness_phase_samples`` the
   backlog's older samples are in it too (a ``--quick`` phase ends after 30 s);
4. ``cpu_us_per_event``: during the drain (step 2), the CPU time of each process group (the
   consumer actors, the Redis sinks, the DynamoDB sinks, the offline writer, the broker, the
   moto servers), from ``/proc/<pid>/stat`` before and after, per event drained;
5. ``processing_us_per_event``: in this process, on one core, the CPU time per event of one
   partition's ``PartitionProcessor.process`` + ``drain_changes`` + changelog encoding over
   batches of ``max_poll_records`` of the same events (no Kafka: the consumers' own share);
   ``handoff_us_per_event`` beside it: encoding the same batches' accepted events for the
   offline writer (``actors.offline_feed``), which the consumers also do.

Prints its figures last as one JSON line and appends them to `benchmarks/results/ingest.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from actors.changelog import encode
from actors.config import DEFAULT_CONSUMERS, ConsumerConfig
from actors.offline_feed import FeedEncoder
from actors.processor import PartitionProcessor, RawRecord
from actors.records import AcceptedEvents
from actors.runtime import NAMESPACE, SUPERVISOR
from cluster import pipeline as pipeline_job
from cluster.isolated import isolated_settings
from cluster.results import current_command, record_run
from cluster.settings import DEFAULT_EVENTS_TOPIC
from cluster.stack import Stack
from features.demo import SOURCE, card_transactions_catalog

USERS = 50_000
MERCHANTS = 2_000


def _event(rng: random.Random, seq: int, now_ms: int) -> tuple[bytes, bytes]:
    user = f"u_{min(int(rng.paretovariate(1.1)), USERS):06d}"
    event = {
        "event_id": f"b-{seq}",
        "seq": seq,
        "event_type": "card_tx",
        "user_id": user,
        "merchant_id": f"m_{min(int(rng.paretovariate(1.3)), MERCHANTS):05d}",
        "amount": round(rng.lognormvariate(3, 1), 2),
        "currency": "USD",
        "event_time_ms": now_ms,
    }
    return user.encode(), orjson.dumps(event)


def _producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=512 * 1024)


def _produce_backlog(bootstrap: str, n: int, start_seq: int) -> float:
    rng = random.Random(7)
    producer = _producer(bootstrap)
    started = time.perf_counter()
    for i in range(n):
        key, value = _event(rng, start_seq + i, int(time.time() * 1000))
        producer.send(DEFAULT_EVENTS_TOPIC, key=key, value=value)
    producer.flush()
    producer.close()
    return n / (time.perf_counter() - started)


def _produce_paced(bootstrap: str, rate: int, seconds: float, start_seq: int) -> int:
    rng = random.Random(11)
    producer = _producer(bootstrap)
    tick = 0.01
    per_tick = max(1, int(rate * tick))
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        now_ms = int(time.time() * 1000)
        for _ in range(per_tick):
            key, value = _event(rng, start_seq + sent, now_ms)
            producer.send(DEFAULT_EVENTS_TOPIC, key=key, value=value)
            sent += 1
        producer.flush()
        ahead = started + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()
    producer.close()
    return sent


def _raw_consume_rate(bootstrap: str, expected_from: dict[int, int], n: int) -> float:
    """Records/s of a plain kafka-python consumer reading the backlog (no group, no parsing),
    from the first record on; the first poll's records are not counted (they took no time)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000
    )
    parts = [TopicPartition(DEFAULT_EVENTS_TOPIC, p) for p in expected_from]
    consumer.assign(parts)
    for tp in parts:
        consumer.seek(tp, expected_from[tp.partition])
    # Timed from the first record, like the pipeline's drain (which starts at the first event
    # the consumers take): connecting and fetching metadata are not consuming.
    seen, first, started = 0, 0, 0.0
    while seen < n:
        for records in consumer.poll(timeout_ms=1000).values():
            if not started:
                started, first = time.perf_counter(), len(records)
            seen += len(records)
    elapsed = time.perf_counter() - started
    consumer.close()
    return (seen - first) / elapsed


class _Status:
    """Polls the supervisor from this process (a Ray client of the stack's head)."""

    def __init__(self, stack: Stack) -> None:
        import ray

        os.environ.update(stack.settings.ray.client_env())
        ray.init(address=stack.settings.ray.address, namespace=NAMESPACE, log_to_driver=False)
        self._ray = ray

    def get(self) -> dict[str, Any] | None:
        try:
            sup = self._ray.get_actor(SUPERVISOR, namespace=NAMESPACE)
            return cast(dict[str, Any], self._ray.get(sup.status.remote(), timeout=30))
        except Exception:  # not up yet, or restarting
            return None


def _drained(status: dict[str, Any], target_events: int, sinks: int = 4) -> bool:
    """The consumers took ``target_events`` and nothing lags in them or in all ``sinks`` sinks
    (two regions x two stores x sink shards)."""
    events = sum(c["events_in"] for c in status["consumers"])
    consumer_lag = sum(sum(c["lag"].values()) for c in status["consumers"])
    sinks_idle = all(s["lag"] == 0 for s in status["sinks"])
    return (
        events >= target_events
        and consumer_lag == 0
        and sinks_idle
        and len(status["sinks"]) == sinks
    )


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its live descendants (None: it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(c)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()
        ]
    except (FileNotFoundError, ProcessLookupError):
        return None
    own = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
    return own + sum(_cpu_s(c) or 0.0 for c in children)


def _process_groups(stack: Stack, status: dict[str, Any]) -> dict[str, list[int]]:
    """The pids of each process group the pipeline's events cost CPU in."""
    services = stack.status()
    writers = status.get("offline") or []
    return {
        "consumers": [c["pid"] for c in status["consumers"]],
        "redis_sinks": [s["pid"] for s in status["sinks"] if s["store"] == "redis"],
        "dynamodb_sinks": [s["pid"] for s in status["sinks"] if s["store"] == "dynamodb"],
        "offline_writer": [w["pid"] for w in writers if w.get("pid")],
        "broker": [s.pid for s in services if s.kind == "kafka" and s.pid],
        "moto": [s.pid for s in services if s.kind == "dynamodb" and s.pid],
    }


def _cpu_by_group(
    groups: dict[str, list[int]], cpu: Callable[[int], float | None] = _cpu_s
) -> dict[str, float | None]:
    """CPU seconds per group (``cpu`` of each pid); None for a group one of whose processes is
    gone (restarted)."""
    out: dict[str, float | None] = {}
    for name, pids in groups.items():
        each = [cpu(pid) for pid in pids]
        out[name] = None if not each or None in each else sum(e or 0.0 for e in each)
    return out


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _measure_drain(stack: Stack, poller: _Status, n: int, timeout_s: float) -> dict[str, Any]:
    """The drain's duration, the events taken in it and each process group's CPU in it: from
    the first status that lists every actor (the events the consumers had already taken by then,
    ``events_before``, are outside the window, so they count in neither the time nor the CPU)."""
    first_at: float | None = None
    groups: dict[str, list[int]] = {}
    before: dict[str, float | None] = {}
    taken_before = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = poller.get()
        if status and status["consumers"] and len(status["sinks"]) == 4 and status["offline"]:
            events = sum(c["events_in"] for c in status["consumers"])
            if first_at is None:
                first_at, taken_before = time.perf_counter(), events
                groups = _process_groups(stack, status)
                before = _cpu_by_group(groups)
            elif _drained(status, n):
                elapsed = time.perf_counter() - first_at
                after = _cpu_by_group(groups)
                cpu = {name: _spent(before[name], after[name]) for name in groups}
                taken = events - taken_before
                return {"events": taken, "events_before": taken_before, "elapsed_s": elapsed} | {
                    "cpu_s": cpu
                }
        time.sleep(0.2)
    raise TimeoutError("pipeline did not drain the backlog in time")


def _freshness(status: dict[str, Any]) -> dict[str, Any]:
    """The headline is the worst *Redis* sink: a feature is servable once it is in its region's
    Redis (serving reads DynamoDB only when Redis fails). The DynamoDB sinks and the consumers'
    share (event time -> changelog committed) are reported beside it, so the figure decomposes."""
    by_sink = {
        f"{s['region']}/{s['store']}": s["freshness_ms"]
        for s in status["sinks"]
        if s["freshness_ms"]
    }
    visible = [c["visible_ms"] for c in status["consumers"] if c.get("visible_ms")]
    commits = [c["commit_ms"] for c in status["consumers"] if c.get("commit_ms")]

    def worst(samples: list[dict[str, float]], q: str) -> float | None:
        return round(max(f[q] for f in samples), 1) if samples else None

    redis = [f for k, f in by_sink.items() if k.endswith("/redis")]
    dynamo = [f for k, f in by_sink.items() if k.endswith("/dynamodb")]
    return {
        "freshness_p50_ms": worst(redis, "p50"),
        "freshness_p99_ms": worst(redis, "p99"),
        "durable_freshness_p50_ms": worst(dynamo, "p50"),
        "durable_freshness_p99_ms": worst(dynamo, "p99"),
        "changelog_visible_p50_ms": worst(visible, "p50"),
        "changelog_visible_p99_ms": worst(visible, "p99"),
        "commit_p50_ms": worst(commits, "p50"),
        "commit_p99_ms": worst(commits, "p99"),
        # The commit's steps, worst consumer: which round trip a slow commit waits on.
        "commit_phase_ms": {
            phase: {q: worst(_phase(status, phase), q) for q in ("p50", "p99")}
            for phase in ("produce", "offsets", "end")
        },
        "freshness_by_sink": {
            k: {"p50": round(f["p50"], 1), "p99": round(f["p99"], 1)} for k, f in by_sink.items()
        },
    }


def _phase(status: dict[str, Any], phase: str) -> list[dict[str, float]]:
    consumers = status["consumers"]
    return [c["commit_phase_ms"][phase] for c in consumers if c["commit_phase_ms"].get(phase)]


def _applied(status: dict[str, Any]) -> dict[str, int]:
    return {f"{s['region']}/{s['store']}": s["applied_records"] for s in status["sinks"]}


def _window_inputs(status: dict[str, Any]) -> dict[str, int]:
    """Records applied per sink and produced per consumer: what fills each freshness window."""
    produced = {f"consumer{c['partitions']}": c["changelog_records"] for c in status["consumers"]}
    return _applied(status) | produced


def _status(poller: _Status) -> dict[str, Any]:
    status = poller.get()
    if status is None:
        raise RuntimeError("the pipeline's supervisor does not answer")
    return status


def _freshness_phase(
    poller: _Status, bootstrap: str, rate: int, max_s: float, start_seq: int
) -> tuple[dict[str, Any], int]:
    """Produce at ``rate`` until every sink's and consumer's recent-freshness window (each keeps
    its last 20,000 samples) holds only samples of this phase, so the backlog cannot leak in, or
    until ``max_s``: ``freshness_phase_samples`` (the fewest of this phase in any window) then
    says how much of a window is this phase's, the rest being the backlog's."""
    before = _window_inputs(_status(poller))
    sent, started = 0, time.monotonic()
    while True:
        sent += _produce_paced(bootstrap, rate, 5.0, start_seq=start_seq + sent)
        time.sleep(2.0)
        status = _status(poller)
        fresh = min(n - before.get(k, 0) for k, n in _window_inputs(status).items())
        if fresh >= FRESHNESS_WINDOW or time.monotonic() - started > max_s:
            phase = {"freshness_phase_samples": min(fresh, FRESHNESS_WINDOW)}
            return _freshness(status) | phase, sent


FRESHNESS_WINDOW = 20_000


def processing_us_per_event(n: int) -> tuple[float, float]:
    """CPU microseconds per event from raw bytes to encoded changelog records, one partition;
    and beside it, of encoding the same batches' accepted events for the offline writer."""
    now_ms = int(time.time() * 1000)
    rng = random.Random(7)
    records = [RawRecord(i, *_event(rng, i, now_ms - n + i), now_ms) for i in range(n)]
    catalog = card_transactions_catalog()
    processor = PartitionProcessor(catalog, SOURCE, 0, lambda: now_ms)
    feed = FeedEncoder(catalog.source(SOURCE))
    # pyarrow imports its conversion code on first use: a once-per-process cost, not per event.
    first = orjson.loads(records[0].value)
    feed.encode(0, records[:1], AcceptedEvents.of_events([0], [first], tuple(first)))
    batch = ConsumerConfig.model_fields["max_poll_records"].default
    processing = handoff = 0.0
    for i in range(0, n, batch):
        started = time.process_time()
        outcome = processor.process(records[i : i + batch])
        for record in processor.drain_changes():
            encode(record)
        encoded = time.process_time()
        feed.encode(0, records[i : i + batch], outcome.accepted_events)
        processing += encoded - started
        handoff += time.process_time() - encoded
    return processing * 1e6 / n, handoff * 1e6 / n


def run(stack: Stack, n: int, rate: int, fresh_s: float, consumers: int) -> dict[str, Any]:
    """Backlog first, then freshness, with the pipeline started once: stopping and restarting
    it between phases races the supervisor's watch thread, which recreates stopped actors."""
    bootstrap = stack.settings.kafka.bootstrap
    poller = _Status(stack)
    produce_rate = _produce_backlog(bootstrap, n, start_seq=0)
    raw = _raw_consume_rate(bootstrap, dict.fromkeys(range(8), 0), n)
    submitter = threading.Thread(target=pipeline_job.up, args=(stack.settings, consumers))
    submitter.start()
    drain = _measure_drain(stack, poller, n, timeout_s=900)
    submitter.join()
    eps = drain["events"] / drain["elapsed_s"]
    cpu_us = {
        name: None if seconds is None else round(seconds * 1e6 / drain["events"], 1)
        for name, seconds in drain["cpu_s"].items()
    }
    freshness, sent = _freshness_phase(poller, bootstrap, rate, fresh_s, start_seq=n)
    final = _status(poller)
    processing, handoff = processing_us_per_event(min(n, 100_000))
    return {
        "events_per_s": round(eps),
        "raw_consume_events_per_s": round(raw),
        "ratio": round(eps / raw, 3),
        **freshness,
        "freshness_rate_events_per_s": rate,
        "freshness_events": sent,
        "backlog_events": n,
        "drain_s": round(drain["elapsed_s"], 2),
        "drain_events_before": drain["events_before"],  # taken before the window opened
        "produce_events_per_s": round(produce_rate),
        "consumers": consumers,
        "sinks_applied_records": _applied(final),
        "cpus": os.cpu_count(),
        # CPU per event drained, per process group, during the drain (step 2); the total
        # against 2 cores' worth at events_per_s says how much of the box the pipeline had.
        "cpu_us_per_event": cpu_us,
        "cpu_us_per_event_total": round(sum(v for v in cpu_us.values() if v is not None), 1),
        "processing_us_per_event": round(processing, 2),
        "handoff_us_per_event": round(handoff, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a run under two minutes")
    parser.add_argument("--events", type=int, default=None, help="backlog size")
    parser.add_argument("--rate", type=int, default=5000, help="events/s in the freshness phase")
    parser.add_argument("--consumers", type=int, default=DEFAULT_CONSUMERS)
    args = parser.parse_args()
    n = args.events or (100_000 if args.quick else 1_000_000)
    fresh_s = 30.0 if args.quick else 120.0
    with tempfile.TemporaryDirectory(prefix="fl-ingest-") as tmp:
        settings = isolated_settings(Path(tmp) / "state", with_ray=True)
        stack = Stack.build(settings, environ={})
        try:
            stack.up()
            result = run(stack, n, args.rate, fresh_s, args.consumers)
        finally:
            stack.down(purge=True)
    record_run("ingest", result, command=current_command())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
