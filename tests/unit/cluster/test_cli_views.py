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
    assert cells[:7] == ["eu-west", "redis", "0", "120", "None", "0", "ready"]
    assert "connecting" in cells
    us_east = next(line for line in _render(state).splitlines() if "us-east" in line)
    assert "0.2 s ago" in us_east and "rehydrating" not in us_east


def test_the_status_table_tells_a_foreign_port_from_a_service_that_is_down() -> None:
    from cluster.cli_views import status_table
    from cluster.services.base import ServiceStatus

    foreign = "port 16379 (redis-us-east) is held by pid 4242 (redis-server)"
    statuses = [
        ServiceStatus("kafka", "kafka", "127.0.0.1:19092", 101, "healthy", "KRaft broker"),
        ServiceStatus("redis-us-east", "redis", "127.0.0.1:16379", None, "foreign", foreign, 4242),
        ServiceStatus("redis-eu-west", "redis", "127.0.0.1:16389", None, "down", "not running"),
    ]
    console = Console(width=250, record=True)
    console.print(status_table(statuses))
    lines = [line for line in console.export_text().splitlines() if line.startswith("│")]
    rows = {line.split("│")[1].strip(): line for line in lines}
    assert "healthy" in rows["kafka"] and "101" in rows["kafka"]
    assert "foreign" in rows["redis-us-east"] and "pid 4242" in rows["redis-us-east"]
    assert "down" in rows["redis-eu-west"] and "healthy" not in rows["redis-eu-west"]


def test_a_consumer_being_replaced_shows_as_restarting_beside_the_live_ones() -> None:
    """A registry roll replaces one consumer at a time; status must still answer meanwhile."""
    live = {
        "partitions": [1, 3],
        "pid": 77,
        "events_in": 10,
        "accepted": 9,
        "dead_lettered": {"late": 1},
        "lag": {"1": 0},
        "commits": 3,
    }
    state = {
        "consumers": [{"partitions": [0, 2], "alive": False, "ready": False}, live],
        "sinks": [{"region": "eu-west", "store": "dynamodb", "alive": False, "ready": False}],
    }
    text = _render(state)
    replaced = next(line for line in text.splitlines() if "0,2" in line)
    assert "restarting" in replaced
    assert "late=1" in next(line for line in text.splitlines() if "1,3" in line)
    assert "restarting" in next(line for line in text.splitlines() if "eu-west" in line)
