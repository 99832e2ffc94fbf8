"""Embeddings, pure: the view definition, event validation, metadata filters, search strategy, RRF.

An embedding view is one similarity space: vectors of one ``dimension`` produced by one model, in
several versions side by side (each version gets its own index). Events arrive as JSON::

    {"id": "item_7", "model": "item2vec", "version": "v3", "op": "upsert", "time": 1700000000000,
     "vector": [0.1, ...], "categories": {"colour": "red"}, "numbers": {"price": 12.5},
     "tokens": ["leather", "boot"]}

A delete carries ``"op": "delete"`` and no vector. :class:`EmbeddingValidator` checks an event
in a fixed order, so every bad event gets exactly one, predictable reason (the dead-letter
``reason`` header, the same header layout as ``actors.dlq``):

1. ``oversized``              more than the view's ``max_payload_bytes``
2. ``bad_json``               not a JSON object (``non_finite`` if it only parses with NaN/Infinity)
3. ``missing_field``          ``id``, ``model``, ``version``, ``op`` or ``time`` absent or null, or
                              an upsert without ``vector``
4. ``wrong_type``             a field of another JSON type, an ``op`` other than upsert/delete,
                              an attribute value of the wrong kind, more than ``max_tokens`` tokens
5. ``bad_key``                an entity id that is empty, too long or holds control characters
6. ``unknown_model_version``  a model other than the view's, or a version it does not declare
7. ``unknown_attribute``      a category or number the view does not declare (filters could never
                              see it, so it is refused rather than silently dropped)
8. ``wrong_dimension``        a vector whose length is not the view's dimension
9. ``non_finite``             a vector component that is NaN or infinite, also after float32 cast,
                              or beyond ``MAX_COMPONENT`` (its distances would overflow)
10. ``future``                an event time beyond ``now + max_future_skew`` (``now`` is injected)

Filters, search strategy and rank fusion over these events live in ``features.embedding_search``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Self

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.catalog import FieldName, FieldProblem, Name, Topic
from features.durations import Duration, to_ms
from features.errors import DataError, EventRejected, RejectReason

Version = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")]

MAX_COMPONENT = 1e15
"""The largest vector component accepted, on ingest and in queries: squared distances and dot
products of 4096 such components still fit in float32, so no score overflows to inf or NaN."""
# Faiss's k-means warns below 39 training points per centroid: fewer gives poor centroids.
MIN_POINTS_PER_LIST = 39


class Metric(StrEnum):
    L2 = "l2"  # squared Euclidean distance, smaller is closer
    INNER_PRODUCT = "ip"  # dot product, larger is closer (cosine for unit vectors)


class IndexKind(StrEnum):
    IVF_FLAT = "ivf_flat"
    HNSW = "hnsw"


class EmbeddingView(BaseModel):
    """One similarity space. ``serving_version`` is the model version reads go to; every version
    in ``model_versions`` is accepted on ingest and gets its own index."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    topic: Topic
    dimension: int = Field(ge=1, le=4096)
    metric: Metric = Metric.L2
    index: IndexKind = IndexKind.IVF_FLAT
    model: Name
    model_versions: tuple[Version, ...] = Field(min_length=1)
    serving_version: Version
    categories: frozenset[FieldName] = frozenset()
    numbers: frozenset[FieldName] = frozenset()
    max_tokens: int = Field(default=16, ge=0, le=256)
    # IVF: inverted lists and how many a query visits (recall against latency).
    nlist: int = Field(default=64, ge=1, le=65_536)
    nprobe: int = Field(default=16, ge=1)
    # HNSW: neighbours per node and the search beam.
    hnsw_m: int = Field(default=32, ge=4, le=128)
    hnsw_ef_search: int = Field(default=64, ge=1)
    max_payload_bytes: int = Field(default=262_144, ge=64, le=4_194_304)
    max_id_bytes: int = Field(default=128, ge=1, le=1024)
    max_future_skew: Duration = timedelta(minutes=5)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(set(self.model_versions)) != len(self.model_versions):
            raise FieldProblem("model_versions", "versions must be unique")
        if self.serving_version not in self.model_versions:
            raise FieldProblem("serving_version", "must be one of model_versions")
        if self.categories & self.numbers:
            raise FieldProblem("numbers", "an attribute is either a category or a number")
        if self.nprobe > self.nlist:
            raise FieldProblem("nprobe", "must not exceed nlist")
        if self.max_future_skew < timedelta(0):
            raise FieldProblem("max_future_skew", "must not be negative")
        return self

    @property
    def train_size(self) -> int:
        """Vectors an IVF index needs before it is trained; below it the index is exact (flat)."""
        return MIN_POINTS_PER_LIST * self.nlist

    @property
    def max_future_skew_ms(self) -> int:
        return to_ms(self.max_future_skew)


