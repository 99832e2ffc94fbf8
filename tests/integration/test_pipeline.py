"""The stream-to-feature pipeline, submitted as a real Ray job against the session stack.

Every window value read back from each region's Redis and DynamoDB must equal the oracle
(chaos/oracle.py), recomputed by brute force from the acknowledged raw events; dead letters must
carry their reason; a consumer killed with SIGKILL mid-stream must change nothing in the result.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import ray
from kafka import KafkaProducer

from chaos import verify
from chaos.context import rss_mib
from chaos.oracle import LedgerEntry, accepted_events
from cluster import pipeline as pipeline_job
from cluster.settings import CHANGELOG_TOPIC, DEFAULT_EVENTS_TOPIC
from cluster.stack import Stack
from features.demo import SOURCE, card_transactions_catalog, item_embedding_views
from features.embeddings import catalog_actor_name, index_actor_name
from tests.integration.offline_path import raw_rows_once_written
from tests.integration.prometheus import Sample, growth, scrape, total

pytestmark = pytest.mark.integration
CATALOG = card_transactions_catalog()
REPO = Path(__file__).resolve().parents[2]


def _events(n: int, seed: int, start_seq: int) -> Iterator[tuple[bytes, bytes, str]]:
    """(key, value, kind): skewed users, 15% out of order, 1% late, 1% malformed."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    for i in range(n):
        seq = start_seq + i
        user = f"u_{min(int(rng.paretovariate(1.2)), 40):06d}"
        event_time = now - (n - i) * 20 - (rng.randrange(4_000) if rng.random() < 0.15 else 0)
        kind = "valid"
        if i > n // 3 and rng.random() < 0.01:
            event_time, kind = now - 900_000, "late"
        event = {
            "event_id": f"t{seed}-{seq}",
            "seq": seq,
            "event_type": "card_tx",
            "user_id": user,
            "merchant_id": f"m_{rng.randrange(12):05d}",
            "amount": round(rng.lognormvariate(3, 1), 2),
            "currency": "USD",
            "event_time_ms": event_time,
        }
        value = orjson.dumps(event)
        if rng.random() < 0.01:
            value, kind = value[:-7], "bad_json"
        yield user.encode(), value, kind


def _produce(bootstrap: str, n: int, seed: int, start_seq: int) -> list[LedgerEntry]:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    sent = [
        (producer.send(DEFAULT_EVENTS_TOPIC, key=k, value=v), v)
        for k, v, _ in _events(n, seed, start_seq)
    ]
    producer.flush()
    ledger = []
    for future, value in sent:
        meta = future.get(timeout=30)
        ledger.append(LedgerEntry(meta.partition, meta.offset, value, meta.timestamp))
    producer.close()
    return ledger


def _ray_job(stack: Stack, *args: str) -> str:
    """``ray job ARGS`` against the stack's head, as an operator types it."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ray"),
            "job",
            *args,
            "--address",
            stack.settings.ray.dashboard_url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, **stack.settings.ray.client_env()},
    )
    return result.stdout


def _wait_for_failures(sink: Any, more_than: int, timeout_s: float) -> dict[str, Any]:
    """The sink's status once it counted more than ``more_than`` store failures (or at the end)."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = ray.get(sink.status.remote(), timeout=60)
    while status["store_failures"] <= more_than and time.monotonic() < deadline:
        time.sleep(1.0)
        status = ray.get(sink.status.remote(), timeout=60)
    return status


def _wait_for_oracle(
    stack: Stack,
    accepted: list[dict[str, Any]],
    *,
    timeout_s: float = 120,
    targets: list[tuple[str, str]] | None = None,
) -> list[str]:
    return verify.wait_for_oracle(
        stack.settings, stack.secrets, accepted, timeout_s=timeout_s, targets=targets
    )


def _earlier_ledger(bootstrap: str, exclude: set[tuple[int, int]]) -> list[LedgerEntry]:
    """Everything else in the topic (events of earlier tests count in the same windows)."""
    return verify.topic_ledger(bootstrap, DEFAULT_EVENTS_TOPIC, exclude)


