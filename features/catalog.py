"""The declarative feature catalog: entities, event sources, feature views and feature services.

All models are frozen pydantic models that refuse unknown keys. A :class:`Catalog` that exists is
valid: every cross reference resolves, every column exists with a suitable type, names are unique,
every window has a tile (``tiles.tile_ms_for``) and every view's ``ttl`` covers its longest
window. Errors raise :class:`~features.errors.CatalogError` whose ``field`` is a dotted path such as
``views[user_spend].features[spend_sum_1h].window``; :meth:`Catalog.from_dict` also converts
pydantic's own validation errors into that form.

Durations are written as strings (``"5m"``, ``"24h"``, ``"7d"``; see ``features.durations``).
A view whose entity's join key is not its source's Kafka key is allowed: one entity's events then
arrive on several partitions, each writes partial tiles, and readers merge them
(``features.tile_groups``). Such a view may not hold a ``cusum`` feature, whose sequential state
cannot merge across partitions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.durations import Duration, to_ms
from features.errors import CatalogError
from features.keys import NAME_PATTERN
from features.tiles import TileSpec, tile_ms_for

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
"""Catalog names are key-safe identifiers (they appear in online-store keys)."""

FieldName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Topic = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
JsonScalar = None | bool | int | float | str


class FieldProblem(ValueError):
    """A model-level check that blames one field; ``from_dict`` appends ``field`` to the path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class FieldType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"


NUMERIC = frozenset({FieldType.INT, FieldType.FLOAT})


