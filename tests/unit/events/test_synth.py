"""The synthesizer against an independent reading of the schema: kinds, shares, times, skew."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from cluster.events.exceptions import GeneratorConfigError
from cluster.events.synth import (
    EventKind,
    EventSynthesizer,
    GeneratorConfig,
    SyntheticEvent,
)
from tests.unit.events.fakes import START_MS, StepClock

# The schema as the feature catalog states it, written out again rather than imported.
SCHEMA: dict[str, type] = {
    "event_id": str,
    "seq": int,
    "event_type": str,
    "user_id": str,
    "merchant_id": str,
    "amount": float,
    "currency": str,
    "event_time_ms": int,
}
MALFORMED = [
    "bad_json",
    "missing_field",
    "wrong_type",
    "non_finite",
    "oversized",
    "future",
    "unknown_type",
]


def synth(clock: StepClock | None = None, **overrides: Any) -> EventSynthesizer:
    config = GeneratorConfig(**{"run_id": "t1", "seed": 7, "max_events": 20_000, **overrides})
    return EventSynthesizer(config, clock or StepClock())


def mistyped(obj: dict[str, Any]) -> list[str]:
    """Fields present with a JSON type other than the schema's (an int is a valid float)."""
    bad = []
    for name, kind in SCHEMA.items():
        if name not in obj:
            continue
        value = obj[name]
        ok = isinstance(value, int | float) if kind is float else isinstance(value, kind)
        if isinstance(value, bool) or not ok:
            bad.append(name)
    return bad


def assert_valid_payload(event: SyntheticEvent, obj: dict[str, Any]) -> None:
    assert set(SCHEMA) <= set(obj)
    assert mistyped(obj) == []
    assert obj["event_type"] == "card_tx"
    assert obj["event_id"] == f"t1-{obj['seq']}" == event.event_id
    assert re.fullmatch(r"u_\d{6}", obj["user_id"]) and re.fullmatch(r"m_\d{5}", obj["merchant_id"])
    assert obj["amount"] > 0 and round(obj["amount"], 2) == obj["amount"]
    assert math.isfinite(obj["amount"])
    assert obj["currency"] in {"USD", "EUR", "GBP"}
    assert (obj["user_id"], obj["merchant_id"]) == (event.user_id, event.merchant_id)
    assert (obj["amount"], obj["event_time_ms"]) == (event.amount, event.event_time_ms)


def only(kind: str, n: int = 600, **overrides: Any) -> list[SyntheticEvent]:
    s = synth(malformed_share=1.0, malformed_kinds=[kind], out_of_order_share=0.0, **overrides)
    return s.next_batch(n)


# --- determinism and bounds ---------------------------------------------------------------------


def test_the_same_seed_and_clock_give_identical_events() -> None:
    a = synth(malformed_share=0.1, late_share=0.05).next_batch(5_000)
    b = synth(malformed_share=0.1, late_share=0.05).next_batch(5_000)
    assert a == b
    c = synth(seed=8, malformed_share=0.1, late_share=0.05).next_batch(5_000)
    assert [e.value for e in a] != [e.value for e in c]


def test_events_do_not_depend_on_how_they_are_batched() -> None:
    whole = synth(malformed_share=0.1).next_batch(10_000)
    s = synth(malformed_share=0.1)
    pieces: list[SyntheticEvent] = []
    for size in (1, 7, 4_096, 1, 5_000, 10_000):
        pieces += s.next_batch(size)
    assert pieces[: len(whole)] == whole


def test_a_run_stops_at_its_planned_size_with_dense_sequence_numbers() -> None:
    s = synth(max_events=None, duration_s=3.0, rate_per_s=1_000.0)
    assert s.planned == 3_000
    events = list(s)
    assert [e.seq for e in events] == list(range(3_000))
    assert all(e.event_id == f"t1-{e.seq}" for e in events)
    assert s.exhausted and s.next_batch(10) == []
    assert GeneratorConfig(max_events=10, duration_s=60.0).planned_events == 10


def test_valid_events_follow_the_schema_and_are_keyed_by_user() -> None:
    events = synth(out_of_order_share=0.3).next_batch(5_000)
    for event in events:
        obj = orjson.loads(event.value)
        assert_valid_payload(event, obj)
        assert event.key == obj["user_id"].encode("utf-8")
        assert len(event.value) <= 4096
        assert list(obj) == list(SCHEMA)


# --- shares -------------------------------------------------------------------------------------


