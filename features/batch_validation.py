"""Validation of a whole poll batch as columns, with the per-record validator as the arbiter.

One batch of raw values is parsed with one ``orjson.loads`` per value, the source's fields are
taken out of all events at once (one ``itemgetter`` call per event, then one transpose), and the
checks of :meth:`EventValidator._valid` run per column: the set of Python types of a column,
``np.isfinite`` over a float column, the event types as a set, the entity ids' lengths and one
``isascii``/``isprintable`` over their concatenation, the event times against ``now + skew`` as
one int64 array. A row that any of these does not accept, or that does not parse, goes through
:meth:`EventValidator.validate` on its raw bytes, which decides it: so every decision, reason and
detail equals the per-record validator's (``tests/unit/features/test_batch_validation.py``).

The clock is read once per batch for the rows accepted here (the per-record validator reads it
per row); a row it refuses reads it again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from features.catalog import EventSource, FieldType
from features.errors import EventRejected
from features.validation import EXACT_TYPES as _EXACT
from features.validation import EventValidator

Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ValidatedBatch:
    """The outcome for one batch: the accepted events in batch order, where they were in it,
    their value of every field the validator reads (one Python list per field), and the refused
    rows with their reasons, by ascending position."""

    events: list[dict[str, Any]]
    rows: npt.NDArray[np.intp]
    columns: dict[str, list[Any]]
    rejected: list[tuple[int, EventRejected]]


class BatchValidator:
    """Validates batches of one source. Never raises for any input bytes; stateless apart from
    its configuration."""

    def __init__(
        self,
        source: EventSource,
        entity_keys: Iterable[str],
        now_ms: Callable[[], int],
        max_id_bytes: int = 128,
    ) -> None:
        keys = tuple(dict.fromkeys(entity_keys))
        self.scalar = EventValidator(source, keys, now_ms, max_id_bytes)
        self._source = source
        self._now_ms = now_ms
        self._max_id_bytes = max_id_bytes
        self._skew_ms = source.max_future_skew_ms
        self._event_types = source.event_types
        self._only_type = next(iter(source.event_types))
        # Every field a check reads, declared or not (the type, key and time fields always are).
        types = {name: _EXACT[kind] for name, kind in source.fields.items()}
        for name in (source.event_type_field, *keys):
            types.setdefault(name, _EXACT[FieldType.STRING])
        types.setdefault(source.event_time_field, _EXACT[FieldType.INT])
        self.fields = tuple(types)
        self._types = tuple(types.values())
        self._floats = tuple(
            i for i, (name, kind) in enumerate(source.fields.items()) if kind is FieldType.FLOAT
        )
        self._type_at = self.fields.index(source.event_type_field)
        self._keys_at = tuple(self.fields.index(key) for key in keys)
        self._time_at = self.fields.index(source.event_time_field)
        self._getters = tuple(itemgetter(name) for name in self.fields)

    def validate(self, values: Sequence[bytes | None]) -> ValidatedBatch:
        events, suspect = self._parse(values)
        if not suspect:
            columns, failed = self._columns(events)
            if not failed:  # the common batch: nothing to set aside, nothing copied
                every = np.arange(len(values), dtype=np.intp)
                return ValidatedBatch(
                    events, every, dict(zip(self.fields, columns, strict=True)), []
                )
        rows = [i for i in range(len(values)) if i not in suspect]
        columns, failed = self._columns([events[i] for i in rows])
        if failed:
            suspect |= {rows[i] for i in failed}
            keep = [i for i in range(len(rows)) if i not in failed]
            rows = [rows[i] for i in keep]
            columns = [[column[i] for i in keep] for column in columns]
        rejected: list[tuple[int, EventRejected]] = []
        admitted = []
        for i in sorted(suspect):
            try:
                events[i] = self.scalar.validate(values[i])
            except EventRejected as refused:
                rejected.append((i, refused))
                continue
            admitted.append(i)  # a rarer event the columns do not recognise (a non-ASCII id)
        if admitted:
            rows = sorted([*rows, *admitted])
            columns = [[events[i][name] for i in rows] for name in self.fields]
        return ValidatedBatch(
            events=[events[i] for i in rows],
            rows=np.asarray(rows, dtype=np.intp),
            columns=dict(zip(self.fields, columns, strict=True)),
            rejected=rejected,
        )

    def _parse(self, values: Sequence[bytes | None]) -> tuple[list[Any], set[int]]:
        """Every value parsed (``None`` where it did not), and the rows that need the
        per-record validator's judgement because of their bytes."""
        limit = self._source.max_payload_bytes
        loads = orjson.loads
        try:
            if values and max(map(len, values)) <= limit:  # type: ignore[arg-type]
                return list(map(loads, values)), set()  # type: ignore[arg-type]
        except (TypeError, orjson.JSONDecodeError):
            pass  # a null value, or one that does not parse: row by row below
        events: list[Any] = []
        suspect = set()
        for i, value in enumerate(values):
            event = None
            if value is not None and len(value) <= limit:
                with suppress(orjson.JSONDecodeError):
                    event = loads(value)
            if event is None:
                suspect.add(i)
            events.append(event)
        return events, suspect

    def _columns(self, events: list[Any]) -> tuple[list[list[Any]], set[int]]:
        """The fields of ``events`` as columns, and the positions the columns do not accept.

        One ``map`` of an ``itemgetter`` per field: no object per row, so a batch does not
        start the garbage collector's young-generation passes as one tuple per row would."""
        try:
            columns = [list(map(getter, events)) for getter in self._getters]
        except (KeyError, TypeError):  # a field missing, or an event that is not an object
            columns = [[_field(event, name) for event in events] for name in self.fields]
        failed: set[int] = set()
        bad = self._typed(columns)  # _MISSING has no accepted type
        if bad is not None:
            failed = set(np.flatnonzero(bad).tolist())
            keep = [i for i in range(len(events)) if i not in failed]
            bad = self._valued([[column[i] for i in keep] for column in columns])
            if bad is not None:
                failed |= {keep[i] for i in np.flatnonzero(bad).tolist()}
        else:
            bad = self._valued(columns)
            if bad is not None:
                failed = set(np.flatnonzero(bad).tolist())
        return columns, failed

    def _typed(self, columns: Sequence[Sequence[Any]]) -> Mask | None:
        """Rows where some field has another Python type than its checks accept (None: none)."""
        bad: Mask | None = None
        for column, types in zip(columns, self._types, strict=True):
            if set(map(type, column)) <= types:
                continue
            wrong = np.fromiter((type(v) not in types for v in column), np.bool_, len(column))
            bad = wrong if bad is None else bad | wrong
        return bad

    def _valued(self, columns: Sequence[list[Any]]) -> Mask | None:
        """Among rows of the right types: where a value is refused (None: nowhere)."""
        checks = [self._finite(columns), self._typed_event(columns), self._times(columns)]
        checks += [self._ids(columns[at]) for at in self._keys_at]
        bad: Mask | None = None
        for check in checks:
            if check is not None:
                bad = check if bad is None else bad | check
        return bad

    def _finite(self, columns: Sequence[Sequence[Any]]) -> Mask | None:
        bad: Mask | None = None
        for at in self._floats:
            finite = np.isfinite(np.array(columns[at], dtype=np.float64))
            if not finite.all():
                bad = ~finite if bad is None else bad | ~finite
        return bad

    def _typed_event(self, columns: Sequence[list[Any]]) -> Mask | None:
        column, known = columns[self._type_at], self._event_types
        if len(known) == 1 and column.count(self._only_type) == len(column):
            return None  # compared, not hashed: each event's type is a new string
        if set(column) <= known:
            return None
        return np.fromiter((v not in known for v in column), np.bool_, len(column))

    def _times(self, columns: Sequence[Sequence[Any]]) -> Mask | None:
        column = columns[self._time_at]
        limit = self._now_ms() + self._skew_ms
        if not column or max(column) <= limit:
            return None
        return np.fromiter((v > limit for v in column), np.bool_, len(column))

    def _ids(self, column: Sequence[str]) -> Mask | None:
        """Non-empty, at most ``max_id_bytes``, ASCII and printable: one byte per character and
        no control character, what the per-record checks accept without encoding."""
        if not column:
            return None
        lengths = list(map(len, column))
        joined = "".join(column)
        fits = min(lengths) > 0 and max(lengths) <= self._max_id_bytes
        if fits and joined.isascii() and joined.isprintable():
            return None
        most = self._max_id_bytes
        return np.fromiter(
            (not (0 < len(v) <= most and v.isascii() and v.isprintable()) for v in column),
            np.bool_,
            len(column),
        )


_MISSING = object()  # a field an event lacks (or a row that is no object): no type accepts it


def _field(event: Any, name: str) -> Any:
    return event.get(name, _MISSING) if type(event) is dict else _MISSING
