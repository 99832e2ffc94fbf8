"""Delivery accounting: every event sent is either in the ledger with its offset or counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.events.exceptions import BrokerUnavailable, DeliveryFailed
from cluster.events.ledger import LedgerWriter, read_ledger
from cluster.events.producer import EventProducer, ProducerSettings, kafka_producer
from cluster.events.runner import run_generator
from cluster.events.synth import EventSynthesizer, GeneratorConfig, SyntheticEvent
from features.errors import TransportError
from tests.unit.events.fakes import FakeClock, FakeKafkaProducer, StepClock


def events(n: int) -> list[SyntheticEvent]:
    config = GeneratorConfig(max_events=n, malformed_share=0.2, late_warmup_events=0)
    return EventSynthesizer(config, StepClock()).next_batch(n)


def produce(
    tmp_path: Path, fake: FakeKafkaProducer, batch: list[SyntheticEvent]
) -> tuple[EventProducer, Path]:
    path = tmp_path / "ledger.jsonl"
    with LedgerWriter.open(path) as ledger:
        producer = EventProducer(fake, "fl.t", ledger)
        producer.send_batch(batch[: len(batch) // 2])
        producer.poll_acks()
        producer.send_batch(batch[len(batch) // 2 :])
        try:
            producer.close()
        finally:
            assert fake.closed
    return producer, path


def test_acknowledged_events_are_ledgered_with_partition_and_offset(tmp_path: Path) -> None:
    fake = FakeKafkaProducer()
    batch = events(500)
    producer, path = produce(tmp_path, fake, batch)
    ledger = read_ledger(path)
    assert [r.seq for r in ledger] == [e.seq for e in batch]
    seen: dict[int, int] = {}
    for record, event in zip(ledger, batch, strict=True):
        assert record.partition == fake.partition_of(event.key)
        assert record.offset == seen.get(record.partition, 0)
        seen[record.partition] = record.offset + 1
        assert (record.kind, record.user_id, record.amount) == (
            event.kind,
            event.user_id,
            event.amount,
        )
    assert fake.flushes and producer.stats.acked == 500
    assert sum(producer.stats.acked_by_kind.values()) == 500
    assert [(k, v) for _, k, v in fake.sent] == [(e.key, e.value) for e in batch]


def test_acks_that_arrive_only_on_flush_are_ledgered_on_close(tmp_path: Path) -> None:
    fake = FakeKafkaProducer(ack_on_flush=True)
    producer, path = produce(tmp_path, fake, events(100))
    assert len(read_ledger(path)) == 100 == producer.stats.acked


def test_broker_errors_are_counted_and_raised_after_the_rest_is_ledgered(tmp_path: Path) -> None:
    def fail(value: bytes) -> BaseException | None:
        return RuntimeError("NotEnoughReplicas") if b'"seq":1' in value else None

    fake = FakeKafkaProducer(fail=fail)
    batch = events(300)
    failing = sum(1 for e in batch if b'"seq":1' in e.value)
    with pytest.raises(DeliveryFailed) as caught:
        produce(tmp_path, fake, batch)
    assert isinstance(caught.value, TransportError)
    assert caught.value.failed == failing
    assert caught.value.acked == 300 - failing
    assert "NotEnoughReplicas" in caught.value.first_error
    assert len(read_ledger(tmp_path / "ledger.jsonl")) == 300 - failing


def test_a_send_the_client_refuses_is_a_failure(tmp_path: Path) -> None:
    def refuse(value: bytes) -> BaseException | None:
        return TimeoutError("buffer full") if len(value) > 4096 else None

    batch = events(400)
    oversized = sum(1 for e in batch if len(e.value) > 4096)
    assert oversized > 0
    with pytest.raises(DeliveryFailed) as caught:
        produce(tmp_path, FakeKafkaProducer(refuse=refuse), batch)
    assert caught.value.failed == oversized


def test_sends_never_acknowledged_fail_after_the_flush_timeout(tmp_path: Path) -> None:
    with pytest.raises(DeliveryFailed) as caught:
        produce(tmp_path, FakeKafkaProducer(never_ack=True), events(50))
    assert caught.value.failed == 50 and caught.value.acked == 0


def test_an_error_inside_the_block_closes_without_masking_it(tmp_path: Path) -> None:
    fake = FakeKafkaProducer(never_ack=True)
    with (
        pytest.raises(KeyError),
        LedgerWriter.open(tmp_path / "l.jsonl") as ledger,
        EventProducer(fake, "fl.t", ledger) as producer,
    ):
        producer.send_batch(events(5))
        raise KeyError("boom")
    assert fake.closed and producer.stats.failed == 5


def test_a_run_stops_early_when_failures_pile_up(tmp_path: Path) -> None:
    fake = FakeKafkaProducer(fail=lambda value: RuntimeError("down"))
    with pytest.raises(DeliveryFailed) as caught:
        run_generator(
            GeneratorConfig(max_events=100_000, rate_per_s=1_000.0),
            "unused:9092",
            "fl.t",
            tmp_path / "l.jsonl",
            settings=ProducerSettings(abort_after_failures=200),
            clock=FakeClock().clock(),
            producer_factory=lambda settings, bootstrap: fake,
        )
    assert 200 <= caught.value.failed < 300


def test_the_kafka_config_asks_for_idempotent_all_replica_acks() -> None:
    config = ProducerSettings().kafka_config("127.0.0.1:1")
    assert config["acks"] == "all" and config["enable_idempotence"] is True
    assert config["max_in_flight_requests_per_connection"] <= 5
    assert config["allow_auto_create_topics"] is False


def test_the_real_client_accepts_the_config_and_reports_a_missing_broker() -> None:
    from cluster.process import free_port

    settings = ProducerSettings(bootstrap_timeout_ms=300, max_block_ms=300)
    with pytest.raises(BrokerUnavailable):
        kafka_producer(settings, f"127.0.0.1:{free_port()}")
