from __future__ import annotations

from datetime import timedelta

import pytest

from features.durations import format_duration, parse_duration, to_ms
from features.errors import CatalogError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("1w", timedelta(days=7)),
        ("0s", timedelta(0)),
        ("250ms", timedelta(milliseconds=250)),
        ("1h30m", timedelta(minutes=90)),
        ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
    ],
)
def test_parse_duration_accepts_the_grammar(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "5", "m", "5 m", "-5m", "5min", "1.5h", "1m1h", "1h1h", "5M", "1h 30m", "P1D", "5m!"],
)
def test_parse_duration_refuses_everything_else(text: str) -> None:
    with pytest.raises(CatalogError, match=r"duration|units"):
        parse_duration(text, field="views[v].ttl")


def test_parse_duration_error_names_the_field() -> None:
    with pytest.raises(CatalogError) as info:
        parse_duration("soon", field="views[v].ttl")
    assert info.value.field == "views[v].ttl"


def test_parse_duration_refuses_non_strings() -> None:
    with pytest.raises(CatalogError):
        parse_duration(300)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["5m", "1h", "7d", "1h30m", "250ms", "0s", "2d3h", "14d"])
def test_format_inverts_parse(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


def test_format_is_canonical_largest_units_first() -> None:
    assert format_duration(parse_duration("24h")) == "1d"
    assert format_duration(parse_duration("90m")) == "1h30m"
    assert format_duration(parse_duration("1w")) == "7d"


def test_to_ms_is_exact_and_refuses_sub_millisecond_parts() -> None:
    assert to_ms(timedelta(days=7)) == 604_800_000
    assert to_ms(timedelta(milliseconds=-5)) == -5
    with pytest.raises(CatalogError):
        to_ms(timedelta(microseconds=1500))
