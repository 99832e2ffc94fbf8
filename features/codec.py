"""Compact, deterministic bytes for tile states and served values (JSON via orjson).

Invariants:

* ``decode(encode(v)) == v`` for every accepted value, except that tuples come back as lists
  (JSON has one array type; aggregators normalise their own states on load).
* ``encode`` is deterministic: dict keys are sorted, so equal values give equal bytes and an
  idempotent re-write of a tile stores the same payload.
* NaN and infinities are refused with :class:`UnencodableValue` on both sides. orjson would
  silently write them as ``null``, which would turn a broken sum into "no data"; we check first.
* Only JSON types are accepted: ``None``, ``bool``, ``int`` (64-bit), ``float``, ``str``, and
  lists, tuples and str-keyed dicts of those. numpy scalars must be converted by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import orjson

from features.exceptions import CorruptState, UnencodableValue

Plain: TypeAlias = "bool | int | float | str | Sequence[Plain] | Mapping[str, Plain] | None"
"""A JSON-able value: what states and served values are made of. Typed with the covariant
``Sequence``/``Mapping`` so ``list[int]`` is accepted; at run time only list/tuple/dict are."""

Scalar: TypeAlias = "bool | int | float | str | None"
"""A JSON scalar: what a feature default or a ``last`` value is."""

_MAX_DEPTH = 32
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1  # orjson's own limits: signed 64-bit below zero, unsigned above


def encode(value: Plain) -> bytes:
    """Canonical bytes of ``value``; non-finite floats and non-JSON types raise."""
    check_plain(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # pragma: no cover - check_plain rejects first
        raise UnencodableValue(str(exc)) from None


def decode(data: bytes) -> Plain:
    """The value encoded in ``data``; invalid JSON raises :class:`CorruptState`."""
    try:
        value: Plain = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptState(f"not a valid encoded value: {exc}") from None
    return value


def check_plain(value: object, _depth: int = 0) -> None:
    """Raise :class:`UnencodableValue` unless ``value`` is a finite, JSON-able :data:`Plain`."""
    if _depth > _MAX_DEPTH:
        raise UnencodableValue(f"value nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise UnencodableValue(f"integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnencodableValue(f"non-finite float {value!r}")
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_plain(item, _depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnencodableValue(f"dict key {key!r} is not a string")
            check_plain(item, _depth + 1)
        return
    raise UnencodableValue(f"unsupported type {type(value).__name__}")