class Aggregation(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    DISTINCT_COUNT = "distinct_count"
    CUSUM = "cusum"
    LAST_N = "last_n"


UNWINDOWED = frozenset({Aggregation.LAST, Aggregation.CUSUM})
"""Aggregations with per-entity state over all time, never tiled."""

_COLUMN_TYPES: dict[Aggregation, frozenset[FieldType]] = {
    Aggregation.SUM: NUMERIC,
    Aggregation.MEAN: NUMERIC,
    Aggregation.MIN: NUMERIC,
    Aggregation.MAX: NUMERIC,
    Aggregation.CUSUM: NUMERIC,
    Aggregation.DISTINCT_COUNT: frozenset({FieldType.STRING, FieldType.INT}),
    Aggregation.LAST: frozenset(FieldType),
    Aggregation.LAST_N: frozenset(FieldType),
}
MAX_LAST_N = 100


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Entity(_Model):
    """What features are about. ``join_key`` is the event field holding the entity id."""

    name: Name
    join_key: FieldName
    max_id_bytes: int = Field(default=128, ge=1, le=1024)


class EventSource(_Model):
    """A Kafka topic of JSON events. Lateness rule: an event is late (refused) when
    ``event_time < watermark - allowed_lateness`` with ``watermark = max event time seen -
    out_of_orderness``; an event more than ``max_future_skew`` ahead of the clock is refused."""

    name: Name
    topic: Topic
    partitions: int = Field(ge=1, le=10_000)
    key_field: FieldName
    event_time_field: FieldName
    event_type_field: FieldName
    event_types: frozenset[str] = Field(min_length=1)
    fields: dict[FieldName, FieldType] = Field(min_length=1)
    out_of_orderness: Duration
    allowed_lateness: Duration
    max_future_skew: Duration
    max_payload_bytes: int = Field(ge=64, le=1_048_576)

    @model_validator(mode="after")
    def _check(self) -> Self:
        for attr, kind in (
            ("key_field", FieldType.STRING),
            ("event_time_field", FieldType.INT),
            ("event_type_field", FieldType.STRING),
        ):
            name = getattr(self, attr)
            if self.fields.get(name) != kind:
                raise FieldProblem(attr, f"{name!r} must be a {kind} field of the source")
        for attr in ("out_of_orderness", "allowed_lateness", "max_future_skew"):
            if getattr(self, attr) < timedelta(0):
                raise FieldProblem(attr, "must not be negative")
        return self

    @property
    def out_of_orderness_ms(self) -> int:
        return to_ms(self.out_of_orderness)

    @property
    def allowed_lateness_ms(self) -> int:
        return to_ms(self.allowed_lateness)

    @property
    def max_future_skew_ms(self) -> int:
        return to_ms(self.max_future_skew)


class Feature(_Model):
    """One aggregate of one source column. ``window`` is ``None`` exactly for ``last``/``cusum``;
    ``column`` is ``None`` exactly for ``count``. Parameters apply only to their aggregation."""

    name: Name
    aggregation: Aggregation
    column: FieldName | None = None
    window: Duration | None = None
    default: JsonScalar = None
    hll_precision: int = Field(default=14, ge=4, le=16)
    cusum_drift: float = Field(default=0.75, ge=0, allow_inf_nan=False)
    cusum_threshold: float = Field(default=15.0, gt=0, allow_inf_nan=False)
    cusum_warmup: int = Field(default=30, ge=2)
    n: int | None = Field(default=None, ge=1, le=MAX_LAST_N)

    @model_validator(mode="after")
    def _check(self) -> Self:
        agg = self.aggregation
        if (self.column is None) != (agg is Aggregation.COUNT):
            need = "must be omitted for count" if agg is Aggregation.COUNT else "is required"
            raise FieldProblem("column", f"{need} ({agg})")
        if agg in UNWINDOWED and self.window is not None:
            raise FieldProblem("window", f"{agg} is not windowed; omit the window")
        if agg not in UNWINDOWED and self.window is None:
            raise FieldProblem("window", f"{agg} needs a window")
        if self.window is not None and self.window <= timedelta(0):
            raise FieldProblem("window", "must be positive")
        if (self.n is None) == (agg is Aggregation.LAST_N):
            raise FieldProblem("n", "is required for last_n and only for last_n")
        if isinstance(self.default, float) and not math.isfinite(self.default):
            raise FieldProblem("default", "must be finite")
        return self

    @property
    def window_ms(self) -> int | None:
        return None if self.window is None else to_ms(self.window)

    @property
    def tile_spec(self) -> TileSpec | None:
        """The window's tile (``None`` for unwindowed features); raises if it has none."""
        return None if self.window is None else TileSpec.for_window(self.window)


class FeatureView(_Model):
    """A versioned group of features of one entity computed from one source."""

    name: Name
    version: int = Field(ge=1)
    entity: Name
    source: Name
    features: tuple[Feature, ...] = Field(min_length=1)
    ttl: Duration
    freshness_target: Duration

    @model_validator(mode="after")
    def _check(self) -> Self:
        for attr in ("ttl", "freshness_target"):
            if getattr(self, attr) <= timedelta(0):
                raise FieldProblem(attr, "must be positive")
        return self

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise CatalogError(f"no feature {name!r}", field=f"views[{self.name}].features")

    def key_field(self, catalog: Catalog) -> str:
        """The event field holding this view's entity id (the entity's join key)."""
        return catalog.entity(self.entity).join_key

    @property
    def ttl_ms(self) -> int:
        return to_ms(self.ttl)


class FeatureService(_Model):
    """A named set of features served together, as ``"view:feature"`` references."""

    name: Name
    features: tuple[str, ...] = Field(min_length=1)


class Rollout(_Model):
    """A view moving to a new version. The catalog's view of this name is the *candidate*;
    ``previous`` is the definition it replaces, still computed from the same stream, and serving
    every entity outside the candidate's ``share`` (percent of entities, by a sticky hash of the
    entity id, ``features.rollout.canary_bucket``). 0 is shadow (computed, read by nobody), 100
    promoted (kept computed so that a rollback is instant until it is retired)."""

    view: Name
    previous: FeatureView
    share: int = Field(default=0, ge=0, le=100)


class Catalog(_Model):
    """A validated catalog. Lookups raise :class:`CatalogError` for unknown names.
    ``rollouts`` is registry state (``freshline rollout``), never part of a repository."""

    entities: tuple[Entity, ...] = ()
    sources: tuple[EventSource, ...] = ()
    views: tuple[FeatureView, ...] = ()
    services: tuple[FeatureService, ...] = ()
    rollouts: tuple[Rollout, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalog:
        """Build and validate; every failure is a CatalogError naming the offending field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise CatalogError(_message(first), field=_path(data, first)) from None

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_unique(self)
        for view in self.views:
            _check_view(self, view)
        for service in self.services:
            _check_service(self, service)
        for rollout in self.rollouts:
            _check_rollout(self, rollout)
        return self

    @property
    def computed_views(self) -> tuple[FeatureView, ...]:
        """Every view version the pipeline computes: the views, then each rollout's previous."""
        return self.views + tuple(r.previous for r in self.rollouts)

    def rollout(self, view: str) -> Rollout | None:
        """The rollout of ``view`` in progress, if any."""
        return next((r for r in self.rollouts if r.view == view), None)

    @cached_property
    def _index(self) -> dict[str, dict[str, Any]]:
        # Computed once per (immutable) catalog; cached_property writes __dict__ directly, which
        # frozen pydantic models allow.
        return {kind: {item.name: item for item in getattr(self, kind)} for kind in _KINDS}

    def _lookup(self, kind: str, name: str) -> Any:
        try:
            return self._index[kind][name]
        except KeyError:
            raise CatalogError(f"unknown {_KINDS[kind]} {name!r}", field=kind) from None

    def entity(self, name: str) -> Entity:
        entity: Entity = self._lookup("entities", name)
        return entity

    def source(self, name: str) -> EventSource:
        source: EventSource = self._lookup("sources", name)
        return source

    def view(self, name: str) -> FeatureView:
        view: FeatureView = self._lookup("views", name)
        return view

    def service(self, name: str) -> FeatureService:
        service: FeatureService = self._lookup("services", name)
        return service

    def resolve(self, ref: str) -> tuple[FeatureView, Feature]:
        """The view and feature of a ``"view:feature"`` reference."""
        view_name, sep, feature_name = ref.partition(":")
        if not sep or not view_name or not feature_name or ":" in feature_name:
            raise CatalogError(f"feature reference {ref!r} is not 'view:feature'", field="ref")
        view = self.view(view_name)
        for feature in view.features:
            if feature.name == feature_name:
                return view, feature
        raise CatalogError(f"view {view_name!r} has no feature {feature_name!r}", field="ref")

    def feature(self, ref: str) -> Feature:
        """The feature of a ``"view:feature"`` reference."""
        return self.resolve(ref)[1]


_KINDS = {"entities": "entity", "sources": "source", "views": "view", "services": "service"}


def _check_unique(catalog: Catalog) -> None:
    for kind in _KINDS:
        seen: set[str] = set()
        for item in getattr(catalog, kind):
            if item.name in seen:
                raise CatalogError("duplicate name", field=f"{kind}[{item.name}].name")
            seen.add(item.name)


def _check_view(catalog: Catalog, view: FeatureView, at: str = "") -> None:
    at = at or f"views[{view.name}]"
    entity = catalog._index["entities"].get(view.entity)
    if entity is None:
        raise CatalogError(f"unknown entity {view.entity!r}", field=f"{at}.entity")
    source = catalog._index["sources"].get(view.source)
    if source is None:
        raise CatalogError(f"unknown source {view.source!r}", field=f"{at}.source")
    if source.fields.get(entity.join_key) is not FieldType.STRING:
        raise CatalogError(
            f"source {source.name!r} has no string field {entity.join_key!r} (join key of "
            f"entity {entity.name!r})",
            field=f"{at}.entity",
        )
    names: set[str] = set()
    longest = timedelta(0)
    for feature in view.features:
        fat = f"{at}.features[{feature.name}]"
        if feature.name in names:
            raise CatalogError("duplicate feature name", field=f"{fat}.name")
        names.add(feature.name)
        _check_column(source, feature, fat)
        if feature.aggregation is Aggregation.CUSUM and entity.join_key != source.key_field:
            raise CatalogError(
                f"cusum is sequential per entity and cannot merge partial states, but view "
                f"{view.name!r} is keyed by {entity.join_key!r} while source {source.name!r} is "
                f"partitioned by {source.key_field!r}",
                field=f"{fat}.aggregation",
            )
        if feature.window is not None:
            try:
                tile_ms_for(to_ms(feature.window))
            except CatalogError as exc:
                raise CatalogError(str(exc), field=f"{fat}.window") from None
            longest = max(longest, feature.window)
    if view.ttl < longest:
        raise CatalogError(f"shorter than the longest window ({longest})", field=f"{at}.ttl")


def _check_column(source: EventSource, feature: Feature, at: str) -> None:
    if feature.column is None:
        return
    kind = source.fields.get(feature.column)
    if kind is None:
        raise CatalogError(
            f"source {source.name!r} has no field {feature.column!r}", field=f"{at}.column"
        )
    allowed = _COLUMN_TYPES[feature.aggregation]
    if kind not in allowed:
        wanted = " or ".join(sorted(allowed))
        raise CatalogError(
            f"{feature.aggregation} needs a {wanted} column, {feature.column!r} is {kind}",
            field=f"{at}.column",
        )


def _check_service(catalog: Catalog, service: FeatureService) -> None:
    seen: set[str] = set()
    for ref in service.features:
        at = f"services[{service.name}].features[{ref}]"
        if ref in seen:
            raise CatalogError("duplicate feature reference", field=at)
        seen.add(ref)
        try:
            catalog.resolve(ref)
        except CatalogError as exc:
            raise CatalogError(str(exc).partition(": ")[2] or str(exc), field=at) from None


def _check_rollout(catalog: Catalog, rollout: Rollout) -> None:
    at = f"rollouts[{rollout.view}]"
    if sum(r.view == rollout.view for r in catalog.rollouts) > 1:
        raise CatalogError("a view has one rollout at a time", field=f"{at}.view")
    candidate = catalog._index["views"].get(rollout.view)
    if candidate is None:
        raise CatalogError(f"unknown view {rollout.view!r}", field=f"{at}.view")
    previous = rollout.previous
    if previous.name != rollout.view:
        raise CatalogError(f"must be a version of {rollout.view!r}", field=f"{at}.previous.name")
    if previous.version == candidate.version:
        raise CatalogError(
            f"equals the candidate's version {candidate.version}", field=f"{at}.previous.version"
        )
    if previous.entity != candidate.entity:
        raise CatalogError(
            f"a new version may change how view {rollout.view!r} is computed, not its entity "
            f"({previous.entity!r} -> {candidate.entity!r})",
            field=f"{at}.previous.entity",
        )
    _check_view(catalog, previous, f"{at}.previous")
    if rollout.share == 100:
        return
    for service in catalog.services:
        for ref in service.features:
            view_name, _, feature = ref.partition(":")
            if view_name == rollout.view and all(f.name != feature for f in previous.features):
                raise CatalogError(
                    f"{rollout.view} v{previous.version} still serves {100 - rollout.share} % of "
                    f"entities and has no feature {feature!r}: promote v{candidate.version} "
                    "(share 100) before a service uses it",
                    field=f"services[{service.name}].features[{ref}]",
                )


def _message(error: Mapping[str, Any]) -> str:
    problem = error.get("ctx", {}).get("error")
    if isinstance(problem, FieldProblem):
        return problem.message
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def _path(data: object, error: Mapping[str, Any]) -> str:
    """Dotted path of a pydantic error, with list indices replaced by the item's ``name``."""
    parts: list[str] = []
    node: object = data
    for loc in error.get("loc", ()):
        if isinstance(loc, int) and parts:
            fits = isinstance(node, list | tuple) and -len(node) <= loc < len(node)
            node = node[loc] if fits else None  # type: ignore[index]
            name = node.get("name") if isinstance(node, Mapping) else None
            parts[-1] += f"[{name if isinstance(name, str) and name else loc}]"
        else:
            parts.append(str(loc))
            node = node.get(loc) if isinstance(node, Mapping) else None
    problem = error.get("ctx", {}).get("error")
    if isinstance(problem, FieldProblem):
        parts.append(problem.field)
    return ".".join(parts) or "catalog"
