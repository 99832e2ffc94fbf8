"""One test per reject reason, plus the valid path; the demo catalog's source is the subject."""

from __future__ import annotations

import orjson
import pytest

from features.demo import SOURCE, card_transactions_catalog
from features.errors import EventRejected, RejectReason
from features.validation import EventValidator

NOW = 1_764_000_000_000
CATALOG = card_transactions_catalog()
VALIDATOR = EventValidator(CATALOG.source(SOURCE), ("user_id", "merchant_id"), lambda: NOW, 64)


def _event(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": "r-1",
        "seq": 1,
        "event_type": "card_tx",
        "user_id": "u_000001",
        "merchant_id": "m_00001",
        "amount": 12.5,
        "currency": "USD",
        "event_time_ms": NOW - 10,
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP = object()


def _reason(raw: bytes) -> RejectReason:
    with pytest.raises(EventRejected) as caught:
        VALIDATOR.validate(raw)
    return caught.value.reason


def test_a_valid_event_is_returned_with_its_fields() -> None:
    event = VALIDATOR.validate(orjson.dumps(_event(amount=7)))
    assert event["amount"] == 7 and event["user_id"] == "u_000001"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"x" * 5000, RejectReason.OVERSIZED),
        (b"{not json", RejectReason.BAD_JSON),
        (b"[1, 2]", RejectReason.BAD_JSON),
        (b'{"amount": NaN}', RejectReason.NON_FINITE),
        (orjson.dumps(_event(event_type="card_refund_v9")), RejectReason.UNKNOWN_TYPE),
        (orjson.dumps(_event(amount=_DROP)), RejectReason.MISSING_FIELD),
        (orjson.dumps(_event(amount=None)), RejectReason.MISSING_FIELD),
        (orjson.dumps(_event(amount="12.5")), RejectReason.WRONG_TYPE),
        (orjson.dumps(_event(seq=True)), RejectReason.WRONG_TYPE),
        (orjson.dumps(_event(event_time_ms=1.5)), RejectReason.WRONG_TYPE),
        (orjson.dumps(_event(user_id="")), RejectReason.BAD_KEY),
        (orjson.dumps(_event(user_id="u" * 65)), RejectReason.BAD_KEY),
        (orjson.dumps(_event(merchant_id="m\n1")), RejectReason.BAD_KEY),
        (orjson.dumps(_event(event_time_ms=NOW + 60_001)), RejectReason.FUTURE),
    ],
)
def test_each_bad_input_gets_its_reason(raw: bytes, reason: RejectReason) -> None:
    assert _reason(raw) is reason


def test_non_finite_amount_written_as_a_json_literal_is_non_finite() -> None:
    raw = orjson.dumps(_event(amount=0)).replace(b'"amount":0', b'"amount":Infinity')
    assert _reason(raw) is RejectReason.NON_FINITE


def test_future_skew_boundary_is_inclusive() -> None:
    assert VALIDATOR.validate(orjson.dumps(_event(event_time_ms=NOW + 60_000)))


def test_arbitrary_bytes_never_raise_anything_but_a_rejection() -> None:
    import random

    rng = random.Random(3)
    for _ in range(500):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        try:
            VALIDATOR.validate(raw)
        except EventRejected:
            continue


_ODD_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    2**40,
    1.5,
    0.0,
    "",
    "x",
    "u\u00e9",
    "a\x7fb",
    "a\tb",
    "a" * 65,
    [],
    {},
    [1],
    NOW + 60_001,
    NOW + 60_000,
    1e300,
    "card_tx",
    "USD",
]


def _decision(validate: object, raw: bytes) -> object:
    try:
        return validate(raw)  # type: ignore[operator]
    except EventRejected as rejected:
        return rejected.reason


def test_fast_path_never_changes_a_decision() -> None:
    """Every field of a valid event replaced (or dropped) by odd values of every JSON type: the
    validator decides exactly as the ordered checks alone do."""
    checked = VALIDATOR._checked  # the ordered checks, without the fast path in front
    fields = list(_event())
    for name in fields:
        for odd in [*_ODD_VALUES, _DROP]:
            raw = orjson.dumps(_event(**{name: odd}))
            slow = _decision(lambda r: checked(orjson.loads(r)), raw)
            assert _decision(VALIDATOR.validate, raw) == slow, (name, odd)


@pytest.mark.parametrize("odd", [[], {}, ["card_tx"]])
def test_an_unhashable_event_type_is_unknown_not_a_crash(odd: object) -> None:
    assert _reason(orjson.dumps(_event(event_type=odd))) is RejectReason.UNKNOWN_TYPE


def test_a_record_without_value_is_bad_json_not_a_crash() -> None:
    with pytest.raises(EventRejected) as caught:
        VALIDATOR.validate(None)
    assert caught.value.reason is RejectReason.BAD_JSON