INDEX_ACTOR_NAMESPACE = "freshline-embeddings"
"""The Ray namespace of the index actors: they register in it, Serve looks them up in it."""


def index_actor_name(view: str, region: str, version: str) -> str:
    """The Ray actor name of the index of ``view`` at model ``version`` in ``region``: one actor
    per (region, view, version), so a version's index is built, restarted and dropped alone."""
    return f"fl-embeddings-{region}-{view}-{version}"


def catalog_actor_name(view: str) -> str:
    """The Ray actor name of ``view``'s version catalog (``actors.embedding_versions``), which
    Serve replicas follow to learn of version changes."""
    return f"fl-embeddings-catalog-{view}"


def vector_key(view: str, version: str, entity_id: str) -> str:
    """The Redis key of an entity's current vector (float32, little-endian) in its region."""
    return f"{vector_marker_key(view, version)}:{entity_id}"


def vector_marker_key(view: str, version: str) -> str:
    """The key saying whether a region's Redis holds every vector of ``view`` at ``version``
    (``regions.redis_vectors``); no entity's key equals it, as entity ids are never empty."""
    return f"fl:emb:{view}:{version}"


# --- Events --------------------------------------------------------------------------------------


class EmbeddingRejected(EventRejected):
    """One embedding event refused by validation: dead-lettered with the same headers as any
    refused event (``actors.dlq``), never fatal to the consumer."""


class IndexNotReady(DataError):
    """The named version's index exists nowhere yet, or is still restoring or catching up."""


class UnknownModelVersion(DataError):
    """A search named a model version that has no index (not declared, or not built yet)."""