def test_each_kind_appears_in_its_configured_share() -> None:
    n = 50_000
    shares = {"out_of_order": 0.05, "late": 0.02, **{k: 0.01 for k in MALFORMED}}
    s = synth(
        max_events=n,
        out_of_order_share=0.05,
        late_share=0.02,
        late_warmup_events=0,
        malformed_share=0.07,
    )
    counts = Counter(e.kind.value for e in s.next_batch(n))
    shares["valid"] = 1 - sum(shares.values())
    for kind, p in shares.items():
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts[kind] - n * p) < 5 * sd, (kind, counts[kind])


def test_only_the_selected_malformed_kinds_are_drawn() -> None:
    s = synth(malformed_share=0.5, malformed_kinds=["oversized", "future"])
    kinds = {e.kind for e in s.next_batch(2_000)}
    assert kinds <= {EventKind.VALID, EventKind.OUT_OF_ORDER, EventKind.OVERSIZED, EventKind.FUTURE}
    assert {EventKind.OVERSIZED, EventKind.FUTURE} <= kinds


# --- each malformed kind is malformed in exactly the intended way ------------------------------


def test_bad_json_fails_every_json_parser() -> None:
    events = only("bad_json")
    assert {e.detail for e in events} == {"truncated", "python_repr", "trailing_garbage"}
    for event in events:
        with pytest.raises(ValueError):
            json.loads(event.value)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(event.value)


def reject_constants(name: str) -> float:
    raise ValueError(name)


def test_non_finite_parses_only_with_nan_or_infinity_literals() -> None:
    events = only("non_finite")
    assert {e.detail for e in events} == {"NaN", "Infinity", "-Infinity"}
    for event in events:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(event.value)
        with pytest.raises(ValueError, match=re.escape(event.detail)):
            json.loads(event.value, parse_constant=reject_constants)
        obj = json.loads(event.value)
        assert not math.isfinite(obj["amount"])
        assert mistyped(obj) == []
        assert_valid_payload(event, {**obj, "amount": event.amount})


def test_oversized_is_a_valid_event_over_4096_bytes() -> None:
    for event in only("oversized"):
        assert len(event.value) > 4096
        obj = orjson.loads(event.value)
        assert_valid_payload(event, obj)
        assert set(obj) - set(SCHEMA) == {"memo"}
        assert event.detail == f"{len(event.value)} bytes"


def test_missing_field_lacks_exactly_one_required_field() -> None:
    dropped: Counter[str] = Counter()
    for event in only("missing_field"):
        obj = orjson.loads(event.value)
        missing = set(SCHEMA) - set(obj)
        assert missing == {event.detail}
        assert set(obj) <= set(SCHEMA) and mistyped(obj) == []
        assert obj["event_type"] == "card_tx"
        dropped[event.detail] += 1
    assert set(dropped) == set(SCHEMA) - {"event_type"}


def test_wrong_type_mistypes_exactly_one_field() -> None:
    fields = set()
    for event in only("wrong_type"):
        obj = orjson.loads(event.value)
        assert set(obj) == set(SCHEMA)
        assert mistyped(obj) == [event.detail.split(":")[0]]
        assert obj["event_type"] == "card_tx"
        fields.add(event.detail.split(":")[0])
    assert {"amount", "seq", "event_time_ms", "user_id"} <= fields


def test_future_events_are_more_than_five_minutes_ahead_and_otherwise_valid() -> None:
    clock = StepClock()
    for event in only("future", clock=clock):
        obj = orjson.loads(event.value)
        assert_valid_payload(event, obj)
        assert obj["event_time_ms"] > clock.readings[event.seq] + 5 * 60_000


def test_unknown_type_changes_only_the_event_type() -> None:
    for event in only("unknown_type"):
        obj = orjson.loads(event.value)
        assert obj["event_type"] != "card_tx" and obj["event_type"] == event.detail
        assert_valid_payload(event, {**obj, "event_type": "card_tx"})


def test_every_event_is_keyed_by_its_drawn_user_whatever_its_kind() -> None:
    for kind in MALFORMED:
        assert all(e.key == e.user_id.encode() for e in only(kind, n=50))


# --- event time ---------------------------------------------------------------------------------


def stream_clock(clock: StepClock) -> list[int]:
    """The largest reading up to each event (the clock is read exactly once per event)."""
    out, top = [], -1
    for reading in clock.readings:
        top = max(top, reading)
        out.append(top)
    return out


