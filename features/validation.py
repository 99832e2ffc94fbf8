"""Event validation: raw Kafka bytes in, a typed event dict out, or ``EventRejected`` with a reason.

The checks run in a fixed order, so every bad event gets exactly one, predictable reason:

1. ``oversized``     more than the source's ``max_payload_bytes``
2. ``bad_json``      not a JSON object (``non_finite`` if it only parses with NaN/Infinity literals)
3. ``unknown_type``  the event-type field is not one of the source's ``event_types``
4. ``missing_field`` a declared field is absent or null
5. ``wrong_type``    a declared field has another JSON type (an int is a valid float; a bool is
                     never a number)
6. ``non_finite``    a float field is NaN or infinite
7. ``bad_key``       an entity id is empty, too long or holds control characters
8. ``future``        event time beyond ``now + max_future_skew`` (``now`` is injected)

Lateness is not decided here: it depends on the partition's watermark (``features.watermark``).
Undeclared fields are kept untouched, so producers can add fields without breaking consumers.

Speed: a valid event is recognised by one pass of exact-type checks (:meth:`EventValidator._valid`)
that accepts only what the checks above accept; anything it does not recognise goes through the
checks in order, which pick the reason. So the fast pass can only make validation faster, never
change a decision.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from features.catalog import EventSource, FieldType
from features.errors import EventRejected, RejectReason

_PY_TYPES: dict[FieldType, tuple[type, ...]] = {
    FieldType.STRING: (str,),
    FieldType.INT: (int,),
    FieldType.FLOAT: (int, float),
    FieldType.BOOL: (bool,),
}


class EventValidator:
    """Validates events of one source. Stateless apart from its configuration; never raises
    anything but ``EventRejected`` for any input bytes."""

    def __init__(
        self,
        source: EventSource,
        entity_keys: Iterable[str],
        now_ms: Callable[[], int],
        max_id_bytes: int = 128,
    ) -> None:
        self._source = source
        self._entity_keys = tuple(dict.fromkeys(entity_keys))
        self._now_ms = now_ms
        self._max_id_bytes = max_id_bytes
        self._fields = tuple(source.fields.items())
        # orjson builds exact builtin types, so ``type(v) in ...`` is isinstance without bools.
        self._exact_types = tuple((name, EXACT_TYPES[kind]) for name, kind in self._fields)

    def validate(self, raw: bytes | None) -> dict[str, Any]:
        source = self._source
        if raw is None:  # a Kafka record with a null value (a tombstone) carries no event
            raise EventRejected(RejectReason.BAD_JSON, "the record has no value")
        if len(raw) > source.max_payload_bytes:
            raise EventRejected(
                RejectReason.OVERSIZED, f"{len(raw)} bytes > {source.max_payload_bytes}"
            )
        event = _parse(raw)
        if self._valid(event):
            return event
        return self._checked(event)

    def _valid(self, event: dict[str, Any]) -> bool:
        """True only for an event every check accepts (False means: run the checks)."""
        source = self._source
        event_type = event.get(source.event_type_field)
        if type(event_type) is not str or event_type not in source.event_types:
            return False
        for name, types in self._exact_types:
            value: Any = event.get(name)
            kind = type(value)
            if kind not in types or (kind is float and not math.isfinite(value)):
                return False
        for key in self._entity_keys:
            value = event.get(key)
            # ASCII and printable: no control characters, and one byte per character.
            if not (
                type(value) is str
                and value
                and len(value) <= self._max_id_bytes
                and value.isascii()
                and value.isprintable()
            ):
                return False
        time_ms = event.get(source.event_time_field)
        return type(time_ms) is int and time_ms <= self._now_ms() + source.max_future_skew_ms

    def _checked(self, event: dict[str, Any]) -> dict[str, Any]:
        source = self._source
        event_type = event.get(source.event_type_field)
        # Types are strings; a list or an object here must be refused, not crash the set lookup.
        if not isinstance(event_type, str) or event_type not in source.event_types:
            raise EventRejected(RejectReason.UNKNOWN_TYPE, f"event type {str(event_type)[:64]!r}")
        for name, kind in self._fields:
            _check_field(event, name, kind)
        for key in self._entity_keys:
            _check_key(key, event[key], self._max_id_bytes)
        limit = self._now_ms() + source.max_future_skew_ms
        if event[source.event_time_field] > limit:
            raise EventRejected(RejectReason.FUTURE, f"event time is after {limit}")
        return event


EXACT_TYPES: dict[FieldType, frozenset[type]] = {
    FieldType.STRING: frozenset({str}),
    FieldType.INT: frozenset({int}),
    FieldType.FLOAT: frozenset({int, float}),
    FieldType.BOOL: frozenset({bool}),
}


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson refuses NaN/Infinity literals; tell those apart from plain garbage.
        raise EventRejected(_why_unparseable(raw), "payload is not valid JSON") from None
    if not isinstance(event, dict):
        raise EventRejected(
            RejectReason.BAD_JSON, f"expected an object, got {type(event).__name__}"
        )
    return event


def _why_unparseable(raw: bytes) -> RejectReason:
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return RejectReason.BAD_JSON
    return RejectReason.NON_FINITE


def _check_field(event: dict[str, Any], name: str, kind: FieldType) -> None:
    value: Any = event.get(name)
    if value is None:
        raise EventRejected(RejectReason.MISSING_FIELD, f"field {name!r} is missing")
    if isinstance(value, bool) and kind is not FieldType.BOOL:
        raise EventRejected(RejectReason.WRONG_TYPE, f"field {name!r} must be {kind}, got bool")
    if not isinstance(value, _PY_TYPES[kind]):
        raise EventRejected(
            RejectReason.WRONG_TYPE, f"field {name!r} must be {kind}, got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise EventRejected(RejectReason.NON_FINITE, f"field {name!r} is not finite")


def _check_key(name: str, value: Any, max_bytes: int) -> None:
    if not isinstance(value, str) or not value:
        raise EventRejected(RejectReason.BAD_KEY, f"entity id {name!r} must be a non-empty string")
    if len(value.encode()) > max_bytes:
        raise EventRejected(RejectReason.BAD_KEY, f"entity id {name!r} exceeds {max_bytes} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise EventRejected(RejectReason.BAD_KEY, f"entity id {name!r} holds control characters")
