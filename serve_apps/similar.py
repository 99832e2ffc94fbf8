"""``POST /v1/similar``: nearest neighbours of a vector or of an entity, from a view's index actor.

Request (JSON object)::

    {"view": "items", "vector": [...] | "entity_id": "item_7", "k": 10,
     "filters": {"colour": "red", "price": {"lt": 20}}, "text": "leather boot",
     "version": "v3"}

Exactly one of ``vector`` and ``entity_id``; ``k`` defaults to 10; ``version`` defaults to the
view's serving version; ``text`` makes the search hybrid (vector and keyword rankings fused by
reciprocal rank fusion). By entity id, the entity's current vector is looked up first and the
entity itself is left out of the answer. The answer carries the region, the model version and
index version searched, the filter strategy the index chose and one ``{"id", "score"}`` per hit,
best first (score: squared L2 distance, dot product, or the fused RRF score when hybrid).

Batching: concurrent searches of the same view and version wait at most ``batch_wait_ms`` and go
to the index actor as one call (:class:`QueryBatcher`), where queries sharing ``k`` and a filter
become one Faiss search.

Versions follow the view's catalog live (:class:`CatalogFollower`): when the backend can watch
catalogs (the Ray backend: each view's catalog actor), a replica long-polls each view it serves
and swaps in the catalog's view (its versions, its serving version) as soon as its generation
changes, so a switch moves reads without a restart. The set of views, and the OpenAPI document
(which lists the versions deployed), are fixed when the replica starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from features.embedding_catalog import ViewCatalog
from features.embedding_search import (
    FilterError,
    Neighbours,
    Query,
    SearchAnswer,
    compile_filter,
)
from features.embeddings import (
    INDEX_ACTOR_NAMESPACE,
    MAX_COMPONENT,
    EmbeddingView,
    IndexNotReady,
    UnknownModelVersion,
    catalog_actor_name,
    index_actor_name,
    vector_key,
)
from features.errors import StoreUnavailable
from regions.resilience import ExponentialBackoff
from serve_apps.exceptions import BadRequest

log = logging.getLogger("serve_apps.similar")

SIMILAR_ERROR_CODES = (
    "unknown_view",
    "bad_vector",
    "bad_k",
    "bad_filter",
    "bad_text",
    "unknown_model_version",
    "unknown_entity",
    "version_not_ready",
)


class VersionNotReady(BadRequest):
    """The named model version has no ready index in any region (being built, or not started):
    the client asked for something that does not exist yet, so not a 503 to retry blindly."""

    status = 409


@dataclass(frozen=True, slots=True)
class SimilarLimits:
    max_k: int = 100
    max_text_chars: int = 256
    # A search waits this long for others to share its actor call: the batch's latency floor.
    batch_wait_ms: float = 2.0
    batch_max: int = 64


class IndexBackend(Protocol):
    """Where the indexes live: the Ray actors in production, a fake in unit tests."""

    async def search(self, view: str, version: str, queries: list[Query]) -> SearchAnswer: ...

    async def vector_of(self, view: str, version: str, entity_id: str) -> list[float] | None: ...


@runtime_checkable
class CatalogWatch(Protocol):
    """A backend that also knows where each view's version catalog lives."""

    async def watch(self, view: str, generation: int, timeout_s: float) -> ViewCatalog | None:
        """The view's catalog once its generation differs from ``generation`` (or after
        ``timeout_s``); ``None`` when the view has no catalog."""


VectorGet = Callable[[str], Awaitable[Any]]


