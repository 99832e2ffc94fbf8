"""The registry's commands: ``plan``/``apply`` a repository, and the rollout steps of a view.

``plan PATH`` and ``apply PATH`` validate the repository at ``PATH`` (every catalog rule, the
offending document and field named) and show its changes against the latest applied version;
``apply`` then publishes it as the next version (``cluster.registry``). A view whose version
changed starts a rollout in shadow (``features.rollout``). Then:

- ``rollout VIEW --to N --share S``: serve version N to S % of entities (100 promotes);
- ``rollback VIEW``: every entity back on the previous version;
- ``retire VIEW --version N``: stop computing a version no entity reads.

Each step publishes the next registry version, and writes it to every region that already serves
its parent, so replicas read it within one refresh (the pipeline publishes it too, to regions that
were behind). Exit codes: 0 done (or nothing to apply), 1 a Freshline error (an invalid repository
or step, a registry that moved since the plan).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from actors.registry_feed import publish_to_regions
from cluster import registry
from cluster.secrets import node_secrets
from cluster.settings import StackSettings
from features import rollout
from features.catalog import Catalog


def add_commands(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, text, handler in (
        ("plan", "validate a feature repository and show what applying it changes", _plan),
        ("apply", "validate a feature repository and publish it as the next version", _apply),
    ):
        parser = verbs.add_parser(verb, help=text)
        parser.add_argument("path", type=Path, help="the repository's folder of YAML definitions")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(handler=handler)
    steps = verbs.add_parser("rollout", help="serve a view's new version to a share of entities")
    steps.add_argument("view")
    steps.add_argument("--to", type=int, required=True, help="the version rolling out")
    steps.add_argument("--share", type=int, required=True, help="percent of entities, 100 promotes")
    back = verbs.add_parser("rollback", help="serve a rolling-out view's previous version again")
    back.add_argument("view")
    ends = verbs.add_parser("retire", help="stop computing a view version no entity reads")
    ends.add_argument("view")
    ends.add_argument("--version", type=int, required=True)
    for parser, handler in ((steps, _rollout), (back, _rollback), (ends, _retire)):
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(handler=handler)


def _rollout(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    return _step(
        args, settings, console, lambda c: rollout.set_share(c, args.view, args.to, args.share)
    )


def _rollback(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    return _step(args, settings, console, lambda c: rollout.rollback(c, args.view))


def _retire(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    return _step(args, settings, console, lambda c: rollout.retire(c, args.view, args.version))


def _step(
    args: argparse.Namespace,
    settings: StackSettings,
    console: Console,
    change: Callable[[Catalog], Catalog],
) -> int:
    planned = registry.plan_change(settings.kafka.bootstrap, settings.tenant, change)
    applied = registry.apply(settings.kafka.bootstrap, settings.tenant, planned)
    if applied is not None:
        secrets = node_secrets(settings.secrets_file, os.environ)
        publish_to_regions(
            settings.topology, settings.redis, secrets, settings.tenant, applied, after_parent=True
        )
    _show(args, console, planned, applied=applied.number if applied else None)
    return 0


def _plan(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    planned = registry.make_plan(settings.kafka.bootstrap, settings.tenant, args.path)
    _show(args, console, planned, applied=None)
    return 0


def _apply(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    planned = registry.make_plan(settings.kafka.bootstrap, settings.tenant, args.path)
    applied = registry.apply(settings.kafka.bootstrap, settings.tenant, planned)
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
