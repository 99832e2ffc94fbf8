"""A stream consumer whose commit is stuck in the Kafka client, against the real broker.

kafka-python waits for ``send_offsets_to_transaction`` and ``commit_transaction`` without a
timeout, and after a broker restart its sender can drop the very request such a call waits for
(the broker-restart drill's consumers then stalled forever). Here step 4 of a commit hangs that
way. The consumer must report the commit overdue (the actor's watchdog then exits the process and
Ray restarts it), and its replacement, with the same partitions and so the same transactional id,
must fence the open transaction, resume from the last commit, and leave the changelog and the
dead-letter topic holding every event exactly once: the oracle's values, each refusal once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from actors.changelog import decode, is_restore_state
from actors.consumer import ConsumerConfig, StreamConsumer, kafka_clients
from chaos.oracle import accepted_events, expected_values
from chaos.verify import by_entity, close_enough, read_topic, topic_ledger
from features.block_merge import merge_blocks
from features.blocks import BlockLayout, blocks_of
from features.catalog import Catalog
from features.demo import SOURCE, card_transactions_catalog
from features.keys import OnlineKey

PARTITIONS = [0, 1]
VIEW = "user_spend"
# Bounds on loops that wait for the broker: generous, never asserted as a latency.
ATTEMPTS = 600


class _HangingOffsets:
    """The real transactional producer, except that once armed, step 4 blocks until released
    (as kafka-python's does when its sender dropped the request), then runs for real."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.armed = False
        self.entered, self.release = threading.Event(), threading.Event()

    def send_offsets_to_transaction(self, offsets: Any, group: Any) -> None:
        if self.armed:
            self.entered.set()
            self.release.wait()
        self._producer.send_offsets_to_transaction(offsets, group)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


class _Clock:
    """Monotonic time that a test can move ahead, so a deadline passes without waiting for it."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


@pytest.fixture
def world(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> Iterator[tuple[ConsumerConfig, Catalog, str]]:
    """Fresh source, changelog and dead-letter topics, and a group of their own."""
    source = topic_factory(partitions=8)
    dumped = card_transactions_catalog().model_dump(mode="json")
    for spec in dumped["sources"]:
        spec["topic"] = source
    config = ConsumerConfig(
        bootstrap=kafka_bootstrap,
        source=SOURCE,
        changelog_topic=topic_factory(partitions=8, compacted=True),
        dlq_topic=topic_factory(partitions=1),
        group_id=f"test-recovery-{uuid.uuid4().hex[:8]}",
    )
    yield config, Catalog.from_dict(dumped), source


def _produce(bootstrap: str, topic: str, seqs: range, *, malformed: frozenset[int]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    base = int(time.time() * 1000) - 120_000
    try:
        for seq in seqs:
            event = {
                "event_id": f"r-{seq}",
                "seq": seq,
                "event_type": "card_tx",
                "user_id": f"u_{seq % 5:06d}",
                "merchant_id": f"m_{seq % 3:05d}",
                "amount": 1.0 + seq,
                "currency": "USD",
                "event_time_ms": base + seq * 100,
            }
            value = b"{not json" if seq in malformed else orjson.dumps(event)
            producer.send(topic, value=value, partition=PARTITIONS[seq % len(PARTITIONS)])
        producer.flush()
    finally:
        producer.close()


def _read_until(consumer: StreamConsumer, events_in: int) -> None:
    for _ in range(ATTEMPTS):
        if consumer.stats.events_in >= events_in:
            return
        consumer.step()
    raise AssertionError(f"read {consumer.stats.events_in} of {events_in} events")


def _changelog_values(
    config: ConsumerConfig, catalog: Catalog, users: list[str], as_of_ms: int
) -> dict[str, dict[str, Any]]:
    """Each user's values merged from the blocks the committed changelog ends with."""
    fields: dict[str, dict[str, bytes]] = {}
    for record in read_topic(config.bootstrap, config.changelog_topic):  # offset order
        write = decode(record.key, record.value).write
        if is_restore_state(write.field):
            continue
        held = fields.setdefault(write.key, {})
        if write.value is None:
            held.pop(write.field, None)
        else:
            held[write.field] = write.value
    view = catalog.view(VIEW)
    layout = BlockLayout.for_view(view)
    max_id = catalog.entity(view.entity).max_id_bytes
    keys = [
        OnlineKey(config.tenant, VIEW, view.version, u).encode(max_id_bytes=max_id) for u in users
    ]
    blocks = [blocks_of(layout, fields.get(key, {})) for key in keys]
    merged = merge_blocks(layout, blocks, as_of_ms)
    return {user: merged.entity(i) for i, user in enumerate(users)}


def test_a_stuck_commit_is_overdue_and_its_replacement_counts_every_event_once(
    world: tuple[ConsumerConfig, Catalog, str],
) -> None:
    config, catalog, source = world
    first, second = range(40), range(40, 100)
    malformed = frozenset({45, 70})
    _produce(config.bootstrap, source, first, malformed=frozenset())

    hanging: list[_HangingOffsets] = []
    readers: list[Any] = []

    def clients(cfg: ConsumerConfig, transactional_id: str) -> tuple[Any, Any]:
        producer, consumer = kafka_clients(cfg, transactional_id)
        hanging.append(_HangingOffsets(producer))
        readers.append(consumer)
        return hanging[-1], consumer

    clock = _Clock()
    stuck = StreamConsumer(
        config, catalog, PARTITIONS, clients=clients, monotonic=clock, commit_deadline_s=30.0
    )
    stuck.start()
    _read_until(stuck, len(first))
    stuck.commit()  # the state a replacement restores: the first batch, committed

    _produce(config.bootstrap, source, second, malformed=malformed)
    hanging[0].armed = True
    failures: list[BaseException] = []

    def run_stuck_commit() -> None:
        try:
            _read_until(stuck, len(first) + len(second))
            stuck.commit()  # its tiles and dead letters are produced, then step 4 hangs
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run_stuck_commit, name="stuck-commit", daemon=True)
    thread.start()
    assert hanging[0].entered.wait(120), f"the commit never reached step 4: {failures}"
    assert stuck.overdue_commit() is None  # stuck, but not yet past its deadline
    clock.skew += 31.0
    stalled = stuck.overdue_commit()
    assert stalled is not None and stalled.step == "offsets"

    # What Ray's restart of the actor does: the same partitions, so the same transactional id.
    replacement = StreamConsumer(config, catalog, PARTITIONS)
    try:
        replacement.start()  # fences the stuck producer and aborts its open transaction
        assert replacement.stats.restored_records > 0
        _read_until(replacement, len(second))  # resumes after the first batch's commit
        replacement.commit()
    finally:
        replacement.close()
    hanging[0].release.set()
    thread.join(60)
    readers[0].close()
    hanging[0].close(timeout=5)
    assert failures, "the fenced consumer's commit must fail, never succeed"

    accepted = accepted_events(topic_ledger(config.bootstrap, source), catalog, SOURCE)
    as_of = max(e["event_time_ms"] for e in accepted)
    users = by_entity(accepted, "user_id")
    got = _changelog_values(config, catalog, sorted(users), as_of)
    wrong = [
        f"{name}[{user}] {got[user].get(name)} != {want}"
        for user, rows in users.items()
        for name, want in expected_values(rows, catalog, VIEW, user, as_of).items()
        if not close_enough(name, got[user].get(name), want)
    ]
    assert not wrong, wrong
    letters = read_topic(config.bootstrap, config.dlq_topic)
    refused = sorted(int(dict(r.headers)["source.offset"]) for r in letters)
    assert len(refused) == len(malformed), refused  # each refusal once, none from the abort