def test_event_times_follow_the_stream_clock_by_kind() -> None:
    clock = StepClock(step_ms=3)
    events = synth(clock, out_of_order_share=0.2, late_share=0.1, late_warmup_events=300)
    events_ = events.next_batch(20_000)
    stream = stream_clock(clock)
    assert len(clock.readings) == len(events_)
    kinds = Counter(e.kind for e in events_)
    assert kinds[EventKind.LATE] > 1_000 and kinds[EventKind.OUT_OF_ORDER] > 3_000
    for event in events_:
        behind = stream[event.seq] - event.event_time_ms
        if event.kind is EventKind.VALID:
            assert behind == 0
        elif event.kind is EventKind.OUT_OF_ORDER:
            assert 1 <= behind <= 4_000
        elif event.kind is EventKind.LATE:
            assert behind >= 10 * 60_000
            assert event.seq >= 300


def test_a_late_event_follows_a_fresh_event_of_the_same_key() -> None:
    """The consumer's watermark for the key's partition is then already past the late event:
    watermark >= fresh time - 5 s, and late means older than watermark - 30 s."""
    events = synth(late_share=0.05, out_of_order_share=0.1).next_batch(20_000)
    latest: dict[str, int] = {}
    late = 0
    for event in events:
        if event.kind is EventKind.LATE:
            late += 1
            assert event.event_time_ms < latest[event.user_id] - 5_000 - 30_000
        elif event.ingestible:
            latest[event.user_id] = max(latest.get(event.user_id, 0), event.event_time_ms)
    assert late > 500


def test_the_stream_clock_never_goes_back() -> None:
    readings = iter([START_MS, START_MS - 5_000, START_MS + 10, START_MS - 1] * 500)
    s = synth(lambda: next(readings), max_events=2_000)  # type: ignore[arg-type]
    times = [e.event_time_ms for e in s.next_batch(2_000) if e.kind is EventKind.VALID]
    assert times == sorted(times) and times[-1] == START_MS + 10


# --- skew ---------------------------------------------------------------------------------------


def test_a_few_heavy_users_and_merchants_carry_much_of_the_traffic() -> None:
    events = synth(max_events=100_000, n_users=10_000, n_merchants=500).next_batch(100_000)
    users = Counter(e.user_id for e in events)
    top_users = sum(c for _, c in users.most_common(100))  # the top 1% of users
    assert top_users / len(events) > 0.30
    merchants = Counter(e.merchant_id for e in events)
    assert sum(c for _, c in merchants.most_common(5)) / len(events) > 0.30
    expected = EventSynthesizer(GeneratorConfig(max_events=1), StepClock()).user_top_share(0.01)
    assert abs(top_users / len(events) - expected) < 0.02


def test_a_zero_exponent_draws_users_uniformly() -> None:
    events = synth(max_events=50_000, user_zipf_s=0.0, n_users=1_000).next_batch(50_000)
    users = Counter(e.user_id for e in events)
    assert sum(c for _, c in users.most_common(10)) / len(events) < 0.02


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_users": 0}, "n_users"),
        ({"rate_per_s": -1}, "rate_per_s"),
        ({"late_share": 1.5}, "late_share"),
        ({"run_id": "has space"}, "run_id"),
        ({"malformed_kinds": ["valid"]}, "malformed_kinds"),
        ({"malformed_kinds": ["nonsense"]}, "malformed_kinds.0"),
        ({"late_min_lag_ms": 1_000}, "late_min_lag_ms"),
        ({"rate": 5}, "rate"),
    ],
)
def test_config_errors_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(GeneratorConfigError) as caught:
        GeneratorConfig.from_mapping({"max_events": 10, **overrides})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({}, "duration_s or max_events"),
        ({"max_events": 5, "late_share": 0.6, "malformed_share": 0.6}, "late_share"),
        ({"max_events": 5, "malformed_share": 0.1, "malformed_kinds": []}, "malformed_kinds"),
    ],
)
def test_cross_field_errors_name_the_fields(data: dict[str, Any], named: str) -> None:
    with pytest.raises(GeneratorConfigError, match=named):
        GeneratorConfig.from_mapping(data)


def test_no_malformed_kinds_is_fine_without_a_malformed_share() -> None:
    events = synth(malformed_kinds=[], malformed_share=0.0).next_batch(1_000)
    assert {e.kind for e in events} <= {EventKind.VALID, EventKind.OUT_OF_ORDER}


def test_config_is_frozen_and_kinds_are_canonical() -> None:
    config = GeneratorConfig.from_mapping(
        {"max_events": 1, "malformed_kinds": ["future", "bad_json", "future"]}
    )
    assert config.malformed_kinds == (EventKind.BAD_JSON, EventKind.FUTURE)
    with pytest.raises(ValidationError):
        config.seed = 3
