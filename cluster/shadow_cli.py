"""``freshline shadow VIEW``: how a view's rolling-out version compares before anyone reads it.

For a sample of entities (those with the newest events in the offline ``raw_events`` table), as
of one instant (now):

1. both computed versions' blocks are read from one region's Redis and evaluated as serving
   evaluates them (``serve_apps.values.evaluate_view``: the same merge, TTL and defaults);
2. the candidate is recomputed from the offline table with the training-set code
   (``training.asof.as_of_values``);
3. each candidate feature gets a line (``training.shadow``): entities compared, the share equal
   to its offline recomputation, the share equal to the previous version's value (when the
   previous version has that feature), and the mean absolute difference to each.

After a backfill (``actors.backfill``) the candidate equals its offline recomputation for every
entity whose events the offline writer has appended; an entity with events in the last seconds
(the writer appends every couple of seconds) may differ until it has. The report is information:
the command exits 0 whenever it could compute it, 1 on a Freshline error (no registry version,
an unknown view, no offline table).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from actors.registry_feed import latest
from cluster.secrets import node_secrets
from cluster.settings import Secrets, StackSettings
from features.blocks import BlockLayout
from features.catalog import Catalog, FeatureView
from features.errors import ConfigError
from features.keys import OnlineKey

DEFAULT_ENTITIES = 200


def add_commands(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "shadow", help="compare a rolling-out view version with its offline recomputation"
    )
    parser.add_argument("view")
    parser.add_argument(
        "--entities", type=int, default=DEFAULT_ENTITIES, help="entities with the newest events"
    )
    parser.add_argument("--region", default=None, help="whose Redis to read (default: the first)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_shadow)


def _shadow(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    secrets = node_secrets(settings.secrets_file, os.environ)
    report = shadow_report(settings, secrets, args.view, entities=args.entities, region=args.region)
    if args.json:
        print(json.dumps(report))
        return 0
    previous = report["previous"]
    console.print(
        f"{report['view']} v{report['candidate']}"
        + (f" (previous v{previous})" if previous is not None else " (no rollout)")
        + f", {report['entities']} entities, {report['region']} Redis, as of "
        f"{report['as_of_ms']} ms",
        highlight=False,
    )
    table = Table("feature", "= offline", "|diff| offline", "= previous", "|diff| previous")
    for line in report["features"]:
        table.add_row(
            line["feature"],
            _share(line["equal_offline"]),
            _number(line["mean_abs_diff_offline"]),
            _share(line["equal_previous"]),
            _number(line["mean_abs_diff_previous"]),
        )
    console.print(table)
    return 0


def shadow_report(
    settings: StackSettings,
    secrets: Secrets,
    view_name: str,
    *,
    entities: int = DEFAULT_ENTITIES,
    region: str | None = None,
    as_of_ms: int | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (module docstring)."""
    from training.asof import Columns, as_of_values
    from training.shadow import compare, of_entities, recent_entities

    current = latest(settings.kafka.bootstrap, settings.tenant)
    if current is None:
        raise ConfigError("no registry version is applied: nothing rolls out")
    catalog = current.catalog
    candidate = catalog.view(view_name)
    rollout = catalog.rollout(view_name)
    previous = rollout.previous if rollout is not None else None
    region_name = region or settings.topology.names[0]
    as_of = int(time.time() * 1000) if as_of_ms is None else as_of_ms
    source = catalog.source(candidate.source)
    columns = Columns(key=candidate.key_field(catalog), time=source.event_time_field)
    events = _events(settings, catalog, candidate, columns, as_of)
    ids = recent_entities(events, columns.key, columns.time, entities)
    offline = as_of_values(
        candidate,
        candidate.features,
        of_entities(events, columns.key, ids),
        columns=columns,
        keys=ids,
        ts=np.full(len(ids), as_of, dtype=np.int64),
    )
    redis = _Store(settings, secrets, region_name, catalog, as_of)
    stored = _served(redis, candidate, ids)
    before: dict[str, list[Any]] = {}
    if previous is not None:
        shared = {f.name for f in candidate.features}
        served = _served(redis, previous, ids)
        before = {name: values for name, values in served.items() if name in shared}
    lines = compare(
        stored,
        {name: [_plain(v) for v in values] for name, values in offline.values.items()},
        before,
    )
    return {
        "view": view_name,
        "candidate": candidate.version,
        "previous": previous.version if previous is not None else None,
        "share": rollout.share if rollout is not None else None,
        "region": region_name,
        "as_of_ms": as_of,
        "entities": len(ids),
        "features": [line.to_dict() for line in lines],
    }


def _events(
    settings: StackSettings, catalog: Catalog, view: FeatureView, columns: Any, as_of: int
) -> Any:
    from pyiceberg.exceptions import NoSuchTableError

    from actors.offline_tables import RAW_TABLE
    from cluster.services.offline import NAMESPACE, iceberg_catalog
    from training.events import event_columns, read_events

    try:
        table = iceberg_catalog(settings).load_table((NAMESPACE, RAW_TABLE))
    except NoSuchTableError:
        raise ConfigError(
            f"no table {NAMESPACE}.{RAW_TABLE}: has the offline writer run?"
        ) from None
    values = [f.column for f in view.features if f.column]
    wanted = event_columns([columns.key], columns.time, values)
    return read_events(table, wanted, time_column=columns.time, until_ms=as_of).table


@dataclass(frozen=True)
class _Store:
    """One region's Redis, read as of one instant."""

    settings: StackSettings
    secrets: Secrets
    region: str
    catalog: Catalog
    as_of: int


def _served(store: _Store, view: FeatureView, entities: Sequence[Any]) -> dict[str, list[Any]]:
    """Per feature of ``view``, its served value per entity, from the region's Redis."""
    from regions.redis_store import RedisRole, RedisTileReader, redis_client
    from serve_apps.values import evaluate_view

    settings, as_of = store.settings, store.as_of
    max_id = store.catalog.entity(view.entity).max_id_bytes
    keys = [
        OnlineKey(settings.tenant, view.name, view.version, str(e)).encode(max_id_bytes=max_id)
        for e in entities
    ]
    region = settings.topology.get(store.region)
    client = redis_client(region, RedisRole.READER, settings.redis, store.secrets)
    try:
        fields = RedisTileReader(client, "redis").get_all(keys)
    finally:
        client.close()
    served = evaluate_view(
        BlockLayout.for_view(view),
        view.ttl_ms,
        view.features,
        [fields[k] for k in keys],
        as_of_ms=as_of,
        store="redis",
        where=f"{view.name} v{view.version}",
    )
    return {f.name: [row[i] for row in served.values] for i, f in enumerate(view.features)}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