@pytest.fixture(scope="module")
def pipeline(stack: Stack) -> Iterator[Stack]:
    pipeline_job.up(stack.settings, consumers=2)
    yield stack
    pipeline_job.down(stack.settings)


def test_pipeline_values_equal_the_oracle_in_every_region_and_store(pipeline: Stack) -> None:
    bootstrap = pipeline.settings.kafka.bootstrap
    ledger = _produce(bootstrap, 3_000, seed=11, start_seq=0)
    ours = {(e.partition, e.offset) for e in ledger}
    # Other modules may have streamed into the same topic first: their events share the windows
    # and the partitions' watermarks, so the oracle reads them all; the counts below are ours.
    accepted = accepted_events(_earlier_ledger(bootstrap, exclude=ours) + ledger, CATALOG, SOURCE)
    accepted_ours = [e for e in accepted if (e["_partition"], e["_offset"]) in ours]
    assert 0 < len(accepted_ours) < len(ledger)
    problems = _wait_for_oracle(pipeline, accepted, timeout_s=240)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:5]}"
    letters = [
        h
        for h in verify.dead_letters(bootstrap)
        if (int(h["source.partition"]), int(h["source.offset"])) in ours
    ]
    reasons = {h["reason"] for h in letters}
    assert reasons <= {"late", "bad_json"} and "bad_json" in reasons
    assert len(letters) == len(ledger) - len(accepted_ours), "each refused event dead-lettered once"
    assert all(h["source.topic"] == DEFAULT_EVENTS_TOPIC for h in letters)
    _assert_consumers_report_their_share_of_freshness(pipeline)


def _assert_consumers_report_their_share_of_freshness(stack: Stack) -> None:
    """Each consumer reports event time -> changelog committed for what it committed, in
    milliseconds of the wall clock, like event time: never negative."""
    ray.init(address=stack.settings.ray.address, namespace="freshline", ignore_reinit_error=True)
    try:
        statuses = [
            ray.get(ray.get_actor(f"fl-consumer-{i}", namespace="freshline").status.remote())
            for i in range(2)
        ]
    finally:
        ray.shutdown()
    for status in statuses:
        visible = status["visible_ms"]
        assert visible and visible["count"] > 0, status
        assert 0 <= visible["p50"] <= visible["p99"], visible
        # Every commit is timed whole and by step, so the steps decompose the same commits.
        phases = status["commit_phase_ms"]
        assert set(phases) == {"produce", "offsets", "end"}, phases
        for phase in phases.values():
            assert phase["count"] == status["commit_ms"]["count"], status
            assert 0 <= phase["p50"] <= phase["p99"] <= status["commit_ms"]["p99"] + 1, status


def _supervisor_status(stack: Stack, *, until_sinks_stepped: bool = False) -> dict[str, Any]:
    """The pipeline supervisor's status; with ``until_sinks_stepped``, once every sink's loop
    finished a first step (a sink reports its assignment only then), for at most 60 s."""
    ray.init(address=stack.settings.ray.address, namespace="freshline", ignore_reinit_error=True)
    try:
        supervisor = ray.get_actor("fl-supervisor", namespace="freshline")
        deadline = time.monotonic() + 60
        status: dict[str, Any] = ray.get(supervisor.status.remote(), timeout=60)
        while until_sinks_stepped and any(s["since_last_step_s"] is None for s in status["sinks"]):
            assert time.monotonic() < deadline, status["sinks"]
            time.sleep(0.5)
            status = ray.get(supervisor.status.remote(), timeout=60)
        return status
    finally:
        ray.shutdown()


def test_consumers_and_sinks_run_at_normal_priority(pipeline: Stack) -> None:
    """Ray starts workers at nice 15; the stream actors must not yield the CPU to the broker and
    the stores they feed (PipelineConfig.stream_niceness)."""
    status = _supervisor_status(pipeline)
    assert {c["niceness"] for c in status["consumers"]} == {0}
    by_store: dict[str, set[int]] = {}
    for sink in status["sinks"]:
        by_store.setdefault(sink["store"], set()).add(sink["niceness"])
    assert by_store == {"redis": {0}, "dynamodb": {0}}, by_store


