"""Dead-letter records: a refused event, byte for byte, with headers that say why and from where.

Headers (all UTF-8): ``reason`` (a ``RejectReason`` value), ``source.topic``, ``source.partition``,
``source.offset``, ``error.class`` and ``error.detail`` (truncated to 512 bytes). The key and value
are the original ones, so an operator can fix and replay a dead letter without losing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.errors import EventRejected, RejectReason

_MAX_DETAIL_BYTES = 512


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def reason(self) -> RejectReason:
        return RejectReason(dict(self.headers)["reason"].decode())


def dead_letter(
    key: bytes | None,
    value: bytes,
    *,
    topic: str,
    partition: int,
    offset: int,
    error: EventRejected,
) -> DeadLetter:
    detail = error.detail.encode("utf-8", "replace")[:_MAX_DETAIL_BYTES]
    headers = [
        ("reason", error.reason.value.encode()),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
        ("error.class", type(error).__name__.encode()),
        ("error.detail", detail),
    ]
    return DeadLetter(key, value, headers)
