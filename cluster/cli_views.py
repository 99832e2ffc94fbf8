"""Tables the CLI prints for people (the JSON forms come from ``ServiceStatus.as_dict``)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from cluster.services.base import ServiceStatus


def status_table(statuses: Sequence[ServiceStatus]) -> Table:
    table = Table(title="Freshline local stack")
    for column in ("service", "endpoint", "pid", "health", "detail"):
        table.add_column(column)
    for s in statuses:
        health = "[green]healthy[/]" if s.healthy else "[red]down[/]"
        table.add_row(s.name, s.endpoint, str(s.pid or "-"), health, s.detail[:80])
    return table
