"""The Faiss index per (view, version) against a brute-force oracle over the latest events."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from actors.embedding_index import EmbeddingIndex
from actors.embedding_snapshot import read_snapshot, write_snapshot
from features.embedding_search import Query, Strategy, StrategyPolicy, compile_filter
from features.embeddings import EmbeddingEvent, EmbeddingView, IndexKind, Metric, Op
from features.exceptions import CorruptState
from tests.unit.features.embedding_oracle import spec_matches

DIM = 8
COLOURS = ("red", "blue", "green", "black")


def _view(**change: Any) -> EmbeddingView:
    base: dict[str, Any] = {
        "name": "items",
        "topic": "fl.items.embeddings",
        "dimension": DIM,
        "model": "item2vec",
        "model_versions": ("v1",),
        "serving_version": "v1",
        "categories": frozenset({"colour"}),
        "numbers": frozenset({"price"}),
        # nprobe = nlist: the trained IVF visits every list, so it must be exact too.
        "nlist": 4,
        "nprobe": 4,
    }
    return EmbeddingView(**{**base, **change})


def _events(n: int, seed: int = 0, start: int = 0, time: int = 1) -> list[EmbeddingEvent]:
    rng = np.random.default_rng(seed)
    return [
        EmbeddingEvent(
            f"e{i}",
            "v1",
            Op.UPSERT,
            time,
            rng.standard_normal(DIM).astype(np.float32),
            {"colour": COLOURS[i % 4]},
            {"price": float(i % 100)},
            (f"tok{i % 10}",),
        )
        for i in range(start, start + n)
    ]


def _delete(entity: str, time: int) -> EmbeddingEvent:
    return EmbeddingEvent(entity, "v1", Op.DELETE, time, None, {}, {}, ())


class Oracle:
    """The latest upsert per entity, deletes applied, searched by brute force."""

    def __init__(self) -> None:
        self.latest: dict[str, EmbeddingEvent] = {}

    def apply(self, events: list[EmbeddingEvent]) -> None:
        for e in events:
            if e.op is Op.DELETE:
                self.latest.pop(e.entity_id, None)
            else:
                self.latest[e.entity_id] = e

    def top(self, query: np.ndarray, k: int, spec: dict[str, Any] | None = None) -> list[str]:
        passing = [
            e for e in self.latest.values() if spec_matches(spec or {}, e.categories, e.numbers)
        ]
        passing.sort(key=lambda e: float(((e.vector - query) ** 2).sum()))  # type: ignore[operator]
        return [e.entity_id for e in passing[:k]]


def _queries(n: int, seed: int = 99) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _ids(index: EmbeddingIndex, queries: np.ndarray, k: int, spec: Any = None) -> list[list[str]]:
    flt = compile_filter(spec, index.view) if spec is not None else None
    return [list(n.ids) for n in index.search(queries, k, flt)]


@pytest.mark.parametrize("n", [50, 400])  # 400 > train_size (156): the trained IVF
def test_ivf_flat_returns_the_brute_force_top_k(n: int) -> None:
    index, oracle = EmbeddingIndex(_view(), "v1"), Oracle()
    events = _events(n)
    index.apply(events)
    oracle.apply(events)
    assert index.kind == ("ivf" if n >= index.view.train_size else "flat")
    queries = _queries(20)
    assert _ids(index, queries, 10) == [oracle.top(q, 10) for q in queries]


def test_the_index_trains_ivf_once_it_holds_enough_vectors_and_keeps_every_id() -> None:
    index = EmbeddingIndex(_view(), "v1")
    index.apply(_events(index.view.train_size - 1))
    assert index.kind == "flat"
    index.apply(_events(1, start=index.view.train_size - 1))
    assert index.kind == "ivf" and index.faiss_index.ntotal == index.size == index.view.train_size


def test_hnsw_recall_at_10_against_brute_force() -> None:
    index, oracle = EmbeddingIndex(_view(index=IndexKind.HNSW), "v1"), Oracle()
    events = _events(2000)
    index.apply(events)
    oracle.apply(events)
    queries = _queries(50)
    found = _ids(index, queries, 10)
    recall = np.mean(
        [len(set(f) & set(oracle.top(q, 10))) / 10 for f, q in zip(found, queries, strict=True)]
    )
    assert recall >= 0.95


@pytest.mark.parametrize("kind", [IndexKind.IVF_FLAT, IndexKind.HNSW])
@pytest.mark.parametrize("n", [100, 600])
def test_upserts_and_deletes_are_visible_to_the_next_search(kind: IndexKind, n: int) -> None:
    index, oracle = EmbeddingIndex(_view(index=kind), "v1"), Oracle()
    for batch in (_events(n), _events(n // 2, seed=1, time=2)):  # the second replaces half
        index.apply(batch)
        oracle.apply(batch)
    deletes = [_delete(f"e{i}", 3) for i in range(0, n, 3)]
    index.apply(deletes)
    oracle.apply(deletes)
    assert index.size == len(oracle.latest)
    queries = _queries(10)
    found = _ids(index, queries, 5)
    if kind is IndexKind.IVF_FLAT:
        assert found == [oracle.top(q, 5) for q in queries]
    deleted = {e.entity_id for e in deletes}
    assert not deleted & {i for ids in found for i in ids}
    replaced = index.vector_of("e1")
    assert replaced is not None and np.array_equal(replaced, oracle.latest["e1"].vector)


def test_older_events_and_replays_change_nothing() -> None:
    index = EmbeddingIndex(_view(), "v1")
    index.apply(_events(20, time=5))
    before = index.vector_of("e3")
    assert index.apply(_events(20, seed=7, time=4)) == 0  # older than what was applied
    assert index.apply([_delete("e3", 4)]) == 0
    assert np.array_equal(index.vector_of("e3"), before)  # type: ignore[arg-type]
    index.apply([_delete("e3", 6)])
    assert index.apply([_delete("e3", 6), *_events(3, time=5)]) == 0  # a replay of the past
    assert index.vector_of("e3") is None and index.size == 19


def test_hnsw_rebuilds_without_its_tombstones() -> None:
    index = EmbeddingIndex(_view(index=IndexKind.HNSW), "v1")
    index.apply(_events(1000))
    index.apply([_delete(f"e{i}", 2) for i in range(400)])
    assert index.rows == index.size == 600 == index.faiss_index.ntotal
    assert sorted(index.row_of, key=lambda e: int(e[1:])) == [f"e{i}" for i in range(400, 1000)]
    flt = compile_filter({"colour": "red"}, index.view)
    assert all(n.ids[0] in index.row_of for n in index.search(_queries(5), 3, flt))


FILTERS: list[tuple[dict[str, Any], Strategy]] = [
    ({"colour": "red", "price": {"lt": 10}}, Strategy.EXACT),  # few pass
    ({"price": {"gte": 10, "lt": 40}}, Strategy.ID_SELECTOR),
    ({"colour": {"in": ["red", "blue", "green"]}}, Strategy.OVER_FETCH),  # most pass
]


@pytest.mark.parametrize(("spec", "strategy"), FILTERS)
@pytest.mark.parametrize("kind", [IndexKind.IVF_FLAT, IndexKind.HNSW])
def test_filtered_search_picks_its_strategy_and_returns_only_rows_that_pass(
    spec: dict[str, Any], strategy: Strategy, kind: IndexKind
) -> None:
    policy = StrategyPolicy(exact_max_rows=100, over_fetch_min_selectivity=0.5)
    index, oracle = EmbeddingIndex(_view(index=kind), "v1", policy), Oracle()
    events = _events(1200)
    index.apply(events)
    oracle.apply(events)
    queries = _queries(20)
    results = index.search(queries, 10, compile_filter(spec, index.view))
    assert {r.strategy for r in results} == {strategy}
    expected = [oracle.top(q, 10, spec) for q in queries]
    hits = [len(set(r.ids) & set(e)) / 10 for r, e in zip(results, expected, strict=True)]
    passing = set(oracle.top(queries[0], 10_000, spec))
    assert all(set(r.ids) <= passing for r in results)
    # IVF visits every list here, so it is exact; HNSW is approximate.
    assert np.mean(hits) >= (1.0 if kind is IndexKind.IVF_FLAT else 0.9)


def test_inner_product_ranks_by_the_largest_dot_product() -> None:
    index = EmbeddingIndex(_view(metric=Metric.INNER_PRODUCT), "v1")
    events = _events(100)
    index.apply(events)
    q = _queries(1)
    dots = {e.entity_id: float(e.vector @ q[0]) for e in events}  # type: ignore[operator]
    best = sorted(dots, key=lambda e: -dots[e])[:5]
    for spec in (None, {"price": {"lt": 100}}):  # the Faiss path and the exact path
        assert _ids(index, q, 5, spec) == [best]


def test_a_batch_answers_each_query_as_a_single_search_would() -> None:
    index = EmbeddingIndex(_view(), "v1")
    index.apply(_events(300))
    red = compile_filter({"colour": "red"}, index.view)
    queries = _queries(6)
    batch = [Query(q, 3 + i % 2, red if i % 3 == 0 else None) for i, q in enumerate(queries)]
    assert index.search_batch(batch) == [
        index.search(q.vector[None, :], q.k, q.filter)[0] for q in batch
    ]


def test_hybrid_search_lifts_items_that_match_the_text() -> None:
    index = EmbeddingIndex(_view(), "v1")
    index.apply(_events(300))
    q = _queries(1)[0]
    plain = index.search(q[None, :], 5)[0]
    hybrid = index.search_batch([Query(q, 5, text="TOK7")])[0]
    assert hybrid.hybrid and hybrid.ids != plain.ids
    assert sum(1 for e in hybrid.ids if int(e[1:]) % 10 == 7) > sum(
        1 for e in plain.ids if int(e[1:]) % 10 == 7
    )


@pytest.mark.parametrize("kind", [IndexKind.IVF_FLAT, IndexKind.HNSW])
@pytest.mark.parametrize("n", [100, 500])
def test_restore_and_replay_give_the_same_index_with_no_missing_or_duplicate_ids(
    tmp_path: Path, kind: IndexKind, n: int
) -> None:
    view = _view(index=kind)
    log = [*_events(n), *[_delete(f"e{i}", 2) for i in range(0, n, 4)], *_events(n, seed=3, time=3)]
    cut = len(log) // 2
    live, oracle = EmbeddingIndex(view, "v1"), Oracle()
    live.apply(log[:cut])
    write_snapshot(live, tmp_path, {0: cut})
    live.apply(log[cut - 10 :])  # the crashed actor had applied more than its snapshot holds
    oracle.apply(log)
    restored, offsets = read_snapshot(view, "v1", tmp_path) or pytest.fail("no snapshot")
    assert offsets == {0: cut}
    restored.apply(log[offsets[0] :])
    uninterrupted = EmbeddingIndex(view, "v1")
    uninterrupted.apply(log)
    assert restored.mutations == live.mutations == uninterrupted.mutations
    assert sorted(restored.row_of) == sorted(oracle.latest)
    ids = [restored.row_ids[r] for r in np.flatnonzero(restored.live[: restored.rows])]
    assert len(ids) == len(set(ids)) == len(oracle.latest)
    queries = _queries(5)
    assert _ids(restored, queries, 5) == _ids(live, queries, 5)


def test_only_the_latest_snapshot_is_kept_and_read(tmp_path: Path) -> None:
    index = EmbeddingIndex(_view(), "v1")
    index.apply(_events(10))
    write_snapshot(index, tmp_path, {0: 10})
    index.apply(_events(5, start=10))
    write_snapshot(index, tmp_path, {0: 15, 1: 3})
    assert len(list(tmp_path.glob("snap-*"))) == 1
    restored, offsets = read_snapshot(index.view, "v1", tmp_path) or pytest.fail("no snapshot")
    assert offsets == {0: 15, 1: 3} and restored.size == 15


def test_no_snapshot_reads_as_none_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    assert read_snapshot(_view(), "v1", tmp_path) is None
    index = EmbeddingIndex(_view(), "v1")
    index.apply(_events(10))
    write_snapshot(index, tmp_path, {})
    other = _view(model_versions=("v1", "v2"), serving_version="v2")
    with pytest.raises(CorruptState, match="expected"):
        read_snapshot(other, "v2", tmp_path)
    (next(tmp_path.glob("snap-*")) / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(CorruptState, match="does not load"):
        read_snapshot(_view(), "v1", tmp_path)


# --- Any sequence of events ----------------------------------------------------------------------

# (upsert?, entity, event time): mostly upserts, so that IVF reaches its training size.
OPS = st.lists(
    st.tuples(st.sampled_from([True, True, True, False]), st.integers(0, 39), st.integers(0, 15)),
    min_size=50,
    max_size=150,
)


def _op_events(ops: list[tuple[bool, int, int]]) -> list[EmbeddingEvent]:
    out = []
    for n, (upsert, entity, time) in enumerate(ops):
        vector = np.full(DIM, n, dtype=np.float32) if upsert else None
        op = Op.UPSERT if upsert else Op.DELETE
        out.append(EmbeddingEvent(f"e{entity}", "v1", op, time, vector, {}, {}, ()))
    return out


def _newest(events: list[EmbeddingEvent]) -> dict[str, np.ndarray]:
    """Per entity the newest event, the first of equal times; live if it is an upsert."""
    newest: dict[str, EmbeddingEvent] = {}
    for e in events:
        if e.entity_id not in newest or e.event_time_ms > newest[e.entity_id].event_time_ms:
            newest[e.entity_id] = e
    return {k: e.vector for k, e in newest.items() if e.vector is not None}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([IndexKind.IVF_FLAT, IndexKind.HNSW]), OPS, st.integers(0, 150))
def test_any_event_sequence_and_any_snapshot_point_hold_the_newest_event_per_entity(
    kind: IndexKind, ops: list[tuple[bool, int, int]], cut: int
) -> None:
    # Low floors, so that IVF trains and HNSW rebuilds within short sequences.
    view = _view(index=kind, nlist=2, nprobe=2)
    events = _op_events(ops)
    cut = min(cut, len(events))
    rebuild = mock.patch.object(
        EmbeddingIndex, "_rebuild", autospec=True, side_effect=EmbeddingIndex._rebuild
    )
    dead_floor = mock.patch("actors.embedding_index.REBUILD_MIN_DEAD", 4)
    train_floor = mock.patch("features.embeddings.MIN_POINTS_PER_LIST", 5)
    with dead_floor, train_floor, rebuild as rebuilds, TemporaryDirectory() as tmp:
        index = EmbeddingIndex(view, "v1")
        index.apply(events[:cut])
        write_snapshot(index, Path(tmp), {0: cut})
        restored, offsets = read_snapshot(view, "v1", Path(tmp)) or pytest.fail("no snapshot")
        for candidate in (index, restored):
            for start in range(offsets[0], len(events), 7):  # in uneven batches
                candidate.apply(events[start : start + 7])
    expected = _newest(events)
    event(f"{kind.value}: {index.kind}, {'rebuilt' if rebuilds.called else 'never rebuilt'}")
    for candidate in (index, restored):
        assert {e: candidate.vector_of(e).tolist() for e in candidate.row_of} == {  # type: ignore[union-attr]
            e: v.tolist() for e, v in expected.items()
        }
        stored = candidate.faiss_index.ntotal
        assert stored == (candidate.rows if candidate.kind == "hnsw" else candidate.size)
        everything = candidate.search(np.zeros((1, DIM), dtype=np.float32), 200)[0].ids
        assert sorted(everything) == sorted(expected)
