"""A decoded request body becomes a read plan: which store keys to fetch, which values to build.

The catalog is indexed once per replica (:class:`CatalogIndex`); per request only dictionary
lookups and entity-id validation remain. Invariants:

- every entity id goes through :func:`features.keys.encode_entity_id` with its entity's
  ``max_id_bytes`` before it becomes part of a key, so no id can address another key, view, version
  or tenant (refused ids raise :class:`~features.exceptions.InvalidEntityId`, a 422);
- a plan never holds more than ``limits.max_entities`` ids nor ``limits.max_features`` refs;
- keys are deduplicated: an id asked twice, or a view used by several refs, is fetched once;
- during a rollout (``features.rollout``) each entity id is answered by exactly one version of each
  view, the one :class:`Serving` picks by the id's canary bucket, and a ref is served only when
  every version answering some entity has that feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from features.blocks import BlockLayout
from features.catalog import Catalog, Entity, Feature, FeatureView, Rollout
from features.durations import to_ms
from features.errors import CatalogError
from features.keys import encode_entity_id, view_prefix
from features.rollout import BUCKETS, canary_bucket
from serve_apps.config import Limits
from serve_apps.exceptions import BadRequest, TooManyEntities


@dataclass(frozen=True, slots=True)
class ViewInfo:
    """A view with what serving needs precomputed: block layout, key prefix, entity limits."""

    view: FeatureView
    entity: Entity
    layout: BlockLayout
    prefix: str
    # This version's own definition of each feature, by name: during a rollout a ref resolved
    # against the candidate is evaluated with the definition of the version that answers.
    features: Mapping[str, Feature]

    @classmethod
    def of(cls, catalog: Catalog, view: FeatureView, tenant: str) -> ViewInfo:
        entity = catalog.entity(view.entity)
        prefix = view_prefix(tenant, view.name, view.version)
        by_name = {f.name: f for f in view.features}
        return cls(view, entity, BlockLayout.for_view(view), prefix, by_name)


@dataclass(frozen=True, slots=True)
class Serving:
    """Which version of one view answers for which entity: ``base`` for every entity, except,
    while a canary runs, ``canary`` for those whose bucket is below ``share``."""

    base: ViewInfo
    canary: ViewInfo | None = None
    share: int = 0

    def answering(self, ids: Sequence[str]) -> tuple[ViewInfo, ...]:
        """The version answering each id, in order."""
        canary = self.canary
        if canary is None:
            return (self.base,) * len(ids)
        name, share, base = self.base.view.name, self.share, self.base
        return tuple(canary if canary_bucket(name, i) < share else base for i in ids)

    @classmethod
    def of(cls, catalog: Catalog, candidate: ViewInfo, tenant: str) -> Serving:
        rollout = catalog.rollout(candidate.view.name)
        if rollout is None or rollout.share == BUCKETS:
            return cls(candidate)
        previous = ViewInfo.of(catalog, rollout.previous, tenant)
        if rollout.share == 0:
            return cls(previous)
        return cls(previous, candidate, rollout.share)

    def versions(self) -> tuple[ViewInfo, ...]:
        return (self.base,) if self.canary is None else (self.base, self.canary)


@dataclass(frozen=True, slots=True)
class FeatureRef:
    ref: str  # "view:feature"
    info: ViewInfo
    feature: Feature


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """``ids[entity]`` are the requested ids (validated, request order, no duplicates);
    ``keys`` the distinct store keys to fetch, in a stable order; ``answering[view]`` the version
    answering each id of the view's entity (aligned with ``ids``)."""

    refs: tuple[FeatureRef, ...]
    ids: Mapping[str, tuple[str, ...]]
    keys: tuple[str, ...]
    deadline_ms: int
    answering: Mapping[str, tuple[ViewInfo, ...]]


class CatalogIndex:
    """Lookups over one validated catalog; immutable after construction."""

    def __init__(self, catalog: Catalog, tenant: str) -> None:
        self.catalog = catalog
        self.tenant = tenant
        # Refs resolve against the catalog's view (a rollout's candidate); ``serving`` says which
        # version answers for each entity.
        self.views = {v.name: ViewInfo.of(catalog, v, tenant) for v in catalog.views}
        self.serving = {n: Serving.of(catalog, i, tenant) for n, i in self.views.items()}
        self.by_join_key = {e.join_key: e for e in catalog.entities}
        self._refs: dict[str, FeatureRef] = {}
        self._unserved: dict[str, str] = {}
        for info in self.views.values():
            answering = self.serving[info.view.name].versions()
            for feature in info.view.features:
                ref = f"{info.view.name}:{feature.name}"
                lacking = [a.view.version for a in answering if feature.name not in a.features]
                if lacking:
                    self._unserved[ref] = (
                        f"{ref} is not served while {info.view.name} rolls out: version "
                        f"{lacking[0]} still answers for some entities and has no such feature"
                    )
                else:
                    self._refs[ref] = FeatureRef(ref, info, feature)

    def ref(self, ref: object) -> FeatureRef:
        found = self._refs.get(ref) if isinstance(ref, str) else None
        if found is None:
            if isinstance(ref, str) and ref in self._unserved:
                raise BadRequest("feature_not_served", self._unserved[ref])
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
            "views": [_describe_view(i, self.catalog.rollout(n)) for n, i in self.views.items()],
            "services": [
                {"name": s.name, "features": list(s.features)} for s in self.catalog.services
            ],
        }


def _describe_view(info: ViewInfo, rollout: Rollout | None) -> dict[str, Any]:
    view = info.view
    return {
        "name": view.name,
        "version": view.version,
        "rollout": None
        if rollout is None
        else {"previous": rollout.previous.version, "share": rollout.share},
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
    index: CatalogIndex,
    refs: Sequence[FeatureRef],
    ids: Mapping[str, tuple[str, ...]],
    limits: Limits,
    deadline_ms: object,
) -> ReadPlan:
    """Check the ids cover every ref's entity and the caps hold; pick the version answering each
    id and list the keys to fetch."""
    total = sum(len(v) for v in ids.values())
    if total > limits.max_entities:
        raise TooManyEntities(total, limits.max_entities)
    keys: dict[str, None] = {}
    answering: dict[str, tuple[ViewInfo, ...]] = {}
    views = {ref.info.view.name: ref for ref in refs}
    for name, ref in views.items():
        entity_ids = ids.get(ref.info.entity.name)
        if entity_ids is None:
            raise BadRequest("missing_entity", f"{ref.ref} needs ids of {ref.info.entity.name!r}")
        max_id_bytes = ref.info.entity.max_id_bytes
        infos = answering[name] = index.serving[name].answering(entity_ids)
        for info, entity_id in zip(infos, entity_ids, strict=True):
            keys.setdefault(info.prefix + encoded_id(entity_id, max_id_bytes))
    return ReadPlan(tuple(refs), ids, tuple(keys), _deadline(deadline_ms, limits), answering)


def _deadline(raw: object, limits: Limits) -> int:
    if raw is None:
        return limits.default_deadline_ms
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise BadRequest("bad_deadline", "deadline_ms must be a positive number")
    return int(min(raw, limits.max_deadline_ms))
