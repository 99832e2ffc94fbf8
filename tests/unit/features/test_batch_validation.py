"""Batch validation as columns decides every row as the per-record validator does: the same
accepted events, and for a refused row the same reason and detail, in every mix of good and bad
rows (a bad row must not change its neighbours' decisions, nor be hidden by them)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from features.batch_validation import BatchValidator
from features.demo import SOURCE, card_transactions_catalog
from features.errors import EventRejected, RejectReason
from features.validation import EventValidator

NOW = 1_764_000_000_000
CATALOG = card_transactions_catalog()
KEYS = ("user_id", "merchant_id")
SCALAR = EventValidator(CATALOG.source(SOURCE), KEYS, lambda: NOW, 64)
BATCH = BatchValidator(CATALOG.source(SOURCE), KEYS, lambda: NOW, 64)

GOOD: dict[str, Any] = {
    "event_id": "r-1",
    "seq": 1,
    "event_type": "card_tx",
    "user_id": "u_000001",
    "merchant_id": "m_00001",
    "amount": 12.5,
    "currency": "USD",
    "event_time_ms": NOW - 10,
}
# Values that one check or another refuses (or accepts only on the per-record path).
ODD: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64 - 1,
    -(2**63),
    1.5,
    -0.0,
    1e300,
    "",
    "x",
    "u\u00e9",  # not ASCII: only the per-record checks accept it
    "\u00e9" * 33,  # 33 characters, 66 bytes
    "a\x7fb",
    "a\tb",
    "a" * 64,
    "a" * 65,
    [],
    {},
    "card_tx",
    NOW + 60_000,
    NOW + 60_001,
]
_DROP = object()
RAW: list[bytes | None] = [
    None,
    b"",
    b"{oops",
    b"[1, 2]",
    b"null",
    b'"text"',
    b'{"amount": NaN}',
    orjson.dumps(GOOD).replace(b'"amount":12.5', b'"amount":1e400'),
    orjson.dumps(GOOD).replace(b'"amount":12.5', b'"amount":Infinity'),
    orjson.dumps({**GOOD, "pad": "x" * 5000}),
    b"x" * 5000,
    orjson.dumps({**GOOD, "extra": [1, {"a": None}]}),
]


def _variant(field: str, value: Any) -> bytes:
    event = {k: v for k, v in {**GOOD, field: value}.items() if v is not _DROP}
    return orjson.dumps(event)


VALUES = st.one_of(
    st.just(orjson.dumps(GOOD)),
    st.builds(_variant, st.sampled_from(sorted(GOOD)), st.sampled_from([*ODD, _DROP])),
    st.sampled_from(RAW),
)


def _scalar(raw: bytes | None) -> Any:
    try:
        return SCALAR.validate(raw)
    except EventRejected as refused:
        return (refused.reason, refused.detail)


def _batch(values: list[bytes | None]) -> list[Any]:
    out = BATCH.validate(values)
    decided: dict[int, Any] = {i: (r.reason, r.detail) for i, r in out.rejected}
    for i, event in zip(out.rows.tolist(), out.events, strict=True):
        assert i not in decided, "a row both accepted and refused"
        decided[i] = event
    for name, column in out.columns.items():
        assert column == [event[name] for event in out.events], name
    assert [i for i, _ in out.rejected] == sorted(i for i, _ in out.rejected)
    return [decided[i] for i in range(len(values))]


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUES, max_size=40))
@example([orjson.dumps(GOOD)] * 3)
@example([])
@example([_variant("user_id", "u\u00e9"), orjson.dumps(GOOD), None])
def test_every_row_is_decided_as_the_per_record_validator_decides_it(
    values: list[bytes | None],
) -> None:
    assert _batch(values) == [_scalar(v) for v in values]


def test_the_rows_set_aside_are_the_bad_ones_and_the_good_ones_keep_their_place() -> None:
    good = orjson.dumps(GOOD)
    values = [good, b"{oops", good, _variant("amount", "x"), _variant("user_id", "u\u00e9"), None]
    out = BATCH.validate(values)
    assert out.rows.tolist() == [0, 2, 4]
    assert [(i, r.reason) for i, r in out.rejected] == [
        (1, RejectReason.BAD_JSON),
        (3, RejectReason.WRONG_TYPE),
        (5, RejectReason.BAD_JSON),
    ]
    assert out.columns["user_id"] == ["u_000001", "u_000001", "u\u00e9"]