def test_every_sink_is_assigned_every_changelog_partition(pipeline: Stack) -> None:
    """A sink is its group's only member and is assigned, not subscribed: it never waits on a
    group join, and no partition of any region's changelog is left unapplied."""
    status = _supervisor_status(pipeline, until_sinks_stepped=True)
    changelog = next(t for t in pipeline.settings.kafka.topics if t.name == CHANGELOG_TOPIC)
    assert len(status["sinks"]) == 4
    assert {s["assigned_partitions"] for s in status["sinks"]} == {changelog.partitions}


def test_a_consumer_killed_mid_stream_changes_nothing(pipeline: Stack) -> None:
    bootstrap = pipeline.settings.kafka.bootstrap
    ray.init(address=pipeline.settings.ray.address, namespace="freshline", ignore_reinit_error=True)
    try:
        victim = ray.get_actor("fl-consumer-0", namespace="freshline")
        before = ray.get(victim.status.remote(), timeout=60)
        ledger = _produce(bootstrap, 1_500, seed=12, start_seq=10_000)
        os.kill(before["pid"], signal.SIGKILL)
        ledger += _produce(bootstrap, 1_500, seed=13, start_seq=20_000)
        after = ray.get(victim.status.remote(), timeout=120)
        assert after["pid"] != before["pid"], "Ray restarted the consumer in a new process"
    finally:
        ray.shutdown()
    earlier = _earlier_ledger(bootstrap, exclude={(e.partition, e.offset) for e in ledger})
    accepted = accepted_events(earlier + ledger, CATALOG, SOURCE)
    problems = _wait_for_oracle(pipeline, accepted, timeout_s=240)
    assert not problems, f"{len(problems)} mismatches after the kill, e.g. {problems[:5]}"


def test_a_stalled_region_backs_off_without_slowing_the_other_and_catches_up(
    pipeline: Stack,
) -> None:
    bootstrap = pipeline.settings.kafka.bootstrap
    admin = pipeline.service("redis-eu-west").admin_client()
    ray.init(address=pipeline.settings.ray.address, namespace="freshline", ignore_reinit_error=True)
    try:
        sink = ray.get_actor("fl-sink-eu-west-redis", namespace="freshline")
        before = ray.get(sink.status.remote(), timeout=60)
        rss_before = rss_mib(before["pid"])
        # Held until the test has seen what it checks (UNPAUSE below), not for a fixed time: on
        # a loaded machine the changelog may reach the sink late in a short pause.
        admin.execute_command("CLIENT", "PAUSE", "180000", "WRITE")
        try:
            ledger = _produce(bootstrap, 3_000, seed=21, start_seq=30_000)
            accepted = accepted_events(_earlier_ledger(bootstrap, exclude=set()), CATALOG, SOURCE)
            fresh = _wait_for_oracle(
                pipeline, accepted, timeout_s=60, targets=[("us-east", "redis")]
            )
            assert not fresh, f"us-east must stay current while eu-west stalls: {fresh[:3]}"
            during = _wait_for_failures(sink, more_than=before["store_failures"], timeout_s=60)
            assert during["store_failures"] > before["store_failures"], (
                f"the stalled sink backed off: {during}"
            )
            assert rss_mib(before["pid"]) - rss_before < 200, (
                "the stalled sink buffers at most a batch"
            )
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
    finally:
        ray.shutdown()
    assert ledger
    caught_up = _wait_for_oracle(pipeline, accepted, timeout_s=120, targets=[("eu-west", "redis")])
    assert not caught_up, f"eu-west must catch up with nothing lost: {caught_up[:3]}"


_COUNTERS = ("freshline_events_in", "freshline_events_processed", "freshline_sink_applied")


