"""A stream consumer: owns some partitions of a source topic and turns them into tile changes.

Exactly-once from the source to the changelog, the dead-letter topic and the offline topic (the
accepted events handed to the offline writer) rests on one Kafka transaction per commit (see
:meth:`StreamConsumer.commit`). The transactional id is derived from the owned partitions, so a
restarted consumer fences its dead predecessor's open transaction. A view version a partition never
committed (a rollout's candidate) is backfilled from the offline table at start, and listed in the
offset metadata by the commit that publishes it (``actors.backfill``).

A commit has a deadline, :data:`TRANSACTION_TIMEOUT_MS`: kafka-python waits for
``send_offsets_to_transaction`` and ``commit_transaction`` without a timeout, and its sender drops
a transactional request whose coordinator it cannot reach (a broker restart), so such a wait can
last forever. Past the deadline the transaction coordinator has aborted the transaction anyway, so
the commit can no longer succeed: :meth:`StreamConsumer.overdue_commit` says so to the actor's
watchdog, which exits the process for Ray to restart it (``actors.runtime``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from actors.backfill import (
    AcceptedHistory,
    offset_metadata,
    parse_offset_metadata,
    to_backfill,
    warm_start,
)
from actors.changelog import ChangelogDecodeError, ChangelogRecord, decode, encode
from actors.config import ConsumerConfig as ConsumerConfig  # noqa: PLC0414 - re-exported
from actors.kafka_io import read_committed_consumer
from actors.offline_feed import FeedEncoder
from actors.processor import PartitionProcessor, view_ident
from features.catalog import Catalog
from features.commit_pacing import CommitPacing
from features.errors import RejectReason, TransportError

log = logging.getLogger("freshline.consumer")

# The producer's transaction timeout, and so the deadline of one commit: the coordinator aborts a
# transaction open longer than this, after which its commit can only fail. Far above a healthy
# commit (one commit interval plus a few round trips).
TRANSACTION_TIMEOUT_MS = 60_000


class CommitStalled(TransportError):
    """A commit ran past its deadline: the Kafka client is stuck and the transaction is lost."""

    def __init__(
        self, transactional_id: str, step: str, running_s: float, deadline_s: float
    ) -> None:
        super().__init__(
            f"commit of {transactional_id} stuck at step {step!r} for {running_s:.1f} s "
            f"(deadline {deadline_s:.0f} s): the Kafka client cannot finish it"
        )
        self.transactional_id, self.step, self.running_s = transactional_id, step, running_s


@dataclass
class ConsumerStats:
    events_in: int = 0
    accepted: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    changelog_records: int = 0
    restored_records: int = 0
    restore_s: float = 0.0
    # Events folded into new view versions at start (``actors.backfill``), and the time it took.
    backfilled_events: int = 0
    backfill_s: float = 0.0
    watermark_ms: dict[int, int] = field(default_factory=dict)
    lag: dict[int, int] = field(default_factory=dict)
    # Event time -> changelog committed (visible to the region sinks), per changed tile field: the
    # consumer's share of end-to-end freshness. Bounded: the latest samples only.
    visible_ms: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    commit_ms: deque[float] = field(default_factory=lambda: deque(maxlen=240))  # ~1 min of commits
    # The same commits split by protocol step (produce = steps 1-3, offsets = 4, end = 5): which
    # round trip a slow commit waits on.
    commit_phase_ms: dict[str, deque[float]] = field(
        default_factory=lambda: {
            phase: deque(maxlen=240) for phase in ("produce", "offsets", "end")
        }
    )
    commit_interval_ms: int = 0  # the interval now in force (``features.commit_pacing``)


class StreamConsumer:
    """Not thread-safe: one thread calls ``start`` once, then ``step`` repeatedly."""

    def __init__(
        self,
        config: ConsumerConfig,
        catalog: Catalog,
        partitions: Sequence[int],
        *,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        monotonic: Callable[[], float] = time.monotonic,
        clients: Callable[[ConsumerConfig, str], tuple[Any, Any]] | None = None,
        commit_deadline_s: float = TRANSACTION_TIMEOUT_MS / 1000,
        history: AcceptedHistory | None = None,
    ) -> None:
        """``history``: the offline table that new view versions are backfilled from
        (``actors.backfill.offline_history``); without one they start empty."""
        self.config = config
        self._clients = clients or kafka_clients
        self._topic = catalog.source(config.source).topic
        self._partitions = sorted(partitions)
        self._processors = {
            p: PartitionProcessor(catalog, config.source, p, now_ms, tenant=config.tenant)
            for p in partitions
        }
        self._catalog, self._history = catalog, history
        # The view versions every commit lists as computed (``actors.backfill``), and per
        # partition those left off because their backfill must wait for a later start.
        self._computed = tuple(
            view_ident(v.name, v.version)
            for v in catalog.computed_views
            if v.source == config.source
        )
        self._unlisted: dict[int, frozenset[str]] = {}
        self._now_ms = now_ms
        self._monotonic = monotonic
        self._last_commit = monotonic()
        self._pacing = CommitPacing(
            base_ms=config.commit_interval_ms,
            min_ms=config.commit_interval_min_ms,
            max_ms=config.commit_interval_max_ms,
        )
        self._window_events = self._window_full_polls = 0  # polled since the last commit
        self._pending_dead: list[tuple[int, Any]] = []
        source = catalog.source(config.source)
        self._feed = FeedEncoder(source) if config.offline_topic else None
        self._pending_offline: list[tuple[int, bytes]] = []  # (source partition, IPC value)
        self._uncommitted = False
        self.stats = ConsumerStats(commit_interval_ms=config.commit_interval_ms)
        self._consumer: Any = None
        self._producer: Any = None
        self._commit_deadline_s = commit_deadline_s
        # The running commit's protocol step and its start (monotonic); read by the watchdog
        # thread, so each is replaced by one assignment, never mutated.
        self._commit_step: str | None = None
        self._commit_began = 0.0

    @property
    def transactional_id(self) -> str:
        owned = "-".join(str(p) for p in self._partitions)
        return f"{self.config.group_id}.{self._topic}.{owned}"

    def start(self) -> None:
        """Fence any predecessor, rebuild state from the changelog, seek to committed offsets,
        then backfill the view versions a partition never committed (``actors.backfill``)."""
        started = self._monotonic()
        self._producer, self._consumer = self._clients(self.config, self.transactional_id)
        self._producer.init_transactions()  # aborts and fences a crashed predecessor's transaction
        tps = [TopicPartition(self._topic, p) for p in self._partitions]
        self._consumer.assign(tps)
        needed = {tp.partition: self._restore(tp) for tp in tps}
        self.stats.restore_s = self._monotonic() - started
        if any(needed.values()):
            self._backfill({p: idents for p, idents in needed.items() if idents})

    def _restore(self, tp: TopicPartition) -> tuple[str, ...]:
        """Restore one partition; the view versions it must backfill."""
        committed = self._consumer.committed(tp, metadata=True)
        processor = self._processors[tp.partition]
        if committed is None:
            self._consumer.seek_to_beginning(tp)
            return ()  # every version is computed from the partition's first event
        metadata = parse_offset_metadata(committed.metadata)
        records = read_changelog_partition(
            self.config.bootstrap, self.config.changelog_topic, tp.partition
        )
        processor.restore(records, metadata.watermark, committed.offset - 1)
        self.stats.restored_records += len(records)
        self._consumer.seek(tp, committed.offset)
        return to_backfill(self._computed, metadata)

    def _backfill(self, needed: dict[int, tuple[str, ...]]) -> None:
        if self._history is None:
            log.warning(
                "no offline table to backfill from: %s start empty on partitions %s",
                sorted({i for idents in needed.values() for i in idents}),
                sorted(needed),
            )
            return
        warmed = warm_start(self._catalog, self._processors, needed, self._history)
        self._unlisted = {p: frozenset(idents) for p, idents in warmed.left.items()}
        self.stats.backfilled_events = sum(warmed.folded.values())
        self.stats.backfill_s = warmed.seconds
        # The first commit publishes the backfilled blocks and lists their versions, even when
        # no event arrives: until it does, a restart backfills again.
        self._uncommitted = True

    def step(self, poll_timeout_ms: int = 100) -> int:
        """Poll once, process, and commit when the interval has passed; returns events polled."""
        polled = self._consumer.poll(timeout_ms=poll_timeout_ms)
        count = 0
        for tp, records in polled.items():
            # kafka-python's records have offset, key and value: no copy into RawRecords.
            outcome = self._processors[tp.partition].process(records)
            count += len(records)
            self.stats.accepted += outcome.accepted
            for reason, n in outcome.rejected_by_reason.items():
                self.stats.dead_lettered[reason.value] = (
                    self.stats.dead_lettered.get(reason.value, 0) + n
                )
            self._pending_dead.extend((tp.partition, d) for d in outcome.dead_letters)
            if self._feed is not None:
                handed = self._feed.encode(tp.partition, records, outcome.accepted_events)
                self._pending_offline.extend((tp.partition, value) for value in handed)
            self._uncommitted = True
        self.stats.events_in += count
        self._window_events += count
        if count >= self.config.max_poll_records:  # more were waiting: behind
            self._window_full_polls += 1
        if not self._uncommitted and any(p.has_due() for p in self._processors.values()):
            self._uncommitted = True  # held future events fall due: publish them, even idle
        if (
            self._uncommitted
            and (self._monotonic() - self._last_commit) * 1000 >= self.stats.commit_interval_ms
        ):
            self.commit()
        return count

    def commit(self) -> None:
        """The commit protocol. Each step must finish before the next one starts:

        1. Begin a transaction: everything below becomes visible together, or not at all.
        2. Produce the dead letters, and the accepted events for the offline writer
           (``actors.offline_feed``): inside the transaction, so a replay never duplicates them.
        3. Produce the changed tiles (absolute states) to the changelog partition numbered like
           the source partition, which is what a restart reads back.
        4. Add the source offsets, with each partition's watermark and the view versions it
           computes in the offset metadata, so the restored watermark always matches the restored
           tiles, and a backfilled version is listed exactly when its blocks are committed.
        5. Commit the transaction. Region sinks read the changelog ``read_committed`` and only now
           see the tiles; a crash before this line aborts it all and the restart replays from the
           previous commit's offsets onto the previous commit's state.
        """
        try:
            producer = self._producer
            began = self._commit_began = self._monotonic()
            self._commit_step = "produce"
            producer.begin_transaction()  # 1
            for _partition, letter in self._pending_dead:  # 2
                producer.send(
                    self.config.dlq_topic,
                    key=letter.key,
                    value=letter.value,
                    headers=letter.headers,
                )
            for partition, value in self._pending_offline:  # 2, accepted events
                producer.send(self.config.offline_topic, value=value, partition=partition)
            offsets = {}
            event_times: list[int] = []
            for partition, processor in self._processors.items():  # 3
                for record in processor.drain_changes():
                    key, value = encode(record)
                    producer.send(
                        self.config.changelog_topic, key=key, value=value, partition=partition
                    )
                    event_times.append(record.event_time_ms)
                    self.stats.changelog_records += 1
                position = processor.state.last_offset + 1
                if position > 0:
                    unlisted = self._unlisted.get(partition, frozenset())
                    metadata = offset_metadata(
                        processor.state.watermark,
                        (ident for ident in self._computed if ident not in unlisted),
                    )
                    offsets[TopicPartition(self._topic, partition)] = OffsetAndMetadata(
                        position, metadata, -1
                    )
                    self.stats.watermark_ms[partition] = processor.watermark_ms
            produced = self._monotonic()
            self._commit_step = "offsets"
            if offsets:  # 4
                producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            offsets_added = self._monotonic()
            self._commit_step = "end"
            producer.commit_transaction()  # 5
            visible_at = self._now_ms()
            self.stats.visible_ms.extend(float(visible_at - t) for t in event_times)
            self._pending_dead.clear()
            self._pending_offline.clear()
            self._uncommitted = False
            self._last_commit = self._monotonic()
            self.stats.commit_ms.append((self._last_commit - began) * 1000)
            phases = self.stats.commit_phase_ms
            phases["produce"].append((produced - began) * 1000)
            phases["offsets"].append((offsets_added - produced) * 1000)
            phases["end"].append((self._last_commit - offsets_added) * 1000)
            self.stats.commits += 1
            self.stats.commit_interval_ms = self._pacing.next_ms(
                self.stats.commit_interval_ms,
                events=self._window_events,
                full_polls=self._window_full_polls,
            )
            self._window_events = self._window_full_polls = 0
        finally:
            self._commit_step = None  # finished or failed: no commit is running

    def commit_running_s(self) -> float | None:
        """How long the commit in progress has been running; None between commits. Safe to
        call from another thread."""
        step, began = self._commit_step, self._commit_began
        return None if step is None else self._monotonic() - began

    def overdue_commit(self) -> CommitStalled | None:
        """The commit in progress when it has run past its deadline (it can never finish: the
        client lost its request or the coordinator aborted the transaction), else None. Safe to
        call from another thread; the caller must end this process, since the stuck call cannot
        be interrupted."""
        step, began = self._commit_step, self._commit_began
        if step is None:
            return None
        running_s = self._monotonic() - began
        if running_s <= self._commit_deadline_s:
            return None
        return CommitStalled(self.transactional_id, step, running_s, self._commit_deadline_s)

    def refresh_lag(self) -> dict[int, int]:
        tps = [TopicPartition(self._topic, p) for p in self._partitions]
        ends = self._consumer.end_offsets(tps)
        self.stats.lag = {
            tp.partition: max(0, ends[tp] - self._consumer.position(tp)) for tp in tps
        }
        return self.stats.lag

    def close(self) -> None:
        if self._uncommitted:
            self.commit()
        if self._consumer is not None:
            self._consumer.close()
        if self._producer is not None:
            self._producer.close()

    def dead_lettered(self, reason: RejectReason) -> int:
        return self.stats.dead_lettered.get(reason.value, 0)


def kafka_clients(config: ConsumerConfig, transactional_id: str) -> tuple[Any, Any]:
    """The transactional producer and the (assigned, never subscribed) consumer of one actor."""
    producer = KafkaProducer(
        bootstrap_servers=config.bootstrap,
        transactional_id=transactional_id,
        transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        compression_type=None,
    )
    consumer = read_committed_consumer(
        config.bootstrap,
        config.group_id,
        auto_offset_reset="earliest",
        max_poll_records=config.max_poll_records,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    return producer, consumer


def read_changelog_partition(bootstrap: str, topic: str, partition: int) -> list[ChangelogRecord]:
    """Every committed record of one changelog partition, in log order (for restores)."""
    consumer = read_committed_consumer(bootstrap, None)
    tp = TopicPartition(topic, partition)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        records: list[ChangelogRecord] = []
        while consumer.position(tp) < end:
            for batch in consumer.poll(timeout_ms=500, max_records=50_000).values():
                for r in batch:
                    try:
                        records.append(decode(r.key, r.value))
                    except ChangelogDecodeError:
                        continue
        return records
    finally:
        consumer.close()
