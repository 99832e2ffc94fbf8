"""The tile changelog: what consumer actors publish and every region's sinks apply.

One Kafka record per changed (tile key, field), on a compacted topic, so the topic always holds the
latest state of every live tile field: a region that was down, or a brand-new region, rebuilds its
stores by reading it from the start.

Record key: ``<store key> 0x1F <field>`` (the unit separator cannot occur in an encoded store key).
Record value: ``>BQqQ`` header (tag, version, newest event time in ms, TTL in ms) then the payload.
Tag 1 sets the field, tag 0 deletes it. Deletes are ordinary records rather than Kafka tombstones so
that they carry their version and survive compaction until a newer write replaces them.

Fields ``f_p<partition>`` (:data:`HELD_PREFIX`) hold a processor's events stamped after its clock:
restore state only, which sinks never write to a store.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from features.errors import DataError
from regions.tiles import TileWrite

_SEPARATOR = b"\x1f"
_HEADER = struct.Struct(">BQqQ")
_TAG_SET, _TAG_DELETE = 1, 0
HELD_PREFIX = "f_p"


def is_restore_state(field: str) -> bool:
    """Whether a changelog field is only for the processor's restore (held events)."""
    return field.startswith(HELD_PREFIX)


class ChangelogDecodeError(DataError):
    """A changelog record that is not in the format above (never produced by Freshline)."""


@dataclass(frozen=True, slots=True)
class ChangelogRecord:
    write: TileWrite
    event_time_ms: int  # newest event time folded into the tile; freshness is measured from it


def encode(record: ChangelogRecord) -> tuple[bytes, bytes]:
    w = record.write
    key = w.key.encode() + _SEPARATOR + w.field.encode()
    tag = _TAG_DELETE if w.value is None else _TAG_SET
    header = _HEADER.pack(tag, w.version, record.event_time_ms, w.ttl_ms)
    return key, header + (w.value or b"")


def decode(key: bytes, value: bytes) -> ChangelogRecord:
    store_key, sep, field = key.partition(_SEPARATOR)
    if not sep or len(value) < _HEADER.size:
        raise ChangelogDecodeError(f"malformed changelog record with key {key[:80]!r}")
    tag, version, event_time_ms, ttl_ms = _HEADER.unpack_from(value)
    if tag not in (_TAG_SET, _TAG_DELETE):
        raise ChangelogDecodeError(f"unknown changelog tag {tag} for key {key[:80]!r}")
    payload = value[_HEADER.size :] if tag == _TAG_SET else None
    write = TileWrite(store_key.decode(), field.decode(), payload, version, ttl_ms)
    return ChangelogRecord(write, event_time_ms)
