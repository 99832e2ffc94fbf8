"""``freshline plan PATH`` and ``freshline apply PATH``: the registry's commands.

Both validate the repository at ``PATH`` (every catalog rule, the offending document and field
named) and show its changes against the latest applied version; ``apply`` then publishes it as the
next version (``cluster.registry``). Exit codes: 0 done (or nothing to apply), 1 a Freshline error
(an invalid repository, a registry that moved since the plan).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from actors.processor import TENANT
from cluster import registry
from cluster.settings import StackSettings


def add_commands(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, text, handler in (
        ("plan", "validate a feature repository and show what applying it changes", _plan),
        ("apply", "validate a feature repository and publish it as the next version", _apply),
    ):
        parser = verbs.add_parser(verb, help=text)
        parser.add_argument("path", type=Path, help="the repository's folder of YAML definitions")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(handler=handler)


def _plan(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    planned = registry.make_plan(settings.kafka.bootstrap, TENANT, args.path)
    _show(args, console, planned, applied=None)
    return 0


def _apply(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    planned = registry.make_plan(settings.kafka.bootstrap, TENANT, args.path)
    applied = registry.apply(settings.kafka.bootstrap, TENANT, planned)
    _show(args, console, planned, applied=applied.number if applied else None)
    return 0


def _show(
    args: argparse.Namespace, console: Console, planned: registry.Plan, applied: int | None
) -> None:
    if args.json:
        print(
            json.dumps(
                {
                    "current": planned.current.number if planned.current else None,
                    "changes": [str(c) for c in planned.changes],
                    "applied": applied,
                }
            )
        )
        return
    for line in planned.lines():
        console.print(line, highlight=False)
    if applied is not None:
        console.print(f"applied v{applied}", highlight=False)
