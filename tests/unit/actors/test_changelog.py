from __future__ import annotations

import pytest

from actors.changelog import ChangelogDecodeError, ChangelogRecord, decode, encode
from regions.tiles import TileWrite


@pytest.mark.parametrize("value", [b"state-bytes", b"", None])
def test_round_trip_keeps_every_field(value: bytes | None) -> None:
    record = ChangelogRecord(
        TileWrite("fl:t:v:v1:u_1", "60000:120000:p3", value, 2**40, 86_400_000), 1_700_000_000_123
    )
    key, raw = encode(record)
    assert decode(key, raw) == record


def test_distinct_fields_of_one_key_are_distinct_compaction_keys() -> None:
    a = encode(ChangelogRecord(TileWrite("fl:k", "f1", b"x", 1, 1), 0))[0]
    b = encode(ChangelogRecord(TileWrite("fl:k", "f2", b"x", 1, 1), 0))[0]
    assert a != b


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"no-separator", b"\x01" + b"\x00" * 24),
        (b"k\x1ff", b"short"),
        (b"k\x1ff", b"\x07" + b"\x00" * 24),
    ],
)
def test_malformed_records_raise_a_data_error(key: bytes, value: bytes) -> None:
    with pytest.raises(ChangelogDecodeError):
        decode(key, value)
