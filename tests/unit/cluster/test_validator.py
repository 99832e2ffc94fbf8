"""``freshline validate``'s options: the defaults an operator relies on, and clear errors."""

from __future__ import annotations

import argparse

import pytest

from cluster import validator_job
from cluster.validator_job import _duration_ms, add_arguments
from features.errors import ConfigError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_cli_defaults_and_threshold() -> None:
    args = _parse("--region", "eu-west", "--max-skew-share", "0.1")
    assert (args.region, args.max_skew_share, args.since) == ("eu-west", 0.1, None)
    assert (args.continuous, args.interval, args.settle, args.cycles) == (False, "60s", "30s", 0)
    # The first release's flag name still works.
    assert _parse("--max-mismatch-share", "0.2").max_skew_share == 0.2
    with pytest.raises(SystemExit):
        _parse("--max-skew-share", "lots")


def test_intervals_are_durations_and_a_bad_one_names_its_flag() -> None:
    assert _duration_ms("60s", "--interval") == 60_000
    assert _duration_ms("250ms", "--settle") == 250
    with pytest.raises(ConfigError, match="--interval"):
        _duration_ms("soon", "--interval")


def test_since_takes_a_duration_back_from_now_or_an_iso_time() -> None:
    now = 1_800_000_000_000
    assert validator_job.since_ms(None, now) == 0
    assert validator_job.since_ms("1h", now) == now - 3_600_000
    assert validator_job.since_ms("1h30m", now) == now - 5_400_000
    assert validator_job.since_ms("2026-01-01T00:00:00", now) == 1_767_225_600_000
    assert validator_job.since_ms("2026-01-01T01:00:00+01:00", now) == 1_767_225_600_000
    with pytest.raises(ConfigError, match="--since 'yesterday' is neither a duration"):
        validator_job.since_ms("yesterday", now)
