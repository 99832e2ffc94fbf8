"""One generator run: synthesise, pace, send, ledger; returns a report. Time is injected."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict

from cluster.events.ledger import LedgerWriter
from cluster.events.pacing import Pacer
from cluster.events.producer import EventProducer, ProducerFactory, ProducerSettings
from cluster.events.synth import EventSynthesizer, GeneratorConfig


def _system_now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Clock:
    """Event time (``now_ms``, epoch ms UTC) and pacing time (``monotonic`` s, ``sleep``)."""

    now_ms: Callable[[], int] = _system_now_ms
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


SYSTEM_CLOCK = Clock()


class GeneratorProgress(NamedTuple):
    sent: int
    acked: int
    failed: int
    elapsed_s: float


class GeneratorReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    topic: str
    ledger: str
    planned: int
    sent: int
    acked: int
    failed: int
    counts_by_kind: dict[str, int]
    target_rate_per_s: float
    events_per_s: float
    duration_s: float

    def to_json_line(self) -> str:
        return orjson.dumps(self.model_dump(), option=orjson.OPT_SORT_KEYS).decode()


def run_generator(
    config: GeneratorConfig,
    bootstrap: str,
    topic: str,
    ledger_path: Path | str,
    on_progress: Callable[[GeneratorProgress], None] | None = None,
    *,
    settings: ProducerSettings | None = None,
    clock: Clock = SYSTEM_CLOCK,
    producer_factory: ProducerFactory | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GeneratorReport:
    """Produce ``config.planned_events`` events at ``config.rate_per_s`` (open loop, batch-paced).

    Returns once every event is acknowledged; raises :class:`DeliveryFailed` if any was not
    (after writing the acknowledged ones to the ledger) and :class:`BrokerUnavailable` if no
    broker answers. ``events_per_s`` counts acknowledged events over start-to-last-ack.
    ``should_stop`` ends the run early (Ctrl-C in the demo); what was sent is still flushed,
    acknowledged and written to the ledger."""
    settings = settings or ProducerSettings()
    if producer_factory is None:
        from cluster.events.producer import kafka_producer

        producer_factory = kafka_producer
    synth = EventSynthesizer(config, clock.now_ms)
    pacer = Pacer(
        config.rate_per_s, synth.planned, settings.pacing_interval_s, settings.max_burst_events
    )
    with (
        LedgerWriter.open(ledger_path) as ledger,
        EventProducer(
            producer_factory(settings, bootstrap),
            topic,
            ledger,
            flush_timeout_s=settings.flush_timeout_s,
        ) as producer,
    ):
        start = clock.monotonic()
        while not synth.exhausted and producer.stats.failed < settings.abort_after_failures:
            if should_stop is not None and should_stop():
                break
            due = pacer.due(clock.monotonic() - start, synth.emitted)
            if due:
                producer.send_batch(synth.next_batch(due))
            producer.poll_acks()
            stats = producer.stats
            if on_progress is not None:
                elapsed = clock.monotonic() - start
                on_progress(GeneratorProgress(stats.sent, stats.acked, stats.failed, elapsed))
            wait = pacer.wait_s(clock.monotonic() - start, synth.emitted)
            if wait > 0:
                clock.sleep(wait)
        stats = producer.close()
        duration = clock.monotonic() - start
    return GeneratorReport(
        run_id=config.run_id,
        topic=topic,
        ledger=str(ledger_path),
        planned=synth.planned,
        sent=stats.sent,
        acked=stats.acked,
        failed=stats.failed,
        counts_by_kind=dict(sorted(stats.acked_by_kind.items())),
        target_rate_per_s=config.rate_per_s,
        events_per_s=round(stats.acked / duration, 1) if duration > 0 else 0.0,
        duration_s=round(duration, 3),
    )
