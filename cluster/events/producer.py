"""Sends synthetic events to Kafka and records every acknowledged one in the ledger.

Delivery contract: each event sent ends up either in the ledger (acknowledged by all in-sync
replicas, with its partition and offset) or counted as failed; failures are raised as
:class:`DeliveryFailed` when the producer is closed, after the acknowledged events are written.
Nothing is dropped silently. The idempotent producer (``enable_idempotence=True``, which needs
``acks="all"`` and at most 5 requests in flight) keeps each partition in send order even across
retries, so a key's events reach the consumer in ``seq`` order and retries add no duplicates.

Acknowledgements are drained on the caller's thread (``poll_acks``), never in kafka-python's
I/O thread callbacks, so the ledger needs no lock and is written in send order.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field

from cluster.events.exceptions import BrokerUnavailable, DeliveryFailed
from cluster.events.ledger import LedgerRecord, LedgerWriter
from cluster.events.synth import SyntheticEvent

# Seconds a close() waits for sends that the flush did not complete.
_GRACE_S = 1.0


class SendFuture(Protocol):
    """What kafka-python's ``FutureRecordMetadata`` offers and we use."""

    is_done: bool
    value: Any
    exception: BaseException | None


class KafkaProducerLike(Protocol):
    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class ProducerSettings(BaseModel):
    """kafka-python producer tuning plus the generator's pacing. Defaults favour throughput."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str = "freshline-generator"
    # 10 ms of linger lets a pacing batch (50 ms of events) leave as a few large requests.
    linger_ms: int = Field(default=10, ge=0, le=1_000)
    batch_size: int = Field(default=256 * 1024, ge=1_024, le=16 * 1024 * 1024)
    # lz4/zstd need packages that are not installed; gzip costs CPU the 2-core box lacks.
    compression_type: Literal["gzip"] | None = None
    # The constructor waits this long for a first broker answer, then raises BrokerUnavailable.
    bootstrap_timeout_ms: int = Field(default=10_000, ge=100)
    # send() blocks at most this long for metadata or buffer space, then fails the event.
    max_block_ms: int = Field(default=10_000, ge=100)
    request_timeout_ms: int = Field(default=15_000, ge=1_000)
    delivery_timeout_ms: int = Field(default=60_000, ge=1_000)
    flush_timeout_s: float = Field(default=60.0, gt=0)
    pacing_interval_s: float = Field(default=0.05, gt=0, le=5.0)
    max_burst_events: int = Field(default=20_000, ge=1)
    abort_after_failures: int = Field(default=1_000, ge=1)

    def kafka_config(self, bootstrap: str) -> dict[str, Any]:
        return {
            "bootstrap_servers": bootstrap,
            "client_id": self.client_id,
            "acks": "all",
            "enable_idempotence": True,
            "max_in_flight_requests_per_connection": 5,
            "linger_ms": self.linger_ms,
            "batch_size": self.batch_size,
            "compression_type": self.compression_type,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            "max_block_ms": self.max_block_ms,
            "request_timeout_ms": self.request_timeout_ms,
            "delivery_timeout_ms": self.delivery_timeout_ms,
            # A mistyped topic fails loudly instead of becoming a new 1-partition topic.
            "allow_auto_create_topics": False,
        }


def kafka_producer(settings: ProducerSettings, bootstrap: str) -> KafkaProducerLike:
    """A real kafka-python producer; a broker that does not answer raises BrokerUnavailable."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        producer: KafkaProducerLike = KafkaProducer(**settings.kafka_config(bootstrap))
    except KafkaError as exc:  # kafka-python 3 raises KafkaTimeoutError("Unable to bootstrap")
        raise BrokerUnavailable(bootstrap, str(exc) or type(exc).__name__) from exc
    return producer


ProducerFactory = Callable[[ProducerSettings, str], KafkaProducerLike]


@dataclass
class DeliveryStats:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    acked_by_kind: Counter[str] = field(default_factory=Counter)
    first_error: str = ""

    @property
    def in_flight(self) -> int:
        return self.sent - self.acked - self.failed


class EventProducer:
    """Keyed sends of synthetic events; the ledger gets each acknowledged event in send order."""

    def __init__(
        self,
        producer: KafkaProducerLike,
        topic: str,
        ledger: LedgerWriter,
        *,
        flush_timeout_s: float = 60.0,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._ledger = ledger
        self._flush_timeout_s = flush_timeout_s
        self._pending: deque[tuple[SyntheticEvent, SendFuture]] = deque()
        self.stats = DeliveryStats()
        self._closed = False

    def send_batch(self, events: Iterable[SyntheticEvent]) -> None:
        """Hand the events to the client (non-blocking unless its buffer is full). An event the
        client refuses outright is counted as failed, not retried: retries belong to the client."""
        send, topic = self._producer.send, self.topic
        for event in events:
            self.stats.sent += 1
            try:
                future = send(topic, value=event.value, key=event.key)
            except Exception as exc:  # any refusal is a failed delivery, reported at close
                self._fail(exc)
                continue
            self._pending.append((event, future))

    def poll_acks(self) -> int:
        """Move completed sends, oldest first, to the ledger or the failure count. Never blocks.
        Returns how many were acknowledged."""
        records: list[LedgerRecord] = []
        pending = self._pending
        while pending and pending[0][1].is_done:
            event, future = pending.popleft()
            if future.exception is None:
                meta = future.value
                records.append(
                    LedgerRecord.acknowledged(event, self.topic, meta.partition, meta.offset)
                )
                self.stats.acked_by_kind[event.kind.value] += 1
            else:
                self._fail(future.exception)
        self._ledger.append_many(records)
        self.stats.acked += len(records)
        return len(records)

    def close(self) -> DeliveryStats:
        """Flush, record the outcome of every send, close the client; raise if any failed."""
        if not self._closed:
            self._closed = True
            # 1. Flush: every in-flight batch is acknowledged or failed (or the timeout expires).
            try:
                self._producer.flush(timeout=self._flush_timeout_s)
            except Exception as exc:  # a flush timeout: stragglers are failed in step 3
                self.stats.first_error = self.stats.first_error or _describe(exc)
            # 2. Ledger first, so acknowledged events are on disk whatever happens next.
            self.poll_acks()
            # 3. Close; sends still pending after the flush get a short grace, then count as failed.
            self._close_client(_GRACE_S if self._pending else self._flush_timeout_s)
            self.poll_acks()
            for _event, future in self._pending:
                self._fail(future.exception or TimeoutError("not acknowledged before close"))
            self._pending.clear()
        if self.stats.failed:
            raise DeliveryFailed(self.stats.failed, self.stats.acked, self.stats.first_error)
        return self.stats

    def abort(self) -> None:
        """Close on an error path: record what completed, never raise DeliveryFailed."""
        if self._closed:
            return
        self._closed = True
        self._close_client(_GRACE_S)
        self.poll_acks()
        self.stats.failed += len(self._pending)
        self._pending.clear()

    def _close_client(self, timeout_s: float) -> None:
        # kafka-python's close() flushes first and raises KafkaTimeoutError if batches are still
        # incomplete; its I/O thread is a daemon, so the process can still exit.
        try:
            self._producer.close(timeout=timeout_s)
        except Exception as exc:
            self.stats.first_error = self.stats.first_error or _describe(exc)

    def _fail(self, exc: BaseException) -> None:
        self.stats.failed += 1
        if not self.stats.first_error:
            self.stats.first_error = _describe(exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
