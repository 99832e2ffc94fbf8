"""Tables the CLI prints for people (the JSON forms come from ``ServiceStatus.as_dict``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from cluster.services.base import ServiceStatus

_STATE_STYLE = {"healthy": "green", "unhealthy": "yellow", "down": "red", "foreign": "magenta"}


def status_table(statuses: Sequence[ServiceStatus]) -> Table:
    table = Table(title="Freshline local stack")
    for column in ("service", "endpoint", "pid", "state", "detail"):
        table.add_column(column)
    for s in statuses:
        state = f"[{_STATE_STYLE[s.state]}]{s.state}[/]"
        table.add_row(s.name, s.endpoint, str(s.pid or "-"), state, s.detail[:100])
    return table


def pipeline_tables(state: dict[str, Any]) -> list[Table]:
    consumers = Table(title="consumers")
    for column in ("partitions", "pid", "events in", "accepted", "dead-lettered", "lag", "commits"):
        consumers.add_column(column)
    for c in state["consumers"]:
        if not c.get("alive", True):  # being replaced (a registry roll) or restarting
            consumers.add_row(",".join(map(str, c["partitions"])), "restarting", *["-"] * 5)
            continue
        dead = ", ".join(f"{k}={v}" for k, v in sorted(c["dead_lettered"].items())) or "0"
        consumers.add_row(
            ",".join(map(str, c["partitions"])),
            str(c["pid"]),
            str(c["events_in"]),
            str(c["accepted"]),
            dead,
            str(sum(c["lag"].values())),
            str(c["commits"]),
        )
    sinks = Table(title="region sinks")
    columns = ("region", "store", "shard", "applied", "lag", "partitions", "state", "failures")
    for column in (*columns, "paused", "last step", "last error"):
        sinks.add_column(column)
    for s in state["sinks"]:
        if not s.get("alive", True):
            shard = str(s.get("shard", 0))
            sinks.add_row(s["region"], s["store"], shard, *["-"] * 4, "restarting", *["-"] * 3)
            continue
        stepped = s.get("since_last_step_s")
        sinks.add_row(
            s["region"],
            s["store"],
            str(s.get("shard", 0)),
            str(s["applied_records"]),
            str(s.get("lag", "-")),
            str(s.get("assigned_partitions", "-")),
            s.get("store_state", "-"),
            str(s["store_failures"]),
            "yes" if s["paused"] else "no",
            "connecting" if stepped is None else f"{stepped:.1f} s ago",
            s["last_error"] or "-",
        )
    return [consumers, sinks]
