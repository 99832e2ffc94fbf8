"""A decoded request body becomes a read plan: which store keys to fetch, which values to build.

The catalog is indexed once per replica (:class:`CatalogIndex`); per request only dictionary
lookups and entity-id validation remain. Invariants:

- every entity id goes through :func:`features.keys.encode_entity_id` with its entity's
  ``max_id_bytes`` before it becomes part of a key, so no id can address another key, view, version
  or tenant (refused ids raise :class:`~features.exceptions.InvalidEntityId`, a 422);
- a plan never holds more than ``limits.max_entities`` ids nor ``limits.max_features`` refs;
- keys are deduplicated: an id asked twice, or a view used by several refs, is fetched once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features.blocks import BlockLayout
from features.catalog import Catalog, Entity, Feature, FeatureView
from features.durations import to_ms
from features.errors import CatalogError
from features.keys import encode_entity_id, view_prefix
from serve_apps.config import Limits
from serve_apps.exceptions import BadRequest, TooManyEntities


@dataclass(frozen=True, slots=True)
class ViewInfo:
    """A view with what serving needs precomputed: block layout, key prefix, entity limits."""

    view: FeatureView
    entity: Entity
    layout: BlockLayout
    prefix: str


@dataclass(frozen=True, slots=True)
class FeatureRef:
    ref: str  # "view:feature"
    info: ViewInfo
    feature: Feature


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """``ids[entity]`` are the requested ids (validated, request order, no duplicates);
    ``keys`` the distinct store keys to fetch, in a stable order."""

    refs: tuple[FeatureRef, ...]
    ids: Mapping[str, tuple[str, ...]]
    keys: tuple[str, ...]
    deadline_ms: int

    def key(self, info: ViewInfo, entity_id: str) -> str:
        return info.prefix + encoded_id(entity_id, info.entity.max_id_bytes)


class CatalogIndex:
    """Lookups over one validated catalog; immutable after construction."""

    def __init__(self, catalog: Catalog, tenant: str) -> None:
        self.catalog = catalog
        self.tenant = tenant
        self.views: dict[str, ViewInfo] = {}
        for view in catalog.views:
            self.views[view.name] = ViewInfo(
                view,
                catalog.entity(view.entity),
                BlockLayout.for_view(view),
                view_prefix(tenant, view.name, view.version),
            )
        self.by_join_key = {e.join_key: e for e in catalog.entities}
        self._refs: dict[str, FeatureRef] = {}
        for info in self.views.values():
            for feature in info.view.features:
                ref = f"{info.view.name}:{feature.name}"
                self._refs[ref] = FeatureRef(ref, info, feature)

    def ref(self, ref: object) -> FeatureRef:
        found = self._refs.get(ref) if isinstance(ref, str) else None
        if found is None:
            raise BadRequest("unknown_feature", f"unknown feature reference {ref!r}")
        return found

    def service_refs(self, name: object) -> tuple[str, ...]:
        if not isinstance(name, str):
            raise BadRequest("unknown_feature_service", "feature_service must be a string")
        try:
            return self.catalog.service(name).features
        except CatalogError:
            raise BadRequest("unknown_feature_service", f"unknown service {name!r}") from None

    def freshness_targets_ms(self) -> dict[str, int]:
        """Each view's freshness target in milliseconds, by view name."""
        return {name: to_ms(info.view.freshness_target) for name, info in self.views.items()}

    def describe(self) -> dict[str, Any]:
        """The catalog as served by ``GET /v1/catalog``."""
        return {
            "entities": [
                {"name": e.name, "join_key": e.join_key, "max_id_bytes": e.max_id_bytes}
                for e in self.catalog.entities
            ],
            "views": [_describe_view(info) for info in self.views.values()],
            "services": [
                {"name": s.name, "features": list(s.features)} for s in self.catalog.services
            ],
        }


def _describe_view(info: ViewInfo) -> dict[str, Any]:
    view = info.view
    return {
        "name": view.name,
        "version": view.version,
        "entity": view.entity,
        "ttl_ms": view.ttl_ms,
        "freshness_target_ms": to_ms(view.freshness_target),
        "features": [
            {
                "name": f.name,
                "ref": f"{view.name}:{f.name}",
                "aggregation": f.aggregation.value,
                "window_ms": f.window_ms,
                "default": f.default,
            }
            for f in view.features
        ],
    }


def resolve_refs(index: CatalogIndex, body: Mapping[str, Any], limits: Limits) -> list[FeatureRef]:
    """The refs named by ``features`` or ``feature_service`` (exactly one of them)."""
    features, service = body.get("features"), body.get("feature_service")
    if (features is None) == (service is None):
        raise BadRequest("bad_features", "give exactly one of 'features' and 'feature_service'")
    names = index.service_refs(service) if service is not None else features
    if not isinstance(names, list | tuple) or not names:
        raise BadRequest("bad_features", "'features' must be a non-empty list")
    if len(names) > limits.max_features:
        raise BadRequest("too_many_features", f"more than {limits.max_features} features")
    refs: dict[str, FeatureRef] = {}
    for name in names:
        ref = index.ref(name)  # raises for non-strings and unknown refs
        refs.setdefault(ref.ref, ref)
    return list(refs.values())


_ENCODED: dict[tuple[str, int], str] = {}


def encoded_id(entity_id: str, max_id_bytes: int) -> str:
    """:func:`encode_entity_id`, remembered (it checks every character; ids repeat a lot).
    Refused ids are never remembered, so they raise every time."""
    key = (entity_id, max_id_bytes)
    found = _ENCODED.get(key)
    if found is None:
        found = encode_entity_id(entity_id, max_id_bytes=max_id_bytes)
        if len(_ENCODED) >= 100_000:
            _ENCODED.clear()
        _ENCODED[key] = found
    return found


def validated_ids(entity: Entity, raw: object) -> tuple[str, ...]:
    """The ids of one entity, deduplicated in order; every id checked by the key encoder."""
    if not isinstance(raw, list) or not raw:
        raise BadRequest("bad_entities", f"ids of {entity.name!r} must be a non-empty list")
    ids: dict[str, None] = {}
    for item in raw:
        value = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(value, str):
            raise BadRequest("invalid_entity_id", f"an id of {entity.name!r} is not a string")
        encoded_id(value, entity.max_id_bytes)  # raises InvalidEntityId
        ids.setdefault(value)
    return tuple(ids)


def build_plan(
    refs: Sequence[FeatureRef],
    ids: Mapping[str, tuple[str, ...]],
    limits: Limits,
    deadline_ms: object,
) -> ReadPlan:
    """Check the ids cover every ref's entity and the caps hold; list the keys to fetch."""
    total = sum(len(v) for v in ids.values())
    if total > limits.max_entities:
        raise TooManyEntities(total, limits.max_entities)
    keys: dict[str, None] = {}
    views = {ref.info.view.name: ref for ref in refs}
    for ref in views.values():
        entity_ids = ids.get(ref.info.entity.name)
        if entity_ids is None:
            raise BadRequest("missing_entity", f"{ref.ref} needs ids of {ref.info.entity.name!r}")
        for entity_id in entity_ids:
            keys.setdefault(ref.info.prefix + encoded_id(entity_id, ref.info.entity.max_id_bytes))
    return ReadPlan(tuple(refs), ids, tuple(keys), _deadline(deadline_ms, limits))


def _deadline(raw: object, limits: Limits) -> int:
    if raw is None:
        return limits.default_deadline_ms
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise BadRequest("bad_deadline", "deadline_ms must be a positive number")
    return int(min(raw, limits.max_deadline_ms))
