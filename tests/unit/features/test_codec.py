from __future__ import annotations

import math

import pytest

from features.codec import Plain, decode, encode
from features.exceptions import CorruptState, UnencodableValue


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**63),
        2**64 - 1,
        0.1,
        -0.0,
        1e300,
        5e-324,
        "",
        "ü🙂\n\x00",
        [],
        [1, 2.5, "x", None, [True]],
        {"b": 1, "a": {"c": [1.5]}},
    ],
)
def test_round_trip(value: Plain) -> None:
    assert decode(encode(value)) == value


def test_floats_round_trip_bit_exactly() -> None:
    for value in (0.1 + 0.2, math.pi, 1 / 3, 2.0**-1074, 1.7976931348623157e308):
        back = decode(encode(value))
        assert isinstance(back, float)
        assert back.hex() == value.hex()


def test_tuples_come_back_as_lists() -> None:
    assert decode(encode((1, (2, 3)))) == [1, [2, 3]]


def test_encoding_is_deterministic() -> None:
    assert encode({"b": 1, "a": 2}) == encode({"a": 2, "b": 1}) == b'{"a":2,"b":1}'


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        [1.0, math.nan],
        {"x": {"y": math.inf}},
        2**64,
        -(2**63) - 1,
        {1: "x"},
        b"bytes",
        {1, 2},
        object(),
    ],
)
def test_unencodable_values_are_refused(value: object) -> None:
    with pytest.raises(UnencodableValue):
        encode(value)  # type: ignore[arg-type]


def test_deep_nesting_is_refused() -> None:
    value: Plain = 1
    for _ in range(40):
        value = [value]
    with pytest.raises(UnencodableValue):
        encode(value)


@pytest.mark.parametrize("data", [b"", b"{", b"NaN", b"1e400", b"[1,]", b"\xff"])
def test_corrupt_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(CorruptState):
        decode(data)
