"""A view's version catalog: add beside, switch at once, retire for a grace period, drop."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from features.embedding_catalog import Retirement, VersionChangeRefused, ViewCatalog
from features.embeddings import EmbeddingView

VIEW = EmbeddingView(
    name="items",
    topic="fl.items.embeddings",
    dimension=4,
    model="item2vec",
    model_versions=("v1",),
    serving_version="v1",
    categories=frozenset({"colour"}),
)
HOUR_MS = 3_600_000


def test_a_new_version_is_indexed_beside_the_others_and_reads_stay() -> None:
    catalog = ViewCatalog.initial(VIEW).add("v2")
    assert (catalog.generation, catalog.view.model_versions) == (2, ("v1", "v2"))
    assert catalog.view.serving_version == "v1"
    with pytest.raises(VersionChangeRefused, match="already"):
        catalog.add("v2")


def test_a_switch_moves_reads_and_retires_the_previous_version_for_the_grace_period() -> None:
    catalog = ViewCatalog.initial(VIEW).add("v2").switch("v2", now_ms=1000, grace_ms=HOUR_MS)
    assert catalog.view.serving_version == "v2"
    assert catalog.view.model_versions == ("v1", "v2")  # still searchable while it retires
    assert catalog.retiring == (Retirement(version="v1", drop_after_ms=1000 + HOUR_MS),)
    assert catalog.due(1000 + HOUR_MS - 1) == ()
    assert catalog.due(1000 + HOUR_MS) == ("v1",)


def test_switching_to_the_serving_version_changes_nothing() -> None:
    catalog = ViewCatalog.initial(VIEW)
    assert catalog.switch("v1", now_ms=0, grace_ms=0) is catalog


def test_switching_back_cancels_the_retirement() -> None:
    switched = ViewCatalog.initial(VIEW).add("v2").switch("v2", now_ms=0, grace_ms=HOUR_MS)
    back = switched.switch("v1", now_ms=10, grace_ms=HOUR_MS)
    assert back.view.serving_version == "v1"
    assert back.retiring == (Retirement(version="v2", drop_after_ms=10 + HOUR_MS),)


def test_only_a_live_version_can_serve_and_the_serving_one_cannot_retire() -> None:
    catalog = ViewCatalog.initial(VIEW).add("v2")
    with pytest.raises(VersionChangeRefused, match="not a version"):
        catalog.switch("v3", now_ms=0, grace_ms=0)
    with pytest.raises(VersionChangeRefused, match="serves reads"):
        catalog.retire("v1", now_ms=0, grace_ms=0)
    with pytest.raises(VersionChangeRefused, match="negative"):
        catalog.retire("v2", now_ms=0, grace_ms=-1)


def test_retiring_again_sets_the_new_drop_time() -> None:
    catalog = ViewCatalog.initial(VIEW).add("v2").retire("v2", now_ms=0, grace_ms=HOUR_MS)
    assert catalog.retire("v2", now_ms=5, grace_ms=0).due(5) == ("v2",)


def test_a_dropped_version_leaves_the_view_and_is_forgotten_once_deleted() -> None:
    catalog = ViewCatalog.initial(VIEW).add("v2").switch("v2", now_ms=0, grace_ms=0)
    dropped = catalog.drop("v1")
    assert (dropped.view.model_versions, dropped.dropping, dropped.retiring) == (
        ("v2",),
        ("v1",),
        (),
    )
    with pytest.raises(VersionChangeRefused, match="still being dropped"):
        dropped.add("v1")
    gone = dropped.forget("v1")
    assert (gone.dropping, gone.generation) == ((), dropped.generation + 1)
    assert gone.add("v1").view.model_versions == ("v2", "v1")
    with pytest.raises(VersionChangeRefused, match="not retiring"):
        gone.drop("v2")
    with pytest.raises(VersionChangeRefused, match="not being dropped"):
        gone.forget("v1")


def test_the_invariants_are_checked_on_construction() -> None:
    with pytest.raises(ValidationError, match="serving version"):
        ViewCatalog(generation=1, view=VIEW, retiring=(Retirement(version="v1", drop_after_ms=0),))
    with pytest.raises(ValidationError, match="no longer live"):
        ViewCatalog(generation=1, view=VIEW, dropping=("v1",))
    with pytest.raises(ValidationError, match="live versions"):
        ViewCatalog(generation=1, view=VIEW, retiring=(Retirement(version="v9", drop_after_ms=0),))


def test_a_catalog_round_trips_through_json() -> None:
    catalog = ViewCatalog.initial(VIEW).add("v2").switch("v2", now_ms=7, grace_ms=HOUR_MS)
    assert ViewCatalog.model_validate_json(catalog.model_dump_json()) == catalog
