"""`freshline pipeline status` shows what tells a stuck sink from a slow one."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from cluster.cli_views import pipeline_tables


def _sink(region: str, **overrides: Any) -> dict[str, Any]:
    sink = {
        "region": region,
        "store": "redis",
        "applied_records": 120,
        "batches": 4,
        "lag": 0,
        "assigned_partitions": 8,
        "store_state": "ready",
        "store_failures": 0,
        "paused": False,
        "since_last_step_s": 0.2,
        "last_error": "",
    }
    return sink | overrides


def _render(state: dict[str, Any]) -> str:
    console = Console(width=200, record=True)
    for table in pipeline_tables(state):
        console.print(table)
    return console.export_text()


def test_a_sink_without_partitions_or_still_connecting_is_visible() -> None:
    state = {
        "consumers": [],
        "sinks": [
            _sink("us-east"),
            _sink("eu-west", assigned_partitions=0, since_last_step_s=None, lag=None),
        ],
    }
    lines = [line for line in _render(state).splitlines() if "eu-west" in line]
    assert len(lines) == 1
    cells = [c.strip() for c in lines[0].split("│") if c.strip()]
    assert cells[:6] == ["eu-west", "redis", "120", "None", "0", "ready"]
    assert "connecting" in cells
    us_east = next(line for line in _render(state).splitlines() if "us-east" in line)
    assert "0.2 s ago" in us_east and "rehydrating" not in us_east
