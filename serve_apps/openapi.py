"""The OpenAPI 3.1 document of one region's application, built once per replica from its catalog
and limits.

The document is the contract the server keeps, in both directions where JSON Schema can say it:
a request valid against it is served (2xx), and every answer is valid against the response
schema of its status code. So the request schemas carry what the read path enforces: the feature
references and services of the catalog as enums, the known entity names (join keys for the Feast
route) as the only properties of ``entities``, the caps of :class:`~serve_apps.config.Limits` as
``maxItems``, each entity's id rule, "exactly one of ``features`` and ``feature_service``" as a
``oneOf`` of ``required``, and "a feature's entity must be given" as an ``anyOf`` per entity.
Two rules JSON Schema cannot state are stated in descriptions and kept sound (never wider than
the server): ids are limited in UTF-8 bytes (the schema allows printable ASCII up to the limit, or
any other characters up to a quarter of it), and the Feast route's columns must have equal
lengths. Response ``oneOf`` branches forbid each other's fields, so an answer matches exactly one.
"""

from __future__ import annotations

from typing import Any

from features.catalog import Entity
from serve_apps import similar as similar_api
from serve_apps import similar_schema
from serve_apps.config import Limits
from serve_apps.plan import CatalogIndex
from serve_apps.similar import SimilarSearch

Schema = dict[str, Any]

METHOD_NOT_ALLOWED = "method_not_allowed"
REQUEST_ID_HEADER = "x-request-id"
# Codes of the error body per status, for the reader (the body's ``error`` field).
ERROR_CODES = {
    "400": ("malformed_json",),
    "401": ("unauthorized",),
    "403": ("forbidden",),
    "413": ("body_too_large",),
    "422": (
        "bad_features",
        "unknown_feature",
        "unknown_feature_service",
        "too_many_features",
        "bad_entities",
        "unknown_entity",
        "missing_entity",
        "invalid_entity_id",
        "invalid_input",
        "too_many_entities",
        "bad_deadline",
        "bad_format",
        *similar_api.SIMILAR_ERROR_CODES,
    ),
    "503": ("overloaded", "unavailable"),
}
_CONTROL = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"  # Unicode category Cc, which ids must not contain
_PRINTABLE_ASCII = "^[ -~]+$"  # one UTF-8 byte per character