def _settled(stack: Stack, *, quiet_s: float = 15.0, timeout_s: float = 180.0) -> list[Sample]:
    """A scrape once the counters have not moved for ``quiet_s``: Ray's metrics agent reports
    every few seconds, so a single scrape may still lack the last increments."""
    deadline = time.monotonic() + timeout_s
    samples = scrape(stack)
    seen, since = [total(samples, n) for n in _COUNTERS], time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"the counters kept moving: {seen}"
        time.sleep(2)
        samples = scrape(stack)
        now = [total(samples, n) for n in _COUNTERS]
        if now != seen:
            seen, since = now, time.monotonic()
    return samples


def _parses(value: bytes) -> bool:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def test_prometheus_counters_count_exactly_the_events_the_test_produced(pipeline: Stack) -> None:
    """The exported counters move by what happened: every produced event is counted in once,
    as processed or as dead-lettered under its reason, and every region's stores applied it."""
    bootstrap = pipeline.settings.kafka.bootstrap
    before = _settled(pipeline)
    ledger = _produce(bootstrap, 1_000, seed=41, start_seq=40_000)
    ours = {(e.partition, e.offset) for e in ledger}
    accepted = accepted_events(_earlier_ledger(bootstrap, exclude=ours) + ledger, CATALOG, SOURCE)
    n_accepted = sum(1 for e in accepted if (e["_partition"], e["_offset"]) in ours)
    n_bad_json = sum(1 for e in ledger if not _parses(e.value))
    assert 0 < n_accepted < len(ledger) and n_bad_json > 0, "the sample has both kinds"

    def delta(samples: list[Sample], name: str, **labels: str) -> float:
        return growth(before, samples, name, **labels)

    deadline = time.monotonic() + 180
    after = scrape(pipeline)
    while delta(after, "freshline_events_in") < len(ledger) or (
        delta(after, "freshline_events_processed") < n_accepted
    ):
        assert time.monotonic() < deadline, "the counters never reached the produced events"
        time.sleep(2)
        after = scrape(pipeline)
    after = _settled(pipeline)  # an overshoot (an event counted twice) shows only once settled
    assert delta(after, "freshline_events_in") == len(ledger)
    assert delta(after, "freshline_events_processed") == n_accepted
    assert delta(after, "freshline_events_dead_lettered") == len(ledger) - n_accepted
    assert delta(after, "freshline_events_dead_lettered", reason="bad_json") == n_bad_json
    for region in pipeline.settings.topology:
        for store in ("redis", "dynamodb"):
            applied = delta(after, "freshline_sink_applied", region=region.name, store=store)
            assert applied > 0, f"{region.name}/{store} applied none of the new tiles"
    assert delta(after, "freshline_freshness_ms_count") > 0
    caught_up = {
        tags.get("partition")
        for name, tags, value in after
        if name == "ray_freshline_source_lag" and value == 0
    }
    assert caught_up >= {str(p) for p in range(8)}, "every source partition reports lag 0"


