"""Durations as written in catalogs: ``"5s"``, ``"5m"``, ``"1h"``, ``"7d"``, ``"1h30m"``.

Grammar: one or more ``<digits><unit>`` parts, units from ``w d h m s ms``, each unit at most once
and in that (strictly decreasing) order; no signs, spaces or fractions. ``"0s"`` is valid (a zero
lateness); whether zero is acceptable is the caller's rule. Everything is whole milliseconds, so
``to_ms`` is exact.

:data:`Duration` is the pydantic type used by catalog models: it accepts a ``timedelta`` or a
string in this grammar (never a bare number, whose unit would be a guess) and serialises back to
the canonical string, so ``Catalog.from_dict(catalog.model_dump(mode="json"))`` round-trips.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from features.errors import CatalogError

_UNITS_MS: dict[str, int] = {
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1_000,
    "ms": 1,
}
_UNIT_ORDER = tuple(_UNITS_MS)
# "ms" is listed before "m" and "s" so the alternation never splits it.
_PART = re.compile(r"(\d{1,12})(ms|w|d|h|m|s)")
_MAX_TEXT = 64


def parse_duration(text: str, *, field: str | None = None) -> timedelta:
    """Parse ``text`` in the grammar above; anything else raises :class:`CatalogError`."""
    if not isinstance(text, str) or not text or len(text) > _MAX_TEXT:
        raise CatalogError(f"not a duration: {text!r}", field=field)
    total_ms = 0
    last_rank = -1
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise CatalogError(f"not a duration: {text!r} (expected e.g. 5m, 1h, 7d)", field=field)
        rank = _UNIT_ORDER.index(match.group(2))
        if rank <= last_rank:
            raise CatalogError(f"units out of order or repeated in {text!r}", field=field)
        last_rank = rank
        total_ms += int(match.group(1)) * _UNITS_MS[match.group(2)]
        pos = match.end()
    return timedelta(milliseconds=total_ms)


def to_ms(duration: timedelta) -> int:
    """Whole milliseconds of ``duration``; sub-millisecond parts raise :class:`CatalogError`."""
    micros = (duration.days * 86_400 + duration.seconds) * 1_000_000 + duration.microseconds
    if micros % 1_000:
        raise CatalogError(f"{duration!r} is not a whole number of milliseconds")
    return micros // 1_000


def format_duration(duration: timedelta) -> str:
    """Canonical string of ``duration`` (largest units first); ``parse_duration`` inverts it."""
    remaining = to_ms(duration)
    if remaining < 0:
        raise CatalogError(f"negative duration {duration!r}")
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, unit_ms in _UNITS_MS.items():
        if unit == "w":
            continue  # "7d" reads better than "1w" in feature names and logs
        count, remaining = divmod(remaining, unit_ms)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _coerce(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        # Raised as ValueError so pydantic attaches the field's location; Catalog.from_dict turns
        # it into a CatalogError naming that location.
        try:
            return parse_duration(value)
        except CatalogError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError(f"a duration must be a string like '5m' or a timedelta, got {value!r}")


Duration = Annotated[
    timedelta,
    BeforeValidator(_coerce),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