def _obj(properties: Schema, *, closed: bool = True, optional: tuple[str, ...] = ()) -> Schema:
    """An object with these properties, all required but ``optional``; ``closed``: no others."""
    required = [name for name in properties if name not in optional]
    schema: Schema = {"type": "object", "required": required, "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_MAYBE_INT: Schema = {"type": ["integer", "null"]}
_ERROR = _obj({"error": _STR, "request_id": _STR})
_VALUE = _obj(
    {
        "value": {"description": "the feature's value, or its default"},
        "status": {"enum": ["present", "default", "not_found", "stale"]},
        "event_time_ms": _MAYBE_INT,
        "age_ms": _MAYBE_INT,
        "store": {"type": "string", "description": "redis-<region>, dynamodb-<region>, defaults"},
    }
)
_ENVELOPE: Schema = {
    "request_id": _STR,
    "region": _STR,
    "as_of_ms": _INT,
    "store": {"type": "string", "description": "the store of every value of the response"},
    "fallback": _array(_obj({"store": _STR, "outcome": _STR})),
    "view_versions": {
        "type": "object",
        "additionalProperties": _array(_INT),
        "description": "per view, the versions that answered (two while a canary splits the "
        "entities); each entity's values of a view come from one version",
    },
}
_VERSIONS = {
    "type": "object",
    "additionalProperties": _INT,
    "description": "the version of each view that answered for this entity",
}
_ROWS = _obj(
    {
        **_ENVELOPE,
        "results": _array(
            _obj(
                {
                    "entity": _STR,
                    "id": _STR,
                    "versions": _VERSIONS,
                    "features": {
                        "type": "object",
                        "additionalProperties": {"$ref": "#/components/schemas/Value"},
                    },
                }
            )
        ),
    }
)
_GRID = _array({"type": "array"}, description="one row per id, one column per feature")
_COLUMNS = _obj(
    {
        **_ENVELOPE,
        "format": {"const": "columns"},
        "views": _array(
            _obj(
                {
                    "view": _STR,
                    "entity": _STR,
                    "features": _array(_STR),
                    "ids": _array(_STR),
                    "versions": _array(_INT, description="the view version answering each id"),
                    "values": _GRID,
                    "statuses": _GRID,
                    "event_time_ms": _GRID,
                    "age_ms": _GRID,
                }
            )
        ),
    }
)
_FEAST_OK = _obj(
    {
        "metadata": _obj(
            {"feature_names": _array(_STR), "view_versions": _ENVELOPE["view_versions"]}
        ),
        "results": _array(
            _obj(
                {
                    "values": {"type": "array"},
                    "statuses": _array(
                        {"enum": ["PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE", "NULL_VALUE"]}
                    ),
                    "event_timestamps": _array({"type": "string", "format": "date-time"}),
                }
            )
        ),
    }
)
_CATALOG = _obj(
    {
        "region": _STR,
        "entities": _array(_obj({"name": _STR, "join_key": _STR, "max_id_bytes": _INT})),
        "views": _array(
            _obj(
                {
                    "name": _STR,
                    "version": _INT,
                    "rollout": {
                        "oneOf": [
                            {"type": "null"},
                            _obj({"previous": _INT, "share": _INT}),
                        ],
                        "description": "a rollout of this version: the previous version answers "
                        "every entity outside the share (percent, by entity hash)",
                    },
                    "entity": _STR,
                    "ttl_ms": _INT,
                    "freshness_target_ms": _INT,
                    "features": _array(
                        _obj(
                            {
                                "name": _STR,
                                "ref": _STR,
                                "aggregation": _STR,
                                "window_ms": _MAYBE_INT,
                                "default": {},
                            }
                        )
                    ),
                }
            )
        ),
        "services": _array(_obj({"name": _STR, "features": _array(_STR)})),
        # The registry version served (null: the catalog the app was deployed with from code).
        "registry_version": _MAYBE_INT,
    }
)
_STORES = _obj(
    {
        "breakers": {
            "type": "object",
            "additionalProperties": {"enum": ["closed", "open", "half_open"]},
        },
        "last_failures": {"type": "object", "additionalProperties": {"type": "object"}},
        "store_timeouts": _INT,
        "in_flight": _obj({"limit": _INT, "now": _INT}),
        "loop_lag_ms": {"type": ["number", "null"]},
    }
)
_HEALTH = _obj({"status": {"const": "ok"}})
_READY = _obj({"ready": {"type": "boolean"}, "region": _STR, "request_id": _STR})


def entity_id_schema(entity: Entity) -> Schema:
    """The ids the key encoder accepts for ``entity`` (``features.keys``), as far as a schema can
    say it: at most ``max_id_bytes`` UTF-8 bytes is sound for ASCII at that length and for any
    other text at a quarter of it (four bytes per character at most). Integer ids are described,
    not typed: JSON Schema counts ``7.0`` as an integer, and the server reads ``7.0`` as no id."""
    limit = entity.max_id_bytes
    branches: list[Schema] = [
        {"type": "string", "pattern": _PRINTABLE_ASCII, "minLength": 1, "maxLength": limit}
    ]
    if limit >= 4:
        branches.append({"type": "string", "pattern": _CONTROL, "maxLength": limit // 4})
    return {
        "anyOf": branches,
        "description": f"1 to {limit} UTF-8 bytes without control characters (an integer is "
        "also read, as its decimal string)",
    }


def _refs_by_entity(index: CatalogIndex) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {e.name: [] for e in index.catalog.entities}
    for info in index.views.values():
        refs[info.entity.name] += [f"{info.view.name}:{f.name}" for f in info.view.features]
    return refs


def _services(index: CatalogIndex, limits: Limits) -> dict[str, set[str]]:
    """Servable services and the entities each needs (one past ``max_features`` is refused)."""
    out: dict[str, set[str]] = {}
    for service in index.catalog.services:
        if len(set(service.features)) <= limits.max_features:
            out[service.name] = {index.ref(ref).info.entity.name for ref in service.features}
    return out


def _enum_or_nothing(values: list[str]) -> Schema | bool:
    return {"enum": values} if values else False


def _read_request(index: CatalogIndex, limits: Limits, *, feast: bool) -> Schema:
    """``entities`` keyed by entity name (by join key when ``feast``)."""
    entities = index.catalog.entities
    by_entity = _refs_by_entity(index)
    every_ref = [ref for refs in by_entity.values() for ref in refs]
    services = _services(index, limits)
    # Ids are capped in total over all entities: each entity gets an equal share.
    named = max(1, min(len(entities), limits.max_entities))
    share = limits.max_entities // named
    key = {e.name: e.join_key if feast else e.name for e in entities}
    columns = {
        key[e.name]: _array(entity_id_schema(e), minItems=1, maxItems=share) for e in entities
    }
    needs = [
        {
            "anyOf": [
                {"properties": {"entities": {"required": [key[e.name]]}}},
                {
                    "properties": {
                        "features": {
                            "items": _enum_or_nothing(
                                [r for r in every_ref if r not in by_entity[e.name]]
                            )
                        },
                        "feature_service": _enum_or_nothing(
                            [s for s, needed in services.items() if e.name not in needed]
                        ),
                    }
                },
            ]
        }
        for e in entities
    ]
    properties: Schema = {
        "entities": {
            "type": "object",
            "properties": columns,
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": named,
            "description": (
                (
                    "join key -> one value per row, all columns of equal length"
                    if feast
                    else "entity name -> ids"
                )
                + f"; at most {limits.max_entities} distinct ids in all"
            ),
        },
        "features": _array({"enum": every_ref}, minItems=1, maxItems=limits.max_features),
        "feature_service": {"enum": sorted(services)},
        "deadline_ms": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": f"default {limits.default_deadline_ms}, capped at "
            f"{limits.max_deadline_ms}",
        },
    }
    if feast:
        properties["full_feature_names"] = {"type": "boolean", "default": False}
    else:
        properties["format"] = {
            "enum": ["rows", "columns"],
            "default": "rows",
            "description": "rows: one object per value; columns: one block per view",
        }
    return {
        "type": "object",
        "required": ["entities"],
        "properties": properties,
        "oneOf": [{"required": ["features"]}, {"required": ["feature_service"]}],
        "allOf": needs,
        "description": "exactly one of features and feature_service; every feature's entity "
        "is given; other fields are ignored",
    }


def _example(index: CatalogIndex, *, feast: bool) -> Schema:
    info = next(iter(index.views.values()))
    ref = f"{info.view.name}:{info.view.features[0].name}"
    name = info.entity.join_key if feast else info.entity.name
    return {"entities": {name: ["id_1", "id_2"]}, "features": [ref]}


def _response(
    description: str,
    schema: Schema | None,
    media: str = "application/json",
    headers: Schema | None = None,
) -> Schema:
    response: Schema = {
        "description": description,
        "headers": {
            REQUEST_ID_HEADER: {
                "required": True,
                "schema": _STR,
                "description": "the request id, also in the body and in the server's log",
            },
            **(headers or {}),
        },
        "content": {},
    }
    if schema is not None:
        response["content"][media] = {"schema": schema}
    return response


def _unavailable(description: str, schema: Schema | None) -> Schema:
    """A 503: this server's own (``schema``, if it sends any), or Serve's before the handler."""
    response = _response(
        f"{description}; text/plain: from Ray Serve itself, when the replica's queue is full "
        "(with Retry-After) or while the application is being deployed",
        schema,
        headers={
            "retry-after": {
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                "description": "seconds; on every 503 of an overloaded replica",
            }
        },
    )
    response["content"]["text/plain"] = {"schema": _STR}
    return response


def _errors(*codes: str) -> Schema:
    out = {}
    for code in codes:
        reasons = ", ".join(ERROR_CODES[code])
        out[code] = _response(f"refused: {reasons}", _ref("Error"))
    out["503"] = _unavailable(f"refused: {', '.join(ERROR_CODES['503'])}", _ref("Error"))
    return out


def _operation(summary: str, ok: Schema, *errors: str, secured: bool = True) -> Schema:
    """Secured operations pass our gates (every one may answer 503 ``overloaded``); public ones
    are never shed by this server, but Serve may shed any request before it reaches us."""
    busy = _errors(*errors) if secured else {"503": _unavailable("never from this server", None)}
    op: Schema = {"summary": summary, "responses": {"200": ok, **busy}}
    if secured:
        op["security"] = [{"apiKey": []}, {"bearer": []}]
    return op


def _post(summary: str, request: Schema, example: Schema, ok: Schema) -> Schema:
    op = _operation(summary, ok, "400", "401", "403", "413", "422")
    op["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": request, "example": example}},
    }
    return {"post": op}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def openapi_document(
    prefix: str, index: CatalogIndex, limits: Limits, similar: SimilarSearch | None = None
) -> dict[str, Any]:
    """The document served at ``GET /v1/openapi.json`` (and rendered at ``GET /docs``);
    ``/v1/similar`` is in it exactly when the replica serves it (``similar`` given)."""
    ready = _response("ready: a store answered a probe read", _ref("Ready"))
    paths = {
        "/v1/features": _post(
            "Read features of entities",
            _ref("FeaturesRequest"),
            _example(index, feast=False),
            _response(
                "values, in the requested format", {"oneOf": [_ref("Rows"), _ref("Columns")]}
            ),
        ),
        "/get-online-features": _post(
            "Feast-compatible read",
            _ref("FeastRequest"),
            _example(index, feast=True),
            _response("one column per join key, then per feature", _ref("FeastResponse")),
        ),
        "/v1/catalog": {
            "get": _operation(
                "Views, features, versions, TTLs, freshness targets",
                _response("the catalog", _ref("Catalog")),
                "401",
                "403",
            )
        },
        "/v1/stores": {
            "get": _operation(
                "Circuit breaker state per store (admin scope)",
                _response("breakers, last failures, in-flight limit, loop lag", _ref("Stores")),
                "401",
                "403",
            )
        },
        "/v1/health": {
            "get": _operation(
                "Liveness",
                _response("the replica's event loop answers", _ref("Health")),
                secured=False,
            )
        },
        "/v1/ready": {
            "get": {
                "summary": "Readiness: catalog loaded and a store answers",
                "responses": {
                    "200": ready,
                    "503": _unavailable("not ready: no store answered", _ref("Ready")),
                },
            }
        },
        "/v1/openapi.json": {
            "get": _operation(
                "This document", _response("OpenAPI 3.1", {"type": "object"}), secured=False
            )
        },
        "/docs": {"get": _operation("This document as HTML", _html_response(), secured=False)},
    }
    schemas: Schema = {
        "FeaturesRequest": _read_request(index, limits, feast=False),
        "FeastRequest": _read_request(index, limits, feast=True),
        "Rows": _ROWS,
        "Columns": _COLUMNS,
        "Value": _VALUE,
        "FeastResponse": _FEAST_OK,
        "Catalog": _CATALOG,
        "Stores": _STORES,
        "Health": _HEALTH,
        "Ready": _READY,
        "Error": _ERROR,
    }
    if similar is not None:
        paths["/v1/similar"] = _post(
            "Nearest neighbours of a vector or an entity, filtered, optionally hybrid",
            _ref("SimilarRequest"),
            similar_schema.request_example(similar),
            _response("neighbours, best first", _ref("Similar")),
        )
        schemas |= {
            "SimilarRequest": similar_schema.request_schema(similar),
            "Similar": similar_schema.RESPONSE_SCHEMA,
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Freshline feature serving",
            "version": "1",
            "description": "A known path asked with a method it does not list answers 405 with "
            "an Allow header; an unknown path answers 404. Every response carries one "
            "x-request-id header (a request's own x-request-id is kept).",
        },
        "servers": [{"url": prefix}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": schemas,
        },
        "paths": paths,
    }


def _html_response() -> Schema:
    return _response("HTML reference of this document", _STR, "text/html")
