"""The oracle: expected feature values recomputed by brute force from the raw events.

It deliberately shares no code with the pipeline. It re-implements, from the documented rules,
what an accepted event is (schema checks, then per-partition lateness in offset order) and what
a window covers (``features/tiles.py`` docstring: the events with
``aligned_start <= t_event <= as_of`` where ``aligned_start = floor(as_of / T) * T + T - W``).
Only the catalog (the spec: fields, windows, tile sizes) is read from the product.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from features.catalog import Catalog


@dataclass(frozen=True)
class LedgerEntry:
    """One produced event as Kafka acknowledged it. ``timestamp_ms`` is the record's broker-side
    time; the consumer sees an event moments later, so "too far in the future" is judged
    against it (generated future events are minutes ahead, far from that margin)."""

    partition: int
    offset: int
    value: bytes
    timestamp_ms: int


def accepted_events(
    ledger: Iterable[LedgerEntry], catalog: Catalog, source: str
) -> list[dict[str, Any]]:
    """Events the pipeline must accept, by an independent reading of the rules."""
    spec = catalog.source(source)
    delay = spec.out_of_orderness_ms + spec.allowed_lateness_ms
    by_partition: dict[int, list[LedgerEntry]] = defaultdict(list)
    for entry in ledger:
        by_partition[entry.partition].append(entry)
    accepted = []
    for entries in by_partition.values():
        newest: int | None = None
        for entry in sorted(entries, key=lambda e: e.offset):
            event = _well_formed(entry.value, spec.event_types)
            if event is None or len(entry.value) > spec.max_payload_bytes:
                continue
            if event["event_time_ms"] > entry.timestamp_ms + spec.max_future_skew_ms:
                continue
            t = event["event_time_ms"]
            if newest is not None and t < newest - delay:
                continue  # late
            newest = t if newest is None else max(newest, t)
            accepted.append({**event, "_partition": entry.partition, "_offset": entry.offset})
    return accepted


def _well_formed(raw: bytes, event_types: frozenset[str]) -> dict[str, Any] | None:
    try:
        event = json.loads(raw, parse_constant=lambda _: None)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event_type") not in event_types:
        return None
    strings = ("event_id", "user_id", "merchant_id", "currency")
    if not all(isinstance(event.get(k), str) and event[k] for k in strings):
        return None
    ints = ("seq", "event_time_ms")
    if not all(type(event.get(k)) is int for k in ints):
        return None
    amount: Any = event.get("amount")
    if type(amount) not in (int, float) or not math.isfinite(amount):
        return None
    return event


def expected_values(
    accepted: list[dict[str, Any]], catalog: Catalog, view_name: str, entity: str, as_of_ms: int
) -> dict[str, Any]:
    """Every brute-forceable feature of one entity as of ``as_of_ms`` (all but cusum)."""
    view = catalog.view(view_name)
    key_field = catalog.entity(view.entity).join_key
    mine = [e for e in accepted if e[key_field] == entity and e["event_time_ms"] <= as_of_ms]
    out: dict[str, Any] = {}
    for feature in view.features:
        spec = feature.tile_spec
        rows = mine
        if spec is not None:
            start = (as_of_ms // spec.tile_ms) * spec.tile_ms + spec.tile_ms - spec.window_ms
            rows = [e for e in mine if e["event_time_ms"] >= start]
        value = _aggregate(feature.aggregation.value, feature.column, rows)
        if value is not _SKIP:
            out[feature.name] = value
    return out


_SKIP = object()


def _aggregate(kind: str, column: str | None, rows: list[dict[str, Any]]) -> Any:
    values = [r[column] for r in rows] if column else []
    simple: dict[str, Any] = {
        "count": lambda: len(rows),
        "sum": lambda: float(sum(values)),
        "mean": lambda: sum(values) / len(values) if values else None,
        "min": lambda: min(values, default=None),
        "max": lambda: max(values, default=None),
        "distinct_count": lambda: len(set(values)),
        "last": lambda: _latest(rows, column),
    }
    return simple[kind]() if kind in simple else _SKIP


def _latest(rows: list[dict[str, Any]], column: str | None) -> Any:
    # Latest by event time; ties by arrival (offset) within the entity's partition.
    latest = max(rows, key=lambda r: (r["event_time_ms"], r["_offset"]), default=None)
    return None if latest is None or column is None else latest[column]
