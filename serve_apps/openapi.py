"""The OpenAPI 3.1 document of one region's application (static: built once per replica)."""

from __future__ import annotations

from typing import Any

_VALUE = {
    "type": "object",
    "properties": {
        "value": {},
        "status": {"enum": ["present", "default", "not_found", "stale"]},
        "event_time_ms": {"type": ["integer", "null"]},
        "age_ms": {"type": ["integer", "null"]},
        "store": {"type": "string", "description": "redis-<region>, dynamodb-<region>, defaults"},
    },
}
_FEATURES_REQUEST = {
    "type": "object",
    "required": ["entities"],
    "properties": {
        "entities": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "description": "entity name -> ids",
        },
        "features": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[a-z0-9_]+:[a-z0-9_]+$"},
        },
        "feature_service": {"type": "string"},
        "deadline_ms": {"type": "integer", "minimum": 1},
        "format": {
            "enum": ["rows", "columns"],
            "description": "rows (default): one object per value; columns: one block per view",
        },
    },
}


def _array_of(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "object", "properties": properties}}


_ENVELOPE = {
    "request_id": {"type": "string"},
    "region": {"type": "string"},
    "as_of_ms": {"type": "integer"},
    "store": {"type": "string", "description": "the store of every value of the response"},
}
_GRID = {"type": "array", "items": {"type": "array"}, "description": "one row per id"}
_COLUMNS_OK = {
    "type": "object",
    "properties": {
        **_ENVELOPE,
        "format": {"const": "columns"},
        "views": _array_of(
            {
                "view": {"type": "string"},
                "entity": {"type": "string"},
                "features": {"type": "array", "items": {"type": "string"}},
                "ids": {"type": "array", "items": {"type": "string"}},
                "values": _GRID,
                "statuses": _GRID,
                "event_time_ms": _GRID,
                "age_ms": _GRID,
            }
        ),
    },
}
_FEAST_REQUEST = {
    "type": "object",
    "required": ["entities"],
    "properties": {
        "entities": {"type": "object", "description": "join key -> one value per row"},
        "features": {"type": "array", "items": {"type": "string"}},
        "feature_service": {"type": "string"},
        "full_feature_names": {"type": "boolean"},
    },
}
_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "request_id": {"type": "string"}},
            }
        }
    },
}


def _post(summary: str, schema: dict[str, Any], ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"apiKey": []}],
            "requestBody": {"content": {"application/json": {"schema": schema}}},
            "responses": {
                "200": {"description": "values", "content": {"application/json": {"schema": ok}}},
                **{code: _ERROR for code in ("400", "401", "403", "413", "422", "503")},
            },
        }
    }


def _get(summary: str, secured: bool) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "ok"}}}
    if secured:
        op["security"] = [{"apiKey": []}]
    return {"get": op}


def openapi_document(prefix: str) -> dict[str, Any]:
    native_ok = {
        "type": "object",
        "properties": {
            **_ENVELOPE,
            "results": _array_of(
                {
                    "entity": {"type": "string"},
                    "id": {"type": "string"},
                    "features": {"type": "object", "additionalProperties": _VALUE},
                }
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Freshline feature serving", "version": "1"},
        "servers": [{"url": prefix}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}
        },
        "paths": {
            "/v1/features": _post(
                "Read features of entities",
                _FEATURES_REQUEST,
                {"oneOf": [native_ok, _COLUMNS_OK]},
            ),
            "/get-online-features": _post(
                "Feast-compatible read", _FEAST_REQUEST, {"type": "object"}
            ),
            "/v1/catalog": _get("Views, features, versions, TTLs, freshness targets", True),
            "/v1/stores": _get("Circuit breaker state per store (admin scope)", True),
            "/v1/health": _get("Liveness", False),
            "/v1/ready": _get("Readiness: catalog loaded and a store answers", False),
        },
    }


DOCS_HTML = b"""<!doctype html><html><head><meta charset="utf-8"><title>Freshline API</title></head>
<body><redoc spec-url="v1/openapi.json"></redoc>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script></body></html>
"""
