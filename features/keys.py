"""Online-store keys: ``fl:<tenant>:<view>:v<version>:<entity>``, safe against any entity id.

Invariants:

* ``tenant`` and ``view`` are catalog names (``[a-z][a-z0-9_]{0,62}``) and ``version >= 1``, so
  the prefix ``fl:<tenant>:<view>:v<version>:`` never contains ``:`` inside a part, glob
  characters (``* ? [ ]``) or braces.
* The encoded entity id contains only ``[A-Za-z0-9_.-]`` or is ``~`` followed by base64url
  without padding. Neither form contains ``:``, ``{``, ``}``, glob characters, whitespace or
  control characters, so an id can neither address another tenant, view or version (the key
  parses back to the same parts), nor pick a Redis Cluster hash slot through a ``{...}`` hash tag,
  nor widen a ``SCAN MATCH`` pattern.
* Encoding is injective and reversible: plain ids never contain ``~`` and base64url is injective,
  so two different ids never share a key, and :func:`decode_entity_id` inverts it.
* Refused ids raise :class:`InvalidEntityId`: empty, not a ``str``, longer than ``max_id_bytes``
  UTF-8 bytes, containing control characters (category Cc, e.g. newline, NUL) or lone surrogates.

These keys carry no hash tag. On a Redis Cluster the Redis layer appends one
(``regions.redis_layout``: a bucket derived from the entity id), so one entity's views and its
bucket's readiness marker share a slot; one view of one entity is a single hash whose fields are
its tile groups' tiles (``features.tile_groups``).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

from features.exceptions import CorruptState, InvalidEntityId

KEY_PREFIX = "fl"
ENCODED_MARKER = "~"
DEFAULT_MAX_ID_BYTES = 128
# A deployment's tenant names its whole key space (online keys, registry records, answer log);
# it is configuration (``FRESHLINE_TENANT``), this is only its default.
DEFAULT_TENANT = "default"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"

_NAME = re.compile(NAME_PATTERN)
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.-]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def encode_entity_id(entity_id: str, *, max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> str:
    """The key-safe form of ``entity_id`` (see the module invariants)."""
    raw = _validated_bytes(entity_id, max_id_bytes)
    if _PLAIN_ID.fullmatch(entity_id):
        return entity_id
    return ENCODED_MARKER + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_entity_id(encoded: str) -> str:
    """Invert :func:`encode_entity_id`; anything it cannot have produced raises CorruptState."""
    if _PLAIN_ID.fullmatch(encoded):
        return encoded
    body = encoded[len(ENCODED_MARKER) :]
    if not encoded.startswith(ENCODED_MARKER) or not _B64URL.fullmatch(body):
        raise CorruptState(f"not an encoded entity id: {encoded!r}")
    try:
        decoded = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise CorruptState(f"not an encoded entity id: {encoded!r} ({exc})") from None
    # Canonical form only: a plain-safe id must have been written plain, and padding bits zero.
    if _PLAIN_ID.fullmatch(decoded) or encode_entity_id(decoded, max_id_bytes=2**31) != encoded:
        raise CorruptState(f"non-canonical encoded entity id: {encoded!r}")
    return decoded


def _validated_bytes(entity_id: object, max_id_bytes: int) -> bytes:
    if not isinstance(entity_id, str):
        raise InvalidEntityId(f"entity id must be a string, got {type(entity_id).__name__}")
    if not entity_id:
        raise InvalidEntityId("entity id is empty")
    # Cheap bound before encoding: every character is at least one UTF-8 byte.
    if len(entity_id) > max_id_bytes:
        raise InvalidEntityId(f"entity id longer than {max_id_bytes} bytes")
    try:
        raw = entity_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEntityId("entity id contains a lone surrogate") from None
    if len(raw) > max_id_bytes:
        raise InvalidEntityId(f"entity id longer than {max_id_bytes} bytes")
    if any(unicodedata.category(ch) == "Cc" for ch in entity_id):
        raise InvalidEntityId("entity id contains a control character")
    return raw


@dataclass(frozen=True, slots=True)
class OnlineKey:
    """The parts of one online-store key. ``encode()`` is the key; ``parse`` inverts it."""

    tenant: str
    view: str
    version: int
    entity_id: str

    def __post_init__(self) -> None:
        for part, value in (("tenant", self.tenant), ("view", self.view)):
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise InvalidEntityId(f"{part} {value!r} is not a name like 'user_spend'")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise InvalidEntityId(f"version must be an int >= 1, got {self.version!r}")

    def encode(self, *, max_id_bytes: int = DEFAULT_MAX_ID_BYTES) -> str:
        entity = encode_entity_id(self.entity_id, max_id_bytes=max_id_bytes)
        return f"{view_prefix(self.tenant, self.view, self.version)}{entity}"

    @classmethod
    def parse(cls, key: str) -> OnlineKey:
        """Parts of a key written by :meth:`encode`; anything else raises CorruptState."""
        parts = key.split(":")
        if len(parts) != 5 or parts[0] != KEY_PREFIX or not re.fullmatch(r"v[1-9][0-9]*", parts[3]):
            raise CorruptState(f"not a Freshline online key: {key!r}")
        try:
            return cls(parts[1], parts[2], int(parts[3][1:]), decode_entity_id(parts[4]))
        except InvalidEntityId as exc:
            raise CorruptState(f"not a Freshline online key: {key!r} ({exc})") from None


def view_prefix(tenant: str, view: str, version: int) -> str:
    """``fl:<tenant>:<view>:v<version>:``; every key of that view version starts with it."""
    if not _NAME.fullmatch(tenant) or not _NAME.fullmatch(view) or version < 1:
        raise InvalidEntityId(f"bad key prefix parts {tenant!r}, {view!r}, {version!r}")
    return f"{KEY_PREFIX}:{tenant}:{view}:v{version}:"
