"""Embedding events, the view definition, filters, strategy and rank fusion (pure code)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from features.embedding_search import (
    AttributeColumns,
    FilterError,
    Strategy,
    StrategyPolicy,
    choose_strategy,
    compile_filter,
    keyword_ranking,
    over_fetch_k,
    reciprocal_rank_fusion,
)
from features.embeddings import (
    EmbeddingEvent,
    EmbeddingRejected,
    EmbeddingValidator,
    EmbeddingView,
    Op,
)
from features.errors import RejectReason
from tests.unit.features.embedding_oracle import spec_matches

NOW = 1_764_000_000_000
VIEW = EmbeddingView(
    name="items",
    topic="fl.items.embeddings",
    dimension=4,
    model="item2vec",
    model_versions=("v1", "v2"),
    serving_version="v2",
    categories=frozenset({"colour", "size"}),
    numbers=frozenset({"price"}),
    max_tokens=3,
    nlist=4,
    nprobe=2,
)
VALIDATOR = EmbeddingValidator(VIEW, lambda: NOW)
R = RejectReason


def _event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "item_1",
        "model": "item2vec",
        "version": "v1",
        "op": "upsert",
        "time": NOW - 5,
        "vector": [0.5, 1, -2.0, 3.25],
        "categories": {"colour": "red"},
        "numbers": {"price": 9},
        "tokens": ["Leather", "boot"],
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


def _reason(raw: bytes | None) -> RejectReason:
    with pytest.raises(EmbeddingRejected) as caught:
        VALIDATOR.validate(raw)
    return caught.value.reason


def test_a_valid_upsert_becomes_a_typed_event_with_a_float32_vector() -> None:
    event = VALIDATOR.validate(orjson.dumps(_event()))
    assert event.entity_id == "item_1" and event.model_version == "v1" and event.op is Op.UPSERT
    assert event.vector is not None and event.vector.dtype == np.float32
    assert event.vector.tolist() == [0.5, 1.0, -2.0, 3.25]
    assert event.numbers == {"price": 9.0} and event.categories == {"colour": "red"}


def test_a_delete_needs_no_vector() -> None:
    event = VALIDATOR.validate(orjson.dumps(_event(op="delete", vector=None)))
    assert event.op is Op.DELETE and event.vector is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, R.BAD_JSON),
        (b"x" * (VIEW.max_payload_bytes + 1), R.OVERSIZED),
        (b"[1, 2]", R.BAD_JSON),
        (b'{"id": NaN}', R.NON_FINITE),
        (orjson.dumps(_event(id=None)), R.MISSING_FIELD),
        (orjson.dumps(_event(vector=None)), R.MISSING_FIELD),
        (orjson.dumps(_event(time=True)), R.WRONG_TYPE),
        (orjson.dumps(_event(op="merge")), R.WRONG_TYPE),
        (orjson.dumps(_event(vector=[1, 2, "3", 4])), R.WRONG_TYPE),
        (orjson.dumps(_event(categories={"colour": 3})), R.WRONG_TYPE),
        (orjson.dumps(_event(tokens=["a", "b", "c", "d"])), R.WRONG_TYPE),
        (orjson.dumps(_event(id="")), R.BAD_KEY),
        (orjson.dumps(_event(id="a\nb")), R.BAD_KEY),
        (orjson.dumps(_event(version="v9")), R.UNKNOWN_MODEL_VERSION),
        (orjson.dumps(_event(model="other")), R.UNKNOWN_MODEL_VERSION),
        (orjson.dumps(_event(categories={"brand": "x"})), R.UNKNOWN_ATTRIBUTE),
        (orjson.dumps(_event(vector=[1.0, 2.0, 3.0])), R.WRONG_DIMENSION),
        (orjson.dumps(_event(vector=[1.0, 2.0, 3.0, 1e39])), R.NON_FINITE),
        (orjson.dumps(_event(vector=[1.0, 2.0, 3.0, -2e15])), R.NON_FINITE),
        (orjson.dumps(_event(time=NOW + VIEW.max_future_skew_ms + 1)), R.FUTURE),
    ],
)
def test_each_bad_event_gets_its_reason(raw: bytes | None, reason: RejectReason) -> None:
    assert _reason(raw) is reason


@given(
    st.binary(max_size=200)
    | st.builds(orjson.dumps, st.dictionaries(st.text(), st.integers(-(2**63), 2**63 - 1)))
)
def test_any_bytes_are_either_an_event_or_a_reasoned_rejection(raw: bytes) -> None:
    try:
        VALIDATOR.validate(raw)
    except EmbeddingRejected as rejected:
        assert rejected.reason in RejectReason


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"serving_version": "v3"}, "serving_version"),
        ({"model_versions": ("v1", "v1"), "serving_version": "v1"}, "model_versions"),
        ({"numbers": frozenset({"colour"})}, "numbers"),
        ({"nprobe": 8}, "nprobe"),
    ],
)
def test_an_inconsistent_view_is_refused(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        EmbeddingView(**{**VIEW.model_dump(), **change})


def test_ivf_trains_once_every_list_can_get_enough_points() -> None:
    assert VIEW.train_size == 39 * VIEW.nlist


# --- Filters ------------------------------------------------------------------------------------

COLOURS = st.sampled_from(["red", "blue", "green"])
ROW = st.tuples(
    st.dictionaries(st.sampled_from(["colour", "size"]), COLOURS | st.sampled_from(["s", "m"])),
    st.dictionaries(st.just("price"), st.integers(0, 20).map(float)),
)
SPEC = st.fixed_dictionaries(
    {},
    optional={
        "colour": COLOURS | st.fixed_dictionaries({"in": st.lists(COLOURS, min_size=1)}),
        "size": st.sampled_from(["s", "m", "xl"]),
        "price": st.integers(0, 20)
        | st.dictionaries(
            st.sampled_from(["gt", "gte", "lt", "lte"]), st.integers(0, 20), min_size=1
        ),
    },
)


def _row_event(categories: dict[str, str], numbers: dict[str, float]) -> EmbeddingEvent:
    return EmbeddingEvent("e", "v1", Op.UPSERT, 0, None, categories, numbers, ())


@settings(max_examples=200)
@given(st.lists(ROW, max_size=40), SPEC, st.integers(0, 5))
def test_the_vectorised_filter_agrees_with_the_rules_read_from_the_spec(
    rows: list[tuple[dict[str, str], dict[str, float]]], spec: dict[str, Any], extra: int
) -> None:
    columns = AttributeColumns(VIEW.categories, VIEW.numbers)
    for row, (categories, numbers) in enumerate(rows):
        columns.set_row(row, _row_event(categories, numbers))
    mask = compile_filter(spec, VIEW).mask(columns, len(rows) + extra)
    # Rows past the columns' end hold no attribute: only an empty filter passes them.
    expected = [spec_matches(spec, c, n) for c, n in rows] + [not spec] * extra
    assert mask.tolist() == expected


def test_a_cleared_row_matches_no_clause_and_loses_its_tokens() -> None:
    columns = AttributeColumns(VIEW.categories, VIEW.numbers)
    columns.set_row(0, EmbeddingEvent("e", "v1", Op.UPSERT, 0, None, {"colour": "red"}, {}, ("a",)))
    columns.clear_row(0)
    assert not compile_filter({"colour": "red"}, VIEW).mask(columns, 1)[0]
    assert keyword_ranking(columns, ["a"], np.ones(1, dtype=bool)) == []


@pytest.mark.parametrize(
    "spec",
    [
        {"brand": "x"},
        {"colour": {"gt": 3}},
        {"price": "cheap"},
        {"price": {"between": [1, 2]}},
        {"colour": {"in": []}},
        {"price": float("nan")},
        {"price": {}},
    ],
)
def test_a_bad_filter_is_refused_with_a_clear_error(spec: dict[str, Any]) -> None:
    with pytest.raises(FilterError, match="filter on"):
        compile_filter(spec, VIEW)


def test_equal_filters_share_a_batching_key() -> None:
    a = compile_filter({"price": {"lt": 5, "gte": 1}, "colour": {"in": ["b", "a"]}}, VIEW)
    b = compile_filter({"colour": {"in": ["a", "b", "a"]}, "price": {"gte": 1.0, "lt": 5}}, VIEW)
    assert a.key == b.key and a != compile_filter({"colour": "a"}, VIEW)


# --- Strategy and fusion --------------------------------------------------------------------------


def test_the_strategy_follows_the_share_of_rows_that_pass() -> None:
    policy = StrategyPolicy(exact_max_rows=100, over_fetch_min_selectivity=0.5)
    assert choose_strategy(100, 100_000, policy) is Strategy.EXACT
    assert choose_strategy(5_000, 100_000, policy) is Strategy.ID_SELECTOR
    assert choose_strategy(50_000, 100_000, policy) is Strategy.OVER_FETCH


@given(st.integers(1, 100), st.integers(1, 10_000), st.integers(1, 10_000))
def test_over_fetch_asks_for_enough_but_never_more_than_exist(k: int, a: int, b: int) -> None:
    passing, total = min(a, b), max(a, b)
    asked = over_fetch_k(k, passing, total, StrategyPolicy())
    assert asked >= min(k * total / passing, total) or asked >= k
    assert asked <= max(k, total)


def test_rrf_rewards_items_ranked_well_by_both() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [2, 9, 1]], k=3)
    assert [item for item, _ in fused] == [2, 1, 9]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


@given(st.lists(st.lists(st.integers(0, 30), unique=True, max_size=15), max_size=4))
def test_rrf_scores_are_the_sum_of_reciprocal_ranks(rankings: list[list[int]]) -> None:
    fused = reciprocal_rank_fusion(rankings, k=100)
    expected = {
        item: sum(1 / (60 + r.index(item) + 1) for r in rankings if item in r)
        for r in rankings
        for item in r
    }
    assert dict(fused) == pytest.approx(expected)
    assert [s for _, s in fused] == sorted((s for _, s in fused), reverse=True)


def test_keyword_ranking_counts_distinct_tokens_and_respects_the_allowed_rows() -> None:
    columns = AttributeColumns((), ())
    for row, tokens in enumerate([("red boot",), ("boot",), ("Red", "BOOT"), ("hat",)]):
        columns.set_row(row, EmbeddingEvent("e", "v1", Op.UPSERT, 0, None, {}, {}, tokens))
    allowed = np.array([True, True, False, True])
    assert keyword_ranking(columns, ["red boots", "boot"], allowed) == [0, 1]
