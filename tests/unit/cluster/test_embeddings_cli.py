"""``freshline embeddings``: its arguments and the status table (the Ray calls are integration)."""

from __future__ import annotations

import argparse

import pytest
from rich.console import Console

from cluster import embeddings_cli
from features.errors import ConfigError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    embeddings_cli.add_commands(parser.add_subparsers(dest="verb", required=True))
    return parser.parse_args(argv)


def test_switch_and_retire_take_a_grace_period_and_add_does_not() -> None:
    switch = _parse("embeddings", "switch", "items", "v2", "--grace", "90s")
    assert (switch.view, switch.version, embeddings_cli._grace_s(switch)) == ("items", "v2", 90.0)
    assert embeddings_cli._grace_s(_parse("embeddings", "retire", "items", "v1")) == 3600.0
    assert not hasattr(_parse("embeddings", "add", "items", "v3"), "grace")
    with pytest.raises(ConfigError, match="--grace"):
        embeddings_cli._grace_s(_parse("embeddings", "retire", "items", "v1", "--grace", "soon"))


def test_the_status_table_shows_catalogs_actors_and_missing_ones() -> None:
    state = {
        "fl-embeddings-catalog-items": {
            "generation": 4,
            "serving_version": "v2",
            "model_versions": ["v1", "v2"],
            "retiring": {"v1": 1},
            "dropping": [],
        },
        "fl-embeddings-us-east-items-v2": {
            "ready": True,
            "positions": {"0": 7, "1": 5},
            "indexes": {"v2": {"size": 9, "kind": "flat", "mutations": 12}},
            "mirror": {"v2": {"state": "retrying", "pending": 3, "failures": 2}},
        },
        "fl-embeddings-eu-west-items-v2": None,
    }
    console = Console(width=200, record=True)
    console.print(embeddings_cli.status_table(state))
    lines = console.export_text().splitlines()
    assert any("catalog-items" in line and "serving v2 of v1, v2" in line for line in lines)
    assert any(
        "us-east-items-v2" in line and "v2: 9" in line and "retrying" in line for line in lines
    )
    assert any("eu-west-items-v2" in line and "missing" in line for line in lines)
