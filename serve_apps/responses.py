"""Request bodies in, response bodies out, for the native API and the Feast-compatible one.

Native ``POST /v1/features``::

    request  {"entities": {"user": ["u_1", "u_2"]},             # entity name -> ids
              "features": ["user_spend:tx_count_1h", ...]       # or "feature_service": "fraud_v1"
              "deadline_ms": 50}                                # optional
    response {"request_id": "...", "region": "us-east", "as_of_ms": 1764...,
              "store": "redis-us-east", "fallback": [{"store": "redis-us-east", "outcome": "ok"}],
              "results": [{"entity": "user", "id": "u_1",
                           "features": {"user_spend:tx_count_1h": {"value": 3, "status": "present",
                                        "event_time_ms": 1764..., "age_ms": 812,
                                        "store": "redis-us-east"}}}]}

    with "format": "columns" in the request, one block per view instead of one object per value
    (a third of the bytes and of the encoding time for 100 entities x 50 features)::

    response {"request_id": "...", "region": "us-east", "as_of_ms": 1764..., "store": "...",
              "fallback": [...], "format": "columns",
              "views": [{"view": "user_spend", "entity": "user",
                         "features": ["user_spend:tx_count_1h", ...],   # the columns
                         "ids": ["u_1", "u_2"],                         # the rows
                         "values": [[3, ...], [0, ...]], "statuses": [["present", ...], ...],
                         "event_time_ms": [[1764..., ...], ...], "age_ms": [[812, ...], ...]}]}

    Every value of a response comes from the response's ``store`` (one chain read per request),
    so the columnar shape names it once.

Feast ``POST /get-online-features`` (Feast feature server's request and response shape)::

    request  {"features": ["user_spend:tx_count_1h"] | "feature_service": "fraud_v1",
              "entities": {"user_id": ["u_1", "u_2"]},          # join key -> one value per row
              "full_feature_names": false}
    response {"metadata": {"feature_names": ["user_id", "tx_count_1h"]},
              "results": [{"values": ["u_1", "u_2"], "statuses": ["PRESENT", "PRESENT"],
                           "event_timestamps": ["1970-01-01T00:00:00Z", ...]},
                          {"values": [3, 0], "statuses": ["PRESENT", "NOT_FOUND"],
                           "event_timestamps": ["2026-11-28T13:01:02.345Z", ...]}]}

Every entity list of a Feast request is a column of the same rows (equal lengths); a view reads
the row's value of its entity's join key.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from serve_apps.config import Limits
from serve_apps.exceptions import BadRequest
from serve_apps.plan import CatalogIndex, ReadPlan, build_plan, resolve_refs, validated_ids
from serve_apps.service import ReadResult
from serve_apps.values import DEFAULT, NOT_FOUND, PRESENT, STALE

_FEAST_STATUS = {PRESENT: "PRESENT", NOT_FOUND: "NOT_FOUND", STALE: "OUTSIDE_MAX_AGE"}
_EPOCH = "1970-01-01T00:00:00Z"
ROWS = "rows"
COLUMNS = "columns"
FORMATS = (ROWS, COLUMNS)


def response_format(body: Mapping[str, Any]) -> str:
    """The native request's ``format``: ``rows`` (the default) or ``columns``."""
    chosen = body.get("format", ROWS)
    if chosen not in FORMATS:
        raise BadRequest("bad_format", f"'format' must be one of {', '.join(FORMATS)}")
    return str(chosen)


def native_plan(index: CatalogIndex, body: Mapping[str, Any], limits: Limits) -> ReadPlan:
    refs = resolve_refs(index, body, limits)
    entities = body.get("entities")
    if not isinstance(entities, dict) or not entities:
        raise BadRequest("bad_entities", "'entities' must map entity names to id lists")
    ids: dict[str, tuple[str, ...]] = {}
    for name, raw in entities.items():
        entity = next((e for e in index.catalog.entities if e.name == name), None)
        if entity is None:
            raise BadRequest("unknown_entity", f"unknown entity {name!r}")
        ids[name] = validated_ids(entity, raw)
    return build_plan(index, refs, ids, limits, body.get("deadline_ms"))


def native_response(
    result: ReadResult, plan: ReadPlan, region: str, request_id: str
) -> dict[str, Any]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for view in result.views.values():
        entity = view.info.entity.name
        names = [ref.ref for ref in view.refs]
        view_name = view.info.view.name
        for (entity_id, served), version in zip(view.by_id().items(), view.versions, strict=True):
            row = rows.get((entity, entity_id))
            if row is None:
                row = rows[(entity, entity_id)] = {
                    "entity": entity,
                    "id": entity_id,
                    "versions": {},
                    "features": {},
                }
            row["versions"][view_name] = version
            out = row["features"]
            for name, (value, status, event_time, age, store) in zip(names, served, strict=True):
                out[name] = {
                    "value": value,
                    "status": status,
                    "event_time_ms": event_time,
                    "age_ms": age,
                    "store": store,
                }
    return {**_envelope(result, region, request_id), "results": list(rows.values())}


