"""``freshline embeddings status|add|switch|retire``: an embedding view's model versions.

Each command asks the view's catalog actor (``actors.embedding_versions``) on the stack's Ray
cluster, so the pipeline must be up. ``add`` builds a version's index beside the others;
``switch`` moves reads to a version whose index is ready in every region and retires the previous
one; ``retire`` drops a version that does not serve after ``--grace``. Exit codes: 0 done, 1 a
Freshline error (a refused change, no catalog for the view).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.settings import StackSettings
from features.durations import parse_duration
from features.embedding_catalog import ViewCatalog
from features.embeddings import INDEX_ACTOR_NAMESPACE

DEFAULT_GRACE = "1h"


def add_commands(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser("embeddings", help="embedding views: model versions and switches")
    sub = parser.add_subparsers(dest="embeddings_verb", required=True)
    status = sub.add_parser("status", help="each view's versions and index actors")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)
    for verb, text, handler in (
        ("add", "build a model version's index beside the others (reads stay)", _add),
        ("switch", "move reads to a ready version; the previous one retires", _switch),
        ("retire", "drop a version that does not serve after the grace period", _retire),
    ):
        command = sub.add_parser(verb, help=text)
        command.add_argument("view")
        command.add_argument("version")
        if verb != "add":
            command.add_argument(
                "--grace",
                default=DEFAULT_GRACE,
                help=f"how long the retired version stays searchable (default {DEFAULT_GRACE})",
            )
        command.set_defaults(handler=handler)


@contextmanager
def _ray(settings: StackSettings) -> Iterator[None]:
    import ray

    os.environ.update(settings.ray.client_env())  # read by ray.init in this process
    ray.init(address=settings.ray.address, namespace=INDEX_ACTOR_NAMESPACE, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _grace_s(args: argparse.Namespace) -> float:
    return parse_duration(args.grace, field="--grace").total_seconds()


def _change(settings: StackSettings, console: Console, change: Callable[[], ViewCatalog]) -> int:
    with _ray(settings):
        catalog = change()
    console.print(_summary(catalog))
    return 0


def _add(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster import embeddings

    return _change(settings, console, lambda: embeddings.add_version(args.view, args.version))


def _switch(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster import embeddings

    grace = _grace_s(args)
    return _change(
        settings, console, lambda: embeddings.switch_version(args.view, args.version, grace)
    )


def _retire(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster import embeddings

    grace = _grace_s(args)
    return _change(
        settings, console, lambda: embeddings.retire_version(args.view, args.version, grace)
    )


def _status(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster import embeddings
    from features.demo import item_embedding_views

    with _ray(settings):
        state = embeddings.index_status(item_embedding_views(), settings.topology)
    if args.json:
        print(json.dumps(state, indent=2, default=str))
    else:
        console.print(status_table(state))
    return 0


def _summary(catalog: ViewCatalog) -> str:
    retiring = ", ".join(f"{r.version} (drop at {r.drop_after_ms} ms)" for r in catalog.retiring)
    return (
        f"{catalog.name}: generation {catalog.generation}, serving "
        f"{catalog.view.serving_version}, versions {', '.join(catalog.view.model_versions)}"
        + (f"; retiring {retiring}" if retiring else "")
        + (f"; dropping {', '.join(catalog.dropping)}" if catalog.dropping else "")
    )


def status_table(state: dict[str, Any]) -> Table:
    """One row per catalog and per index actor of ``cluster.embeddings.index_status``."""
    table = Table(title="embedding views")
    for column in ("actor", "ready", "versions / size", "positions", "mirror"):
        table.add_column(column)
    for name, status in state.items():
        if status is None:
            table.add_row(name, "missing", "", "", "")
        elif "generation" in status:  # a catalog
            versions = ", ".join(status["model_versions"])
            table.add_row(name, "", f"serving {status['serving_version']} of {versions}", "", "")
        else:
            size = ", ".join(f"{v}: {i['size']}" for v, i in status["indexes"].items())
            mirror = ", ".join(f"{v}: {m['state']}" for v, m in status.get("mirror", {}).items())
            consumed = sum(status["positions"].values())
            table.add_row(name, "yes" if status["ready"] else "no", size, str(consumed), mirror)
    return table
