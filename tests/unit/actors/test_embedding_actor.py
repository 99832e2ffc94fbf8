"""The embedding ingest loop on in-memory Kafka: dead letters, snapshots, crash and replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import SecretStr

from actors.dlq import DeadLetter
from actors.embedding_actor import EmbeddingIngest, EmbeddingIngestConfig
from actors.embedding_catalog_file import catalog_path, write_catalog
from actors.embedding_mirror import RedisTarget
from actors.embedding_snapshot import write_snapshot
from features.embedding_catalog import ViewCatalog
from features.embedding_search import Query
from features.embeddings import EmbeddingView, UnknownModelVersion
from features.errors import ConfigError, RejectReason
from regions.config import RegionConfig
from tests.doubles.kafka import FakeConsumer

NOW = 1_764_000_000_000
TOPIC = "fl.items.embeddings"
VIEW = EmbeddingView(
    name="items",
    topic=TOPIC,
    dimension=4,
    model="item2vec",
    model_versions=("v1", "v2"),
    serving_version="v1",
    categories=frozenset({"colour"}),
    nlist=2,
    nprobe=2,
)


class Consumer(FakeConsumer):
    def __init__(self, partitions: int) -> None:
        super().__init__()
        for p in range(partitions):
            self.assign([_TP(TOPIC, p)])

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.logs if tp.topic == topic}


class _TP:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: Any) -> None:
        self.sent.append((topic, key, value, dict(headers)))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _raw(i: int, version: str = "v1", *, time: int = 1, op: str = "upsert") -> bytes:
    vector = np.random.default_rng(i * 7 + time).standard_normal(4).round(4).tolist()
    event: dict[str, Any] = {
        "id": f"e{i}",
        "model": "item2vec",
        "version": version,
        "op": op,
        "time": NOW - 1000 + time,
        "categories": {"colour": "red" if i % 2 else "blue"},
    }
    if op == "upsert":
        event["vector"] = vector
    return orjson.dumps(event)


def _ingest(
    tmp_path: Path, consumer: Consumer, producer: Producer, clock: Clock
) -> EmbeddingIngest:
    config = EmbeddingIngestConfig(bootstrap="unused", state_dir=tmp_path, snapshot_interval_s=10)
    ingest = EmbeddingIngest(
        config, VIEW, now_ms=lambda: NOW, monotonic=clock, clients=lambda _: (consumer, producer)
    )
    ingest.start()
    return ingest


def _drain(ingest: EmbeddingIngest) -> None:
    while ingest.step(poll_timeout_ms=0):
        pass


def test_valid_events_reach_their_version_and_bad_ones_are_dead_lettered(tmp_path: Path) -> None:
    consumer, producer = Consumer(2), Producer()
    consumer.append(TOPIC, 0, b"e1", _raw(1))
    consumer.append(TOPIC, 1, b"e2", _raw(2, "v2"))
    consumer.append(TOPIC, 1, b"e3", _raw(3, "v9"))
    consumer.append(TOPIC, 0, b"x", b"{not json")
    ingest = _ingest(tmp_path, consumer, producer, Clock())
    _drain(ingest)
    assert {v: sorted(i.row_of) for v, i in ingest.indexes.items()} == {"v1": ["e1"], "v2": ["e2"]}
    assert ingest.positions == {0: 2, 1: 2}
    assert [(t, h["reason"], h["source.offset"]) for t, _, _, h in producer.sent] == [
        ("fl.dlq", b"bad_json", b"1"),
        ("fl.dlq", b"unknown_model_version", b"1"),
    ]
    assert ingest.dead_lettered == {"bad_json": 1, "unknown_model_version": 1}
    # The pipeline's dead-letter tooling reads them like any refused event.
    letters = [DeadLetter(k, v, list(h.items())) for _, k, v, h in producer.sent]
    assert [d.reason for d in letters] == [
        RejectReason.BAD_JSON,
        RejectReason.UNKNOWN_MODEL_VERSION,
    ]


def test_search_defaults_to_the_serving_version_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    consumer, producer = Consumer(1), Producer()
    for i in range(5):
        consumer.append(TOPIC, 0, None, _raw(i))
    ingest = _ingest(tmp_path, consumer, producer, Clock())
    _drain(ingest)
    query = Query(np.zeros(4, dtype=np.float32), 3)
    answer = ingest.search(None, [query])
    assert (answer.model_version, answer.index_version, len(answer.results[0].ids)) == ("v1", 5, 3)
    assert ingest.vector_of("v1", "e2") == pytest.approx(orjson.loads(_raw(2))["vector"])
    assert ingest.vector_of(None, "e9") is None and ingest.vector_of("v2", "e2") is None
    with pytest.raises(UnknownModelVersion, match="v7"):
        ingest.search("v7", [query])


def _expected(log: list[tuple[int, bytes]]) -> set[str]:
    live: set[str] = set()
    for _, raw in log:
        event = orjson.loads(raw)
        if event["version"] == "v1":
            (live.add if event["op"] == "upsert" else live.discard)(event["id"])
    return live


def test_a_crash_after_a_snapshot_restores_and_replays_with_no_missing_or_duplicate_ids(
    tmp_path: Path,
) -> None:
    consumer, producer, clock = Consumer(2), Producer(), Clock()
    log = [(i % 2, _raw(i)) for i in range(60)]
    log += [(i % 2, _raw(i, time=2, op="delete")) for i in range(0, 60, 3)]
    log += [(i % 2, _raw(i, time=3)) for i in range(0, 60, 6)]  # some come back
    for partition, raw in log[:50]:
        consumer.append(TOPIC, partition, None, raw)
    first = _ingest(tmp_path, consumer, producer, clock)
    _drain(first)
    clock.t = 11.0
    first.step(poll_timeout_ms=0)  # the interval has passed: a snapshot at the current offsets
    for partition, raw in log[50:]:
        consumer.append(TOPIC, partition, None, raw)
    _drain(first)  # applied but never snapshotted: lost in the crash below
    crashed_at = dict(first.positions)

    second = _ingest(tmp_path, consumer, producer, Clock())  # the same topic, read again
    assert second.positions == {0: 25, 1: 25}  # the snapshot's offsets, not the crash's
    _drain(second)
    index = second.indexes["v1"]
    assert second.positions == crashed_at
    assert set(index.row_of) == _expected(log)
    live_ids = [index.row_ids[r] for r in np.flatnonzero(index.live[: index.rows])]
    assert len(live_ids) == len(set(live_ids)) == index.faiss_index.ntotal
    assert index.mutations == first.indexes["v1"].mutations


def test_versions_snapshotted_at_different_offsets_replay_from_the_oldest(tmp_path: Path) -> None:
    consumer, producer, clock = Consumer(1), Producer(), Clock()
    for i in range(10):
        consumer.append(TOPIC, 0, None, _raw(i, "v1" if i < 5 else "v2"))
    ingest = _ingest(tmp_path, consumer, producer, clock)
    _drain(ingest)
    ingest.snapshot()
    # As if the actor died between writing v1's and v2's snapshots of a later position.
    write_snapshot(ingest.indexes["v1"], tmp_path / "local" / "items" / "v1", {0: 12})
    restarted = _ingest(tmp_path, consumer, producer, Clock())
    assert restarted.positions == {0: 10}
    assert sorted(restarted.indexes["v2"].row_of) == [f"e{i}" for i in range(5, 10)]


def test_a_redis_that_is_down_delays_the_mirror_never_the_index(tmp_path: Path) -> None:
    """Redis refuses every connection (a closed port): the loop keeps consuming and searching,
    and the mirror keeps what changed for its next attempt instead of raising (which would
    restart the actor, replay, fail again: a restart loop)."""
    region = RegionConfig(name="us-east", aws_region="us-east-1", redis_port=1, dynamodb_port=2)
    redis = RedisTarget(region=region, writer_user="w", redis_writer_password=SecretStr("p"))
    consumer, producer, clock = Consumer(1), Producer(), Clock()
    for i in range(5):
        consumer.append(TOPIC, 0, None, _raw(i))
    config = EmbeddingIngestConfig(
        bootstrap="unused", state_dir=tmp_path, region="us-east", versions=("v1",), redis=redis
    )
    ingest = EmbeddingIngest(
        config, VIEW, now_ms=lambda: NOW, monotonic=clock, clients=lambda _: (consumer, producer)
    )
    ingest.start()
    _drain(ingest)
    ingest.flush_mirrors()
    for i in range(5, 8):
        consumer.append(TOPIC, 0, None, _raw(i))
    _drain(ingest)
    clock.t += 60  # past any backoff: the next flush asks Redis again, and fails again
    ingest.flush_mirrors()
    assert ingest.mirror_status() == {"v1": {"state": "retrying", "pending": 8, "failures": 2}}
    answer = ingest.search(None, [Query(np.zeros(4, dtype=np.float32), 10)])
    assert sorted(answer.results[0].ids) == sorted(f"e{i}" for i in range(8))


def test_a_reconfigured_view_moves_the_serving_version_and_the_dead_letter_duty(
    tmp_path: Path,
) -> None:
    consumer, producer = Consumer(1), Producer()
    consumer.append(TOPIC, 0, None, _raw(1, "v3"))
    config = EmbeddingIngestConfig(bootstrap="unused", state_dir=tmp_path, versions=("v2",))
    ingest = EmbeddingIngest(
        config, VIEW, now_ms=lambda: NOW, clients=lambda _: (consumer, producer)
    )
    ingest.start()
    assert not ingest.reporting  # v1 reports the view's dead letters
    _drain(ingest)
    assert producer.sent == []
    grown = VIEW.model_copy(update={"model_versions": ("v2", "v3"), "serving_version": "v2"})
    assert ingest.reconfigure(grown) == {0: 1}
    assert ingest.reporting and ingest.view.serving_version == "v2"
    consumer.append(TOPIC, 0, None, _raw(2, "v1"))  # v1 was dropped: now unknown
    consumer.append(TOPIC, 0, None, _raw(3, "v3"))  # declared: accepted, indexed by v3's actor
    _drain(ingest)
    assert [h["reason"] for _, _, _, h in producer.sent] == [b"unknown_model_version"]
    with pytest.raises(ConfigError, match="more than its versions"):
        ingest.reconfigure(VIEW.model_copy(update={"dimension": 8}))


def test_a_restarted_actor_follows_the_catalog_on_disk(tmp_path: Path) -> None:
    catalog = ViewCatalog.initial(VIEW).add("v3").switch("v2", now_ms=0, grace_ms=1)
    write_catalog(catalog_path(tmp_path, "items"), catalog)
    consumer, producer = Consumer(1), Producer()
    consumer.append(TOPIC, 0, None, _raw(1, "v3"))
    ingest = _ingest(tmp_path, consumer, producer, Clock())  # started with VIEW: v1, v2 only
    assert ingest.view == catalog.view
    _drain(ingest)
    assert producer.sent == []  # v3 is known from the catalog, not refused

    # A catalog no longer listing the actor's version: it is being dropped and keeps its view.
    gone = catalog.drop("v1")
    write_catalog(catalog_path(tmp_path, "items"), gone)
    config = EmbeddingIngestConfig(bootstrap="unused", state_dir=tmp_path, versions=("v1",))
    dropping = EmbeddingIngest(
        config, VIEW, now_ms=lambda: NOW, clients=lambda _: (consumer, producer)
    )
    dropping.start()
    assert dropping.view == VIEW and dropping.reporting
