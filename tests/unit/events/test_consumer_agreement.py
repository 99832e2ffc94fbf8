"""The consumer's own validator, run on generated events, refuses each malformed kind for exactly
the reason the generator meant, and accepts valid, out-of-order and late events (lateness is the
watermark's call, checked in test_synth)."""

from __future__ import annotations

import pytest

from cluster.events.synth import MALFORMED_KINDS, EventKind, EventSynthesizer, GeneratorConfig
from features.demo import SOURCE, card_transactions_catalog
from features.errors import EventRejected, RejectReason
from features.validation import EventValidator
from tests.unit.events.fakes import StepClock


def validator(clock: StepClock) -> EventValidator:
    source = card_transactions_catalog().source(SOURCE)
    return EventValidator(source, ("user_id", "merchant_id"), lambda: clock.next, 64)


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_malformed_kind_is_refused_for_its_own_reason(kind: EventKind) -> None:
    clock = StepClock()
    config = GeneratorConfig(
        max_events=300, out_of_order_share=0.0, malformed_share=1.0, malformed_kinds=(kind,)
    )
    check = validator(clock)
    for event in EventSynthesizer(config, clock).next_batch(300):
        with pytest.raises(EventRejected) as caught:
            check.validate(event.value)
        assert caught.value.reason is RejectReason(kind.value), event.value[:200]


def test_ingestible_kinds_pass_validation() -> None:
    clock = StepClock()
    config = GeneratorConfig(
        max_events=3_000, out_of_order_share=0.3, late_share=0.2, late_warmup_events=10
    )
    check = validator(clock)
    kinds = set()
    for event in EventSynthesizer(config, clock).next_batch(3_000):
        assert check.validate(event.value)["event_id"] == event.event_id
        kinds.add(event.kind)
    assert kinds == {EventKind.VALID, EventKind.OUT_OF_ORDER, EventKind.LATE}
