"""One Faiss index per (embedding view, model version): upserts, deletes and filtered search.

Rows: every vector lives in a row of ``vectors``; its Faiss id is the row number, its metadata is
row ``row`` of the :class:`~features.embedding_search.AttributeColumns`. The index kinds:

- ``flat``  exact (``IndexIDMap2`` over ``IndexFlat``): an IVF view until it holds
  ``view.train_size`` vectors, since k-means on fewer points gives poor lists.
- ``ivf``   ``IndexIVFFlat`` trained on the live vectors at that moment, with a hash-table direct
  map so that ``remove_ids`` removes one id without a scan.
- ``hnsw``  ``IndexIDMap2`` over ``IndexHNSWFlat``. HNSW cannot remove a node: a replaced or
  deleted row is a tombstone, excluded from every search by an ``IDSelector`` over the live rows,
  and the index is rebuilt without them once they pass ``REBUILD_DEAD_SHARE`` of the rows.

Invariants: an entity id has at most one live row; every mutation is visible to the next search
(no buffering); an event older than the last event applied to its entity (upsert or delete) is
ignored, and so is one at the same event time (the first applied wins a tie), so replaying
events already applied changes nothing, not even ``mutations``. ``mutations`` counts the effective
changes and is the index version answers carry. Not thread-safe: the owning actor serialises calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from features.embedding_search import (
    AttributeColumns,
    MetadataFilter,
    Neighbours,
    Query,
    Strategy,
    StrategyPolicy,
    choose_strategy,
    keyword_ranking,
    over_fetch_k,
    reciprocal_rank_fusion,
    widened,
)
from features.embeddings import EmbeddingEvent, EmbeddingView, IndexKind, Metric, Op

# HNSW: rebuild once tombstones are this share of the rows (and at least REBUILD_MIN_DEAD), so
# that searches do not walk a graph mostly made of deleted nodes.
REBUILD_DEAD_SHARE = 0.25
REBUILD_MIN_DEAD = 256
# Hybrid search fuses the vector ranking with the keyword ranking over this many candidates at
# least: a candidate outside both top-k lists can still win the fused ranking.
HYBRID_DEPTH = 100
# The widest beam a filtered HNSW search may use (a wider one costs more than the exact scan
# the strategy would pick for so few rows).
MAX_EF_SEARCH = 2048
# The bundled type stubs lag the SWIG bindings (selector parameters, HNSW search parameters).
_faiss: Any = faiss
_METRICS = {Metric.L2: faiss.METRIC_L2, Metric.INNER_PRODUCT: faiss.METRIC_INNER_PRODUCT}


class EmbeddingIndex:
    """See the module docstring for the row model and invariants."""

    def __init__(
        self, view: EmbeddingView, version: str, policy: StrategyPolicy | None = None
    ) -> None:
        self.view = view
        self.version = version
        self.policy = policy or StrategyPolicy()
        self.vectors = np.zeros((0, view.dimension), dtype=np.float32)
        self.live = np.zeros(0, dtype=bool)
        self.row_ids: list[str] = []  # row -> entity id; "" for a free row (ids are never empty)
        self.row_of: dict[str, int] = {}
        self.times: dict[str, int] = {}  # last event time applied per entity, deletes included
        self.free: list[int] = []  # removed rows a flat or IVF index reuses
        self.columns = AttributeColumns(view.categories, view.numbers)
        self.mutations = 0
        self.kind = "hnsw" if view.index is IndexKind.HNSW else "flat"
        self.faiss_index: Any = self._empty_index(self.kind)

    # --- Writes ----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Live vectors."""
        return len(self.row_of)

    @property
    def rows(self) -> int:
        return len(self.row_ids)

    def apply(self, events: Sequence[EmbeddingEvent]) -> int:
        """Applies the events in order; returns how many changed the index."""
        changed = 0
        for event in events:
            if event.model_version != self.version:
                raise ValueError(f"event of version {event.model_version} in index {self.version}")
            if event.event_time_ms <= self.times.get(event.entity_id, -(2**63)):
                continue
            self.times[event.entity_id] = event.event_time_ms
            changed += self._delete(event) if event.op is Op.DELETE else self._upsert(event)
        self.mutations += changed
        self._maintain()
        return changed

    def _upsert(self, event: EmbeddingEvent) -> int:
        if event.vector is None:
            raise ValueError(f"upsert of {event.entity_id!r} without a vector")
        row = self.row_of.get(event.entity_id)
        if row is not None:
            self._remove_row(row, reuse=False)
        if row is None or self.kind == "hnsw":  # HNSW cannot re-add a removed id
            row = self._new_row()
        self.vectors[row] = event.vector
        self.live[row] = True
        self.row_ids[row] = event.entity_id
        self.row_of[event.entity_id] = row
        self.columns.set_row(row, event)
        self.faiss_index.add_with_ids(event.vector[None, :], np.array([row], dtype=np.int64))
        return 1

    def _delete(self, event: EmbeddingEvent) -> int:
        row = self.row_of.pop(event.entity_id, None)
        if row is None:
            return 0
        self._remove_row(row, reuse=True)
        return 1

    def _remove_row(self, row: int, *, reuse: bool) -> None:
        self.live[row] = False
        self.columns.clear_row(row)
        if self.kind != "hnsw":
            self.faiss_index.remove_ids(np.array([row], dtype=np.int64))
            if reuse:
                self.row_ids[row] = ""
                self.free.append(row)

    def _new_row(self) -> int:
        if self.free:
            return self.free.pop()
        row = self.rows
        if row >= len(self.vectors):
            grown = max(64, 2 * len(self.vectors))
            self.vectors = np.resize(self.vectors, (grown, self.view.dimension))
            self.live = np.concatenate([self.live, np.zeros(grown - len(self.live), dtype=bool)])
        self.row_ids.append("")
        return row

    def _maintain(self) -> None:
        if self.kind == "flat" and self.size >= self.view.train_size:
            self._rebuild("ivf")
        dead = self.rows - self.size
        if self.kind == "hnsw" and dead >= max(REBUILD_MIN_DEAD, REBUILD_DEAD_SHARE * self.rows):
            self._rebuild("hnsw")

    def _rebuild(self, kind: str) -> None:
        """A new index of ``kind`` over the live rows, renumbered densely (tombstones dropped)."""
        keep = np.flatnonzero(self.live[: self.rows])
        vectors = self.vectors[keep].copy()
        self.columns = self.columns.compacted(keep)
        self.row_ids = [self.row_ids[r] for r in keep]
        self.row_of = {entity: row for row, entity in enumerate(self.row_ids) if entity}
        self.free = []
        self.vectors = vectors
        self.live = np.ones(len(keep), dtype=bool)
        self.kind = kind
        self.faiss_index = self._empty_index(kind)
        if kind == "ivf":
            self.faiss_index.train(vectors)
        self.faiss_index.add_with_ids(vectors, np.arange(len(keep), dtype=np.int64))

    def _empty_index(self, kind: str) -> Any:
        view, metric = self.view, _METRICS[self.view.metric]
        if kind == "ivf":
            index = faiss.IndexIVFFlat(
                faiss.IndexFlat(view.dimension, metric), view.dimension, view.nlist, metric
            )
            index.set_direct_map_type(_faiss.DirectMap.Hashtable)
            index.nprobe = view.nprobe
            return index
        if kind == "hnsw":
            return faiss.IndexIDMap2(faiss.IndexHNSWFlat(view.dimension, view.hnsw_m, metric))
        return faiss.IndexIDMap2(faiss.IndexFlat(view.dimension, metric))

    # --- Reads -----------------------------------------------------------------------------------

    def vector_of(self, entity_id: str) -> NDArray[np.float32] | None:
        row = self.row_of.get(entity_id)
        return None if row is None else self.vectors[row].copy()

    def search_batch(self, queries: Sequence[Query]) -> list[Neighbours]:
        """Answers many queries; those sharing ``k`` and a filter (and no text) go to Faiss in
        one call, which is where batching pays."""
        groups: dict[tuple[int, str], list[int]] = {}
        out: list[Neighbours | None] = [None] * len(queries)
        for i, query in enumerate(queries):
            if query.text:
                out[i] = self.hybrid(query)
                continue
            key = query.filter.key if query.filter else ""
            groups.setdefault((query.k, key), []).append(i)
        for (k, _), members in groups.items():
            matrix = np.stack([queries[i].vector for i in members]).astype(np.float32)
            for i, found in zip(
                members, self.search(matrix, k, queries[members[0]].filter), strict=True
            ):
                out[i] = found
        return [n for n in out if n is not None]

    def hybrid(self, query: Query) -> Neighbours:
        """The vector ranking and the keyword ranking of ``query.text``, fused by RRF."""
        depth = max(query.k, HYBRID_DEPTH)
        by_vector = self.search(query.vector[None, :], depth, query.filter)[0]
        vector_rows = [self.row_of[entity] for entity in by_vector.ids]
        allowed = self._allowed(query.filter)
        keyword_rows = keyword_ranking(self.columns, [query.text or ""], allowed)[:depth]
        fused = reciprocal_rank_fusion([vector_rows, keyword_rows], query.k)
        return Neighbours(
            tuple(self._id(row) for row, _ in fused),
            tuple(score for _, score in fused),
            by_vector.strategy,
            hybrid=True,
        )

    def search(
        self, queries: NDArray[np.float32], k: int, flt: MetadataFilter | None = None
    ) -> list[Neighbours]:
        """The ``k`` nearest live vectors of each query row that pass ``flt``."""
        if k < 1:
            raise ValueError("k must be at least 1")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        allowed = self._allowed(flt)
        strategy = self._strategy(flt, allowed)
        if strategy is Strategy.EXACT:
            rows, scores = self._exact(queries, k, allowed)
        elif strategy is Strategy.OVER_FETCH:
            rows, scores = self._over_fetch(queries, k, allowed)
            if ((rows >= 0).sum(axis=1) < min(k, int(allowed.sum()))).any():
                strategy = Strategy.ID_SELECTOR  # too few passed: ask again, naming the ids
                rows, scores = self._faiss(queries, k, allowed)
        else:
            rows, scores = self._faiss(queries, k, allowed)
        return [self._neighbours(r, s, strategy) for r, s in zip(rows, scores, strict=True)]

    def _allowed(self, flt: MetadataFilter | None) -> NDArray[np.bool_]:
        live = self.live[: self.rows]
        return live if flt is None else flt.mask(self.columns, self.rows) & live

    def _strategy(self, flt: MetadataFilter | None, allowed: NDArray[np.bool_]) -> Strategy:
        if flt is None:
            return Strategy.UNFILTERED
        return choose_strategy(int(allowed.sum()), self.size, self.policy)

    def _exact(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        rows = np.flatnonzero(allowed)
        scores = exact_scores(queries, self.vectors[rows], self.view.metric)
        return top_k(scores, rows, k, self.view.metric)

    def _over_fetch(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        asked = over_fetch_k(k, int(allowed.sum()), self.size, self.policy)
        scores, rows = self._faiss_call(queries, asked, self.live[: self.rows])
        passed = (rows >= 0) & allowed[np.clip(rows, 0, None)]
        # Stable: keep the index's order among the rows that pass, then cut at k.
        order = np.argsort(~passed, axis=1, kind="stable")[:, :k]
        rows = np.where(
            np.take_along_axis(passed, order, 1), np.take_along_axis(rows, order, 1), -1
        )
        return rows, np.take_along_axis(scores, order, 1)

    def _faiss(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        scores, rows = self._faiss_call(queries, k, allowed)
        return rows, scores

    def _faiss_call(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.bool_]
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        bitmap = np.packbits(allowed, bitorder="little")  # must outlive the search call
        selector = _faiss.IDSelectorBitmap(bitmap)
        # Filtered: widen the probe so it meets as many passing candidates as an unfiltered one.
        passing, view = int(allowed.sum()), self.view
        if self.kind == "ivf":
            nprobe = widened(view.nprobe, passing, self.size, view.nlist)
            params: Any = _faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        elif self.kind == "hnsw":
            ef = widened(view.hnsw_ef_search, passing, self.size, MAX_EF_SEARCH)
            params = _faiss.SearchParametersHNSW(sel=selector, efSearch=max(ef, k))
        else:
            params = _faiss.SearchParameters(sel=selector)
        scores, rows = self.faiss_index.search(queries, k, params=params)
        return scores, rows

    def _neighbours(
        self, rows: NDArray[np.int64], scores: NDArray[np.float32], strategy: Strategy
    ) -> Neighbours:
        found = rows >= 0
        return Neighbours(
            tuple(self._id(int(r)) for r in rows[found]),
            tuple(float(s) for s in scores[found]),
            strategy,
        )

    def _id(self, row: int) -> str:
        return self.row_ids[row]  # searches return live rows only, which all have an id


def exact_scores(
    queries: NDArray[np.float32], vectors: NDArray[np.float32], metric: Metric
) -> NDArray[np.float32]:
    """Brute force, the same measure Faiss reports: squared L2 or the dot product."""
    dots: NDArray[np.float32] = queries @ vectors.T
    if metric is Metric.INNER_PRODUCT:
        return dots
    squared: NDArray[np.float32] = (queries**2).sum(1)[:, None] + (vectors**2).sum(1)[None, :]
    distances: NDArray[np.float32] = np.maximum(squared - 2 * dots, 0).astype(np.float32)
    return distances


def top_k(
    scores: NDArray[np.float32], rows: NDArray[np.int64], k: int, metric: Metric
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The best ``k`` columns of each score row, best first, padded with row -1 like Faiss."""
    n = scores.shape[1]
    keyed = -scores if metric is Metric.INNER_PRODUCT else scores
    take = min(k, n)
    part = (
        np.argpartition(keyed, take - 1, axis=1)[:, :take]
        if take
        else np.zeros((len(scores), 0), int)
    )
    order = np.take_along_axis(part, np.argsort(np.take_along_axis(keyed, part, 1), axis=1), 1)
    out_rows = np.full((len(scores), k), -1, dtype=np.int64)
    out_scores = np.full((len(scores), k), np.nan, dtype=np.float32)
    out_rows[:, :take] = rows[order]
    out_scores[:, :take] = np.take_along_axis(scores, order, 1)
    return out_rows, out_scores
