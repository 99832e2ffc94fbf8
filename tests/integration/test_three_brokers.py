"""The three-broker profile on a real private stack: every topic, the consumer offsets and the
transaction state log on three replicas with min ISR 2 (CI's quick case, about 30 s); one broker
SIGKILLed under acks=all load loses no acknowledged record, and a consumer group reads on while
it is down (marked ``heavy``: ``make heavy``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.structs import OffsetAndMetadata

from chaos import faults
from chaos.faults import ServiceLike
from cluster.isolated import isolated_settings, with_brokers
from cluster.process import wait_until
from cluster.settings import DEFAULT_EVENTS_TOPIC
from cluster.stack import Stack
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.integration

TRANSACTION_LOG = "__transaction_state"
OFFSETS = "__consumer_offsets"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("three-brokers")
    settings = with_brokers(isolated_settings(state_dir, with_ray=False), 3)
    with running_stack(state_dir, settings) as running:
        yield running


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[Any]:
    client = KafkaAdminClient(bootstrap_servers=stack.settings.kafka.bootstrap)
    yield client
    client.close()


def _replicas(admin: Any, topics: list[str]) -> dict[str, set[tuple[int, int]]]:
    """Per topic, the distinct (replicas, in-sync replicas) counts over its partitions."""
    return {
        d["name"]: {(len(p["replica_nodes"]), len(p["isr_nodes"])) for p in d["partitions"]}
        for d in admin.describe_topics(topics)
    }


def _min_isr(admin: Any, topic: str) -> str:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs=None)
    described = admin.describe_configs([resource], config_filter="all")
    return str(described["topic"][topic]["min.insync.replicas"]["value"])


def _one_transaction(bootstrap: str) -> None:
    """A transactional write: the brokers create their transaction state log for it."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, transactional_id="three-brokers-test", acks="all"
    )
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(DEFAULT_EVENTS_TOPIC, key=b"tx", value=b"tx")
    producer.commit_transaction()
    producer.close()


def test_status_shows_each_broker_on_its_own_port(stack: Stack) -> None:
    brokers = [s for s in stack.status() if s.kind == "kafka"]
    assert [s.name for s in brokers] == ["kafka-1", "kafka-2", "kafka-3"]
    assert all(s.healthy for s in brokers)
    assert len({s.endpoint for s in brokers}) == len({s.pid for s in brokers}) == 3


def test_every_topic_and_the_transaction_log_have_three_replicas_and_min_isr_two(
    stack: Stack, admin: Any
) -> None:
    kafka = stack.settings.kafka
    _one_transaction(kafka.bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id="three-brokers-offsets")
    consumer.assign([TopicPartition(DEFAULT_EVENTS_TOPIC, 0)])
    consumer.commit(
        {TopicPartition(DEFAULT_EVENTS_TOPIC, 0): OffsetAndMetadata(0, "", -1)}
    )  # the offsets topic
    consumer.close()
    ours = [t.name for t in kafka.topics]
    shapes = _replicas(admin, [*ours, TRANSACTION_LOG, OFFSETS])
    assert shapes == {name: {(3, 3)} for name in [*ours, TRANSACTION_LOG, OFFSETS]}
    assert {_min_isr(admin, name) for name in [*ours, TRANSACTION_LOG]} == {"2"}


class _Producer:
    """acks=all and idempotent, one numbered record every few ms until stopped; keeps what the
    brokers acknowledged as (partition, offset) -> value, and every failure."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        self.acked: dict[tuple[int, int], bytes] = {}
        self.failed: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._producer.flush(timeout=120)
        self._producer.close()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            value = f"three-brokers-{self.sent}".encode()
            future = self._producer.send(DEFAULT_EVENTS_TOPIC, key=value, value=value)
            future.add_callback(
                lambda md, v=value: self.acked.update({(md.partition, md.offset): v})
            )
            future.add_errback(lambda exc: self.failed.append(repr(exc)))
            self.sent += 1


class _Reader:
    """A consumer group member (read_committed) that records every value it reads."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = KafkaConsumer(
            DEFAULT_EVENTS_TOPIC,
            bootstrap_servers=bootstrap,
            group_id="three-brokers-reader",
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=200).values():
                self.seen.update(r.value for r in records)


def _busiest_leader(admin: Any) -> int:
    leaders = [
        p["leader_id"] for p in admin.describe_topics([DEFAULT_EVENTS_TOPIC])[0]["partitions"]
    ]
    return int(max(set(leaders), key=leaders.count))


def _topic(bootstrap: str) -> dict[tuple[int, int], bytes]:
    """Every committed record of the events topic, as (partition, offset) -> value."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    partitions = [
        TopicPartition(DEFAULT_EVENTS_TOPIC, p)
        for p in consumer.partitions_for_topic(DEFAULT_EVENTS_TOPIC)
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(partitions)
    held: dict[tuple[int, int], bytes] = {}
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        for records in consumer.poll(timeout_ms=1_000).values():
            held.update({(r.partition, r.offset): r.value for r in records})
    consumer.close()
    return held


@pytest.mark.heavy
def test_a_killed_broker_loses_no_acknowledged_record_and_readers_go_on(
    stack: Stack, admin: Any
) -> None:
    bootstrap = stack.settings.kafka.bootstrap
    victim = cast(ServiceLike, stack.service(f"kafka-{_busiest_leader(admin)}"))
    with _Reader(bootstrap) as reader, _Producer(bootstrap) as producer:
        assert wait_until(lambda: len(reader.seen) > 200, 60), "nothing read before the fault"
        faults.kill(victim)
        after_kill = producer.sent
        # Records sent after the kill are acknowledged by the two survivors and read by the
        # group while the victim is still down.
        later = {f"three-brokers-{i}".encode() for i in range(after_kill, after_kill + 200)}
        assert wait_until(lambda: later <= reader.seen, 120), "the readers stopped"
        assert victim.process.pid() is None, "the victim came back on its own"
        faults.restart(victim)
    assert producer.failed == []
    held = _topic(bootstrap)
    lost = [pos for pos, value in producer.acked.items() if held.get(pos) != value]
    assert len(producer.acked) == producer.sent > after_kill + 200
    assert lost == []
    assert wait_until(
        lambda: _replicas(admin, [DEFAULT_EVENTS_TOPIC]) == {DEFAULT_EVENTS_TOPIC: {(3, 3)}}, 120
    ), "the restarted broker did not rejoin every in-sync replica set"