def test_every_malformed_kind_is_dead_lettered_with_its_reason_and_no_valid_event_is_lost(
    pipeline: Stack, tmp_path: Path
) -> None:
    from cluster.events import GeneratorConfig, read_ledger, run_generator

    bootstrap = pipeline.settings.kafka.bootstrap
    config = GeneratorConfig(
        run_id="poison",
        seed=3,
        n_users=200,
        n_merchants=20,
        rate_per_s=5_000,
        max_events=2_000,
        malformed_share=0.2,
        late_share=0.02,
        late_warmup_events=300,
    )
    report = run_generator(config, bootstrap, DEFAULT_EVENTS_TOPIC, tmp_path / "ledger.jsonl")
    assert report.failed == 0
    ledger = read_ledger(tmp_path / "ledger.jsonl")
    refused = [r for r in ledger if r.kind not in ("valid", "out_of_order")]
    kinds = {r.kind for r in refused}
    assert kinds >= {
        "bad_json",
        "missing_field",
        "wrong_type",
        "non_finite",
        "oversized",
        "future",
        "unknown_type",
        "late",
    }

    # Dead letters are matched to this run by their source partition and offset (unique), never
    # by position: the DLQ's partitions come back in no particular order.
    ours = {(r.partition, r.offset): r.kind for r in ledger}
    deadline = time.monotonic() + 120
    while True:
        letters = {
            (int(h["source.partition"]), int(h["source.offset"])): h["reason"]
            for h in verify.dead_letters(bootstrap)
        }
        mine = {k: v for k, v in letters.items() if k in ours}
        if len(mine) >= len(refused) or time.monotonic() > deadline:
            break
        time.sleep(2)
    wrong = [
        (r.kind, mine.get((r.partition, r.offset)))
        for r in refused
        if mine.get((r.partition, r.offset)) != r.kind
    ]
    assert not wrong, f"{len(wrong)} refused events without their reason, e.g. {wrong[:5]}"
    assert len(mine) == len(refused), "valid events must never be dead-lettered"

    earlier = _earlier_ledger(bootstrap, exclude=set())
    accepted = accepted_events(earlier, CATALOG, SOURCE)
    problems = _wait_for_oracle(pipeline, accepted, timeout_s=90, targets=[("us-east", "redis")])
    assert not problems, f"valid events lost or miscounted: {problems[:5]}"


def test_offline_store_holds_every_accepted_event_exactly_once(pipeline: Stack) -> None:
    bootstrap = pipeline.settings.kafka.bootstrap
    accepted = accepted_events(_earlier_ledger(bootstrap, exclude=set()), CATALOG, SOURCE)
    expected = sorted((e["_partition"], e["_offset"]) for e in accepted)
    rows = raw_rows_once_written(pipeline.settings, len(expected))
    assert rows == expected, f"{len(rows)} offline rows for {len(expected)} accepted events"


def test_the_pipeline_is_one_running_ray_job_that_ray_job_stop_drains(pipeline: Stack) -> None:
    def named() -> list[str]:
        ray.init(
            address=pipeline.settings.ray.address, namespace="freshline", ignore_reinit_error=True
        )
        try:
            actors = ray.util.list_named_actors(all_namespaces=True)
        finally:
            ray.shutdown()
        return sorted(a["name"] for a in actors if a["name"].startswith("fl-"))

    (job_id,) = pipeline_job.running(pipeline_job.client(pipeline.settings))
    assert pipeline_job.up(pipeline.settings, consumers=2) == job_id, "up is idempotent"
    assert job_id in _ray_job(pipeline, "list")
    assert "RUNNING" in _ray_job(pipeline, "status", job_id)
    assert pipeline_job.READY_LINE in _ray_job(pipeline, "logs", job_id)

    _ray_job(pipeline, "stop", job_id)  # waits until the job has ended
    assert "was stopped" in _ray_job(pipeline, "status", job_id)
    status = pipeline_job.client(pipeline.settings).get_job_status(job_id)
    assert str(getattr(status, "value", status)) == "STOPPED"
    assert '"event": "drained"' in _ray_job(pipeline, "logs", job_id)
    time.sleep(5)  # longer than the supervisor's watch interval: a racing watcher would recreate
    assert named() == [], "a stopped job must not leave (or let the watcher recreate) any actor"
    assert pipeline_job.running(pipeline_job.client(pipeline.settings)) == []

    pipeline_job.up(pipeline.settings, consumers=2)
    expected = sorted(
        ["fl-consumer-0", "fl-consumer-1", "fl-offline", "fl-supervisor"]
        + [f"fl-sink-{r}-{s}" for r in ("us-east", "eu-west") for s in ("redis", "dynamodb")]
        # Per embedding view, its catalog actor and one index actor per region and version.
        + [
            index_actor_name(view.name, region, view.model_versions[0])
            for view in item_embedding_views()
            for region in ("us-east", "eu-west")
        ]
        + [catalog_actor_name(view.name) for view in item_embedding_views()]
    )
    time.sleep(5)
    assert named() == expected