class RegionIndexBackend:
    """The index actors of ``regions`` (the home region first, then the others nearest first),
    found by Ray actor name (``features.embeddings.index_actor_name``).

    A search goes to the first region whose actor answers: one that does not exist, is not ready
    (``IndexNotReady``), is dead or does not answer within ``timeout_s`` (restarting) is skipped.
    When none answers: :class:`IndexNotReady` if no region has a ready index of the version (the
    client named a version still being built: a 4xx), else :class:`StoreUnavailable` (503).
    By entity id the vector comes from the home region's Redis (``vectors``) when given; the
    actors are asked when Redis fails or has no vector for the entity (a Redis that came back
    empty is being copied again, so only the index can say an entity has none).
    """

    def __init__(
        self, regions: Sequence[str], vectors: VectorGet | None = None, timeout_s: float = 1.0
    ) -> None:
        self._regions = tuple(regions)
        self._vectors = vectors
        self._timeout_s = timeout_s
        self._handles: dict[str, Any] = {}
        self._catalogs: dict[str, Any] = {}

    async def search(self, view: str, version: str, queries: list[Query]) -> SearchAnswer:
        return await self._first(view, version, "search", queries)  # type: ignore[no-any-return]

    async def vector_of(self, view: str, version: str, entity_id: str) -> list[float] | None:
        if self._vectors is not None:
            try:
                raw = await self._vectors(vector_key(view, version, entity_id))
            except Exception:
                log.warning("vector lookup in Redis failed; asking the index actors")
            else:
                if raw is not None:
                    return np.frombuffer(raw, dtype="<f4").tolist()  # type: ignore[no-any-return]
        return await self._first(view, version, "vector_of", entity_id)  # type: ignore[no-any-return]

    async def watch(self, view: str, generation: int, timeout_s: float) -> ViewCatalog | None:
        import ray

        name = catalog_actor_name(view)
        try:
            if name not in self._catalogs:
                self._catalogs[name] = ray.get_actor(name, namespace=INDEX_ACTOR_NAMESPACE)
            found: ViewCatalog = await self._catalogs[name].watch.remote(generation, timeout_s)
        except ValueError:  # the view has no catalog actor (yet)
            return None
        except Exception:
            self._catalogs.pop(name, None)  # restarted or gone: look it up again next time
            raise
        return found

    async def _first(self, view: str, version: str, method: str, *args: Any) -> Any:
        import ray

        unavailable = False
        for region in self._regions:
            name = index_actor_name(view, region, version)
            try:
                handle = self._handle(name)
                ref = getattr(handle, method).remote(version, *args)
                return await asyncio.wait_for(ref, self._timeout_s)
            except ValueError:  # no such actor: this version is not built in that region
                continue
            except IndexNotReady:
                continue
            except (ray.exceptions.RayActorError, TimeoutError):  # dead or restarting
                self._handles.pop(name, None)
                unavailable = True
        if unavailable:
            raise StoreUnavailable(f"no index of {view!r} {version!r} answered")
        raise IndexNotReady(f"no ready index of {view!r} {version!r}")

    def _handle(self, name: str) -> Any:
        import ray

        if name not in self._handles:
            self._handles[name] = ray.get_actor(name, namespace=INDEX_ACTOR_NAMESPACE)
        return self._handles[name]


class QueryBatcher:
    """Gathers concurrent queries per (view, version) into one backend call. One event loop."""

    def __init__(self, backend: IndexBackend, limits: SimilarLimits) -> None:
        self._backend = backend
        self._limits = limits
        self._pending: dict[tuple[str, str], list[tuple[Query, asyncio.Future[Any]]]] = {}

    async def search(self, view: str, version: str, query: Query) -> tuple[SearchAnswer, int]:
        """The batch's answer and this query's position in it."""
        key = (view, version)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batch = self._pending.setdefault(key, [])
        batch.append((query, future))
        if len(batch) == 1:
            asyncio.get_running_loop().call_later(
                self._limits.batch_wait_ms / 1000, self._flush_soon, key
            )
        if len(batch) >= self._limits.batch_max:
            self._flush_soon(key)
        result: tuple[SearchAnswer, int] = await future
        return result

    def _flush_soon(self, key: tuple[str, str]) -> None:
        batch = self._pending.pop(key, None)
        if batch:
            asyncio.get_running_loop().create_task(self._flush(key, batch))

    async def _flush(
        self, key: tuple[str, str], batch: list[tuple[Query, asyncio.Future[Any]]]
    ) -> None:
        try:
            answer = await self._backend.search(key[0], key[1], [q for q, _ in batch])
        except Exception as exc:  # every waiter gets the batch's failure, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for position, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result((answer, position))


WATCH_TIMEOUT_S = 30.0
FIRST_SYNC_S = 1.0


