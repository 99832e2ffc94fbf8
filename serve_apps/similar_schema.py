"""The OpenAPI schemas of ``POST /v1/similar`` (``serve_apps.openapi`` places them): one request
branch per view, built from the views a replica serves, and the response."""

from __future__ import annotations

from typing import Any

from features.embedding_search import Strategy
from features.embeddings import MAX_COMPONENT, EmbeddingView
from serve_apps.similar import SimilarLimits, SimilarSearch


def request_schema(search: SimilarSearch) -> dict[str, Any]:
    """One ``oneOf`` branch per view (its dimension, versions and attributes), each requiring
    exactly one of ``vector`` and ``entity_id``."""
    return {"oneOf": [_view_request(view, search.limits) for view in search.views.values()]}


def _view_request(view: EmbeddingView, limits: SimilarLimits) -> dict[str, Any]:
    number = {"type": "number", "minimum": -MAX_COMPONENT, "maximum": MAX_COMPONENT}
    properties: dict[str, Any] = {
        "view": {"const": view.name},
        "vector": {
            "type": "array",
            "items": number,
            "minItems": view.dimension,
            "maxItems": view.dimension,
        },
        "entity_id": {
            "type": "string",
            "minLength": 1,
            "description": "an entity with no vector is refused (unknown_entity)",
        },
        "k": {"type": "integer", "minimum": 1, "maximum": limits.max_k, "default": 10},
        "filters": _filters_schema(view),
        "text": {"type": "string", "maxLength": limits.max_text_chars},
        "version": {"enum": list(view.model_versions), "default": view.serving_version},
    }
    return {
        "type": "object",
        "properties": properties,
        "required": ["view"],
        "additionalProperties": False,
        "oneOf": [
            {"required": ["vector"], "not": {"required": ["entity_id"]}},
            {"required": ["entity_id"], "not": {"required": ["vector"]}},
        ],
    }


def _filters_schema(view: EmbeddingView) -> dict[str, Any]:
    number = {"type": "number"}
    ranges = {op: number for op in ("gt", "gte", "lt", "lte")}
    category = {
        "anyOf": [
            {"type": "string"},
            _operators({"eq": {"type": "string"}, "in": _nonempty({"type": "string"})}),
        ]
    }
    numeric = {"anyOf": [number, _operators({"eq": number, "in": _nonempty(number), **ranges})]}
    properties = {name: category for name in sorted(view.categories)}
    properties.update({name: numeric for name in sorted(view.numbers)})
    return _closed(properties) | {"description": "all must hold; an absent attribute never does"}


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _operators(properties: dict[str, Any]) -> dict[str, Any]:
    return _closed(properties) | {"minProperties": 1}


def _nonempty(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": 1}


def request_example(search: SimilarSearch) -> dict[str, Any]:
    view = next(iter(search.views.values()))
    return {"view": view.name, "vector": [0.0] * view.dimension, "k": 5}


RESPONSE_SCHEMA: dict[str, Any] = _closed(
    {
        "view": {"type": "string"},
        "region": {"type": "string"},
        "model_version": {"type": "string"},
        "index_version": {"type": "integer", "description": "changes applied to the index"},
        "store": {"type": "string", "description": "the index that answered, index-<region>"},
        "strategy": {"enum": [s.value for s in Strategy]},
        "hybrid": {"type": "boolean"},
        "results": {
            "type": "array",
            "items": _closed({"id": {"type": "string"}, "score": {"type": "number"}}),
        },
        "request_id": {"type": "string"},
    }
)
RESPONSE_SCHEMA["required"] = list(RESPONSE_SCHEMA["properties"])