def _envelope(result: ReadResult, region: str, request_id: str) -> dict[str, Any]:
    """What both native shapes say about the read as a whole (``store`` before the values: the
    drills' load generator reads the first ``"store"`` of a body)."""
    return {
        "request_id": request_id,
        "region": region,
        "as_of_ms": result.as_of_ms,
        "store": result.store,
        "fallback": [{"store": s, "outcome": o} for s, o in result.tried],
        "view_versions": view_versions(result),
    }


def view_versions(result: ReadResult) -> dict[str, list[int]]:
    """Per view, the versions that answered some entity of this read (one, unless a canary
    split the entities), ascending."""
    return {name: sorted(set(v.versions)) for name, v in result.views.items()}


def columnar_response(
    result: ReadResult, plan: ReadPlan, region: str, request_id: str
) -> dict[str, Any]:
    """The ``format: columns`` shape: per view, one row of each field per id (module docstring)."""
    views = []
    for view in result.views.values():
        columns = view.columns  # already one list per id and field
        views.append(
            {
                "view": view.info.view.name,
                "entity": view.info.entity.name,
                "features": [ref.ref for ref in view.refs],
                "ids": list(view.ids),
                "versions": list(view.versions),
                "values": columns.values,
                "statuses": columns.statuses,
                "event_time_ms": columns.event_times,
                "age_ms": columns.ages,
            }
        )
    return {**_envelope(result, region, request_id), "format": COLUMNS, "views": views}


def feast_plan(
    index: CatalogIndex, body: Mapping[str, Any], limits: Limits
) -> tuple[ReadPlan, dict[str, list[str]]]:
    """The plan, and the request's rows per join key (ids as strings, in request order)."""
    refs = resolve_refs(index, body, limits)
    entities = body.get("entities")
    if not isinstance(entities, dict) or not entities:
        raise BadRequest("bad_entities", "'entities' must map join keys to value lists")
    lengths = {len(v) for v in entities.values() if isinstance(v, list)}
    if len(lengths) != 1 or len(entities) != sum(isinstance(v, list) for v in entities.values()):
        raise BadRequest("bad_entities", "every entity column must be a list of the same length")
    if lengths.pop() > limits.max_entities:
        raise BadRequest("too_many_entities", f"more than {limits.max_entities} rows")
    ids: dict[str, tuple[str, ...]] = {}
    rows: dict[str, list[str]] = {}
    for join_key, raw in entities.items():
        entity = index.by_join_key.get(join_key)
        if entity is None:
            raise BadRequest("unknown_entity", f"no entity has join key {join_key!r}")
        ids[entity.name] = validated_ids(entity, raw)
        rows[join_key] = [str(v) for v in raw]
    return build_plan(index, refs, ids, limits, body.get("deadline_ms")), rows


def feast_response(
    result: ReadResult, plan: ReadPlan, rows: Mapping[str, list[str]], full_names: bool
) -> dict[str, Any]:
    names = list(rows)
    columns: list[dict[str, Any]] = [
        {"values": list(v), "statuses": ["PRESENT"] * len(v), "event_timestamps": [_EPOCH] * len(v)}
        for v in rows.values()
    ]
    for view in result.views.values():
        join_rows = rows[view.info.entity.join_key]
        by_id = view.by_id()
        per_row = [by_id[entity_id] for entity_id in join_rows]
        for i, ref in enumerate(view.refs):
            name = ref.ref.replace(":", "__") if full_names else ref.feature.name
            names.append(name)
            served = [values[i] for values in per_row]
            columns.append(
                {
                    "values": [s[0] for s in served],
                    "statuses": [_feast_status(s[1], s[0]) for s in served],
                    "event_timestamps": [_iso(s[2]) for s in served],
                }
            )
    metadata = {"feature_names": names, "view_versions": view_versions(result)}
    return {"metadata": metadata, "results": columns}


def _feast_status(status: str, value: Any) -> str:
    if status == DEFAULT:
        return "PRESENT" if value is not None else "NULL_VALUE"
    return _FEAST_STATUS[status]


def _iso(ms: int | None) -> str:
    if ms is None:
        return _EPOCH
    stamp = datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