class CatalogFollower:
    """Keeps ``views`` (a dict it updates in place) at each view's latest catalog: one long poll
    per view, on the replica's event loop. A view without a catalog, or whose catalog does not
    answer, keeps its current definition and is asked again after a backoff (capped at 10 s)."""

    def __init__(
        self,
        views: dict[str, EmbeddingView],
        source: CatalogWatch,
        backoff: ExponentialBackoff | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.views = views
        self.generations: dict[str, int] = {}
        self._source = source
        self._backoff = backoff or ExponentialBackoff(base_s=0.5, cap_s=10.0)
        self._sleep = sleep
        self._first: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._synced = False

    async def synced(self, timeout_s: float = FIRST_SYNC_S) -> None:
        """Starts following on the running loop (once), and the first time waits up to
        ``timeout_s`` for every view's first answer, so a new replica does not read a version
        the catalog has moved away from."""
        if self._synced:
            return
        if not self._tasks:
            for name in self.views:
                self._first[name] = asyncio.Event()
                self._tasks.append(asyncio.get_running_loop().create_task(self._follow(name)))
        waits = [asyncio.wait_for(e.wait(), timeout_s) for e in self._first.values()]
        await asyncio.gather(*waits, return_exceptions=True)
        self._synced = True

    async def _follow(self, name: str) -> None:
        failures = 0
        while True:
            try:
                found = await self._source.watch(
                    name, self.generations.get(name, 0), WATCH_TIMEOUT_S
                )
            except Exception as exc:
                log.warning("catalog of %s did not answer (%s); retrying", name, type(exc).__name__)
                found = None
            self._first[name].set()
            if found is None:
                failures += 1
                await self._sleep(self._backoff.delay(failures))
                continue
            failures = 0
            if found.view.name == name and found.generation != self.generations.get(name):
                self.views[name] = found.view
                self.generations[name] = found.generation

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


class SimilarSearch:
    """Parses a request, asks the index through the batcher, shapes the answer."""

    def __init__(
        self,
        views: Mapping[str, EmbeddingView],
        region: str,
        backend: IndexBackend | None = None,
        limits: SimilarLimits | None = None,
    ) -> None:
        """``backend`` defaults to the home region's Ray index actors alone; a backend that can
        watch catalogs (:class:`CatalogWatch`) makes the views follow them."""
        self.views = dict(views)
        self.limits = limits or SimilarLimits()
        self._backend = backend or RegionIndexBackend([region])
        self._batcher = QueryBatcher(self._backend, self.limits)
        self._region = region
        source = self._backend
        self.follower = (
            CatalogFollower(self.views, source) if isinstance(source, CatalogWatch) else None
        )

    async def answer(self, body: Mapping[str, Any], request_id: str) -> dict[str, Any]:
        if self.follower is not None:
            await self.follower.synced()
        view = self._view(body)
        version = _version(body, view)
        k = _k(body, self.limits.max_k)
        entity_id = body.get("entity_id")
        try:
            vector = await self._vector(body, view, version)
            query = Query(
                vector, k + (1 if entity_id else 0), _filter(body, view), self._text(body)
            )
            answer, position = await self._batcher.search(view.name, version, query)
        except UnknownModelVersion:
            raise BadRequest("unknown_model_version", f"no index for {version!r}") from None
        except IndexNotReady:
            raise VersionNotReady("version_not_ready", f"{version!r} is being built") from None
        found = answer.results[position]
        return {
            "view": view.name,
            "region": self._region,
            "model_version": answer.model_version,
            "index_version": answer.index_version,
            "store": answer.store,
            "strategy": found.strategy.value,
            "hybrid": found.hybrid,
            "results": _hits(found, entity_id, k),
            "request_id": request_id,
        }

    def _view(self, body: Mapping[str, Any]) -> EmbeddingView:
        name = body.get("view")
        if not isinstance(name, str) or name not in self.views:
            raise BadRequest("unknown_view", f"view {str(name)[:64]!r} is not served here")
        return self.views[name]

    def _text(self, body: Mapping[str, Any]) -> str | None:
        text = body.get("text")
        if text is None:
            return None
        if not isinstance(text, str) or len(text) > self.limits.max_text_chars:
            raise BadRequest(
                "bad_text", f"text must be a string of <= {self.limits.max_text_chars}"
            )
        return text

    async def _vector(
        self, body: Mapping[str, Any], view: EmbeddingView, version: str
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        given, entity_id = body.get("vector"), body.get("entity_id")
        if (given is None) == (entity_id is None):
            raise BadRequest("bad_vector", "give exactly one of vector and entity_id")
        if entity_id is not None:
            if not isinstance(entity_id, str) or not entity_id:
                raise BadRequest("unknown_entity", "entity_id must be a non-empty string")
            given = await self._backend.vector_of(view.name, version, entity_id)
            if given is None:
                raise BadRequest("unknown_entity", f"{entity_id[:64]!r} has no vector")
        return _checked_vector(given, view.dimension)


def _version(body: Mapping[str, Any], view: EmbeddingView) -> str:
    version = body.get("version", view.serving_version)
    if version not in view.model_versions:
        raise BadRequest("unknown_model_version", f"{str(version)[:32]!r} is not a version")
    return str(version)


def _k(body: Mapping[str, Any], max_k: int) -> int:
    k = body.get("k", 10)
    if type(k) is float and k.is_integer():  # JSON Schema's integer: 5.0 is one
        k = int(k)
    if type(k) is not int or not 1 <= k <= max_k:
        raise BadRequest("bad_k", f"k must be an integer from 1 to {max_k}")
    return k


def _filter(body: Mapping[str, Any], view: EmbeddingView) -> Any:
    spec = body.get("filters")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise BadRequest("bad_filter", "filters must be an object")
    try:
        return compile_filter(spec, view) if spec else None
    except FilterError as exc:
        raise BadRequest("bad_filter", str(exc)) from None


def _checked_vector(values: Any, dimension: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    if (
        not isinstance(values, list)
        or len(values) != dimension
        or any(type(v) not in (int, float) or not abs(v) <= MAX_COMPONENT for v in values)
    ):
        raise BadRequest(
            "bad_vector", f"vector must be {dimension} numbers within ±{MAX_COMPONENT:g}"
        )
    return np.asarray(values, dtype=np.float32)


def _hits(found: Neighbours, exclude: str | None, k: int) -> list[dict[str, Any]]:
    pairs: Sequence[tuple[str, float]] = [
        (entity, score)
        for entity, score in zip(found.ids, found.scores, strict=True)
        if entity != exclude
    ]
    return [{"id": entity, "score": score} for entity, score in pairs[:k]]
