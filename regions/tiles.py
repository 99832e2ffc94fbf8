"""What a sink asks a region store to do: set or delete one field of one tile key, at a version.

Invariants shared by every store adapter:

- writes are *monotone per (key, field)*: a value replaces the stored one only if its version is
  strictly greater; a delete applies if its version is greater than or equal (a delete wins a tie);
- writes are *idempotent*: applying the same batch twice leaves the store as after the first time;
- within one batch, the highest version per (key, field) wins, whatever the order of the batch.

The Redis adapter enforces the first invariant on the server; DynamoDB's BatchWriteItem cannot be
conditional, so there it holds only if one writer at a time owns a key (see ``dynamodb_store``).

Deletes and the version floor: a block field's versions come from one source partition's offsets,
and the changelog carries one partition's records in offset order, so a single *floor* per (key,
partition), the highest version of any delete applied there, is enough to refuse a replayed older
write of a deleted block (:func:`floor_field` names it). Stores may therefore really delete a field
instead of keeping a per-field tombstone: "absent" compares as "at the floor".
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from features.blocks import block_partition
from features.errors import DataError

MAX_VERSION = 2**64 - 1
# Redis field layout: 8-byte big-endian unsigned version, one tag byte, then the payload.
_HEADER = struct.Struct(">QB")
HEADER_BYTES = _HEADER.size
TAG_OFFSET = HEADER_BYTES - 1  # the tag is the header's last byte, after the version
TAG_VALUE = 1
TAG_TOMBSTONE = 0  # legacy per-field tombstones: still honoured and dropped by the next delete
TAG_FLOOR = 2
FLOOR_PREFIX = "~"  # block fields start with "b": a floor never collides with a block


@dataclass(frozen=True, slots=True)
class TileWrite:
    """Set ``field`` of ``key`` to ``value`` (``None`` deletes) at ``version``; keep ``ttl_ms``."""

    key: str
    field: str
    value: bytes | None
    version: int
    ttl_ms: int

    def __post_init__(self) -> None:
        if not 0 <= self.version <= MAX_VERSION:
            raise DataError(
                f"version {self.version} outside 0..2**64-1 for {self.key}/{self.field}"
            )
        if self.ttl_ms <= 0:
            raise DataError(f"ttl_ms must be positive, got {self.ttl_ms} for {self.key}")

    @property
    def is_delete(self) -> bool:
        return self.value is None


def supersedes(new: TileWrite, old: TileWrite) -> bool:
    """Whether ``new`` beats ``old`` for the same (key, field): higher version, delete on tie."""
    if new.version != old.version:
        return new.version > old.version
    return new.is_delete and not old.is_delete


def coalesce(batch: Iterable[TileWrite]) -> list[TileWrite]:
    """One write per (key, field), the one that :func:`supersedes` all others; first-seen order."""
    winners: dict[tuple[str, str], TileWrite] = {}
    for write in batch:
        slot = (write.key, write.field)
        current = winners.get(slot)
        if current is None or supersedes(write, current):
            winners[slot] = write
    return list(winners.values())


def encode_field(write: TileWrite) -> bytes:
    """The stored Redis field value: header (version, tag) then payload; a delete is a tombstone."""
    if write.value is None:
        return _HEADER.pack(write.version, TAG_TOMBSTONE)
    return _HEADER.pack(write.version, TAG_VALUE) + write.value


def decode_field(raw: bytes) -> tuple[int, bytes | None]:
    """``(version, payload)`` of a stored field; payload ``None`` for a tombstone."""
    if len(raw) < HEADER_BYTES:
        raise DataError(f"stored field of {len(raw)} bytes is shorter than its header")
    version, tag = _HEADER.unpack_from(raw)
    return version, (raw[HEADER_BYTES:] if tag == TAG_VALUE else None)


def floor_field(field: str) -> str:
    """The hash field holding the version floor that guards ``field`` once it is deleted.

    A block field (``features.blocks.block_field``) has the floor of its source partition
    (``~p3``); any other field name is its own group (``~f:<field>``), which is exactly a
    tombstone's guard.
    """
    partition = block_partition(field)
    if partition is None:
        return f"{FLOOR_PREFIX}f:{field}"
    return f"{FLOOR_PREFIX}p{partition}"