class Op(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class EmbeddingEvent:
    """A valid event: ``vector`` is float32 of the view's dimension, ``None`` for a delete."""

    entity_id: str
    model_version: str
    op: Op
    event_time_ms: int
    vector: NDArray[np.float32] | None
    categories: Mapping[str, str]
    numbers: Mapping[str, float]
    tokens: tuple[str, ...]


_REQUIRED: tuple[tuple[str, type], ...] = (
    ("id", str),
    ("model", str),
    ("version", str),
    ("op", str),
    ("time", int),
)
R = RejectReason


class EmbeddingValidator:
    """Validates the events of one view. Never raises anything but ``EmbeddingRejected``."""

    def __init__(self, view: EmbeddingView, now_ms: Callable[[], int]) -> None:
        self._view = view
        self._now_ms = now_ms
        self._versions = frozenset(view.model_versions)

    def validate(self, raw: bytes | None) -> EmbeddingEvent:
        view = self._view
        if raw is None:
            raise EmbeddingRejected(R.BAD_JSON, "the record has no value")
        if len(raw) > view.max_payload_bytes:
            raise EmbeddingRejected(R.OVERSIZED, f"{len(raw)} bytes > {view.max_payload_bytes}")
        event = _parse(raw)
        for name, kind in _REQUIRED:
            _check_type(event, name, kind)
        op = event["op"]
        if op not in Op.__members__.values():
            raise EmbeddingRejected(R.WRONG_TYPE, f"op must be upsert or delete, got {op[:16]!r}")
        if op == Op.UPSERT and event.get("vector") is None:
            raise EmbeddingRejected(R.MISSING_FIELD, "an upsert needs a vector")
        categories, numbers, tokens = self._attributes(event)
        _check_key(event["id"], view.max_id_bytes)
        if event["model"] != view.model or event["version"] not in self._versions:
            raise EmbeddingRejected(
                R.UNKNOWN_MODEL_VERSION, f"{event['model'][:64]}/{event['version'][:32]}"
            )
        self._check_declared(categories, numbers)
        vector = self._vector(event.get("vector")) if op == Op.UPSERT else None
        limit = self._now_ms() + view.max_future_skew_ms
        if event["time"] > limit:
            raise EmbeddingRejected(R.FUTURE, f"event time is after {limit}")
        return EmbeddingEvent(
            event["id"],
            event["version"],
            Op(op),
            event["time"],
            vector,
            categories,
            numbers,
            tokens,
        )

    def _attributes(
        self, event: dict[str, Any]
    ) -> tuple[dict[str, str], dict[str, float], tuple[str, ...]]:
        categories = _mapping(event, "categories", (str,))
        numbers = _mapping(event, "numbers", (int, float))
        tokens = event.get("tokens") or []
        if not isinstance(tokens, list) or any(type(t) is not str for t in tokens):
            raise EmbeddingRejected(R.WRONG_TYPE, "tokens must be a list of strings")
        if len(tokens) > self._view.max_tokens:
            raise EmbeddingRejected(R.WRONG_TYPE, f"more than {self._view.max_tokens} tokens")
        if not all(math.isfinite(v) for v in numbers.values()):
            raise EmbeddingRejected(R.NON_FINITE, "a number attribute is not finite")
        return categories, {k: float(v) for k, v in numbers.items()}, tuple(tokens)

    def _check_declared(self, categories: Mapping[str, str], numbers: Mapping[str, float]) -> None:
        unknown = (set(categories) - self._view.categories) | (set(numbers) - self._view.numbers)
        if unknown:
            raise EmbeddingRejected(R.UNKNOWN_ATTRIBUTE, f"undeclared {sorted(unknown)[:8]}")

    def _vector(self, values: Any) -> NDArray[np.float32]:
        if not isinstance(values, list) or any(type(v) not in (int, float) for v in values):
            raise EmbeddingRejected(R.WRONG_TYPE, "vector must be a list of numbers")
        if len(values) != self._view.dimension:
            raise EmbeddingRejected(
                R.WRONG_DIMENSION, f"{len(values)} components, the view has {self._view.dimension}"
            )
        with np.errstate(over="ignore"):  # an overflow to inf is refused just below
            vector = np.asarray(values, dtype=np.float32)
        if not np.isfinite(vector).all():
            raise EmbeddingRejected(R.NON_FINITE, "a vector component is NaN or infinite")
        if np.abs(vector).max() > MAX_COMPONENT:  # its distances would overflow to inf
            raise EmbeddingRejected(R.NON_FINITE, f"a vector component exceeds {MAX_COMPONENT:g}")
        return vector


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise EmbeddingRejected(_why_unparseable(raw), "payload is not valid JSON") from None
    if not isinstance(event, dict):
        raise EmbeddingRejected(R.BAD_JSON, f"expected an object, got {type(event).__name__}")
    return event


def _why_unparseable(raw: bytes) -> RejectReason:
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return R.BAD_JSON
    return R.NON_FINITE


def _check_type(event: dict[str, Any], name: str, kind: type) -> None:
    value = event.get(name)
    if value is None:
        raise EmbeddingRejected(R.MISSING_FIELD, f"field {name!r} is missing")
    if type(value) is not kind:  # exact: a bool is not an int here
        raise EmbeddingRejected(
            R.WRONG_TYPE, f"field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )


def _mapping(event: dict[str, Any], name: str, kinds: tuple[type, ...]) -> dict[str, Any]:
    value = event.get(name) or {}
    if not isinstance(value, dict) or any(type(v) not in kinds for v in value.values()):
        raise EmbeddingRejected(R.WRONG_TYPE, f"{name} must map names to {kinds[0].__name__}s")
    return value


def _check_key(value: str, max_bytes: int) -> None:
    if not value or len(value.encode()) > max_bytes:
        raise EmbeddingRejected(R.BAD_KEY, f"entity id must be 1 to {max_bytes} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise EmbeddingRejected(R.BAD_KEY, "entity id holds control characters")
