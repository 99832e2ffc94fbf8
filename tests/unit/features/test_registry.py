"""Feature repositories and registry versions (features.registry): what a user's folder of
definitions becomes, how its errors name the culprit, and what a plan shows and refuses."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from features.catalog import Catalog
from features.demo import card_transactions_catalog
from features.errors import CatalogError
from features.registry import (
    RegistryVersion,
    RepositoryError,
    catalog_from_documents,
    digest,
    plan,
)

AT = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)


def _documents() -> dict[str, Any]:
    """The demo catalog split into documents as a user would keep it."""
    data = card_transactions_catalog().model_dump(mode="json")
    docs: dict[str, Any] = {
        "entities.yaml": {"entities": data["entities"]},
        "sources.yaml": {"sources": data["sources"]},
        "services.yaml": {"services": data["services"]},
    }
    for view in data["views"]:
        docs[f"views/{view['name']}.yaml"] = {"views": [view]}
    return docs


def _view(docs: dict[str, Any], name: str) -> dict[str, Any]:
    view: dict[str, Any] = docs[f"views/{name}.yaml"]["views"][0]
    return view


def test_the_documents_union_is_the_catalog_they_define() -> None:
    built = catalog_from_documents(_documents())
    assert plan(card_transactions_catalog(), built) == []
    assert digest(built) == digest(catalog_from_documents(_documents()))


def test_an_invalid_field_is_blamed_on_the_document_that_defined_it() -> None:
    docs = _documents()
    _view(docs, "user_spend")["ttl"] = "1h"  # shorter than its 7-day window
    with pytest.raises(RepositoryError) as caught:
        catalog_from_documents(docs)
    assert caught.value.document == "views/user_spend.yaml"
    assert caught.value.field == "views[user_spend].ttl"
    assert str(caught.value).startswith("views/user_spend.yaml: views[user_spend].ttl: ")


def test_cusum_on_a_view_keyed_unlike_its_source_is_refused_naming_the_feature() -> None:
    docs = _documents()
    merchant = _view(docs, "merchant_activity")
    merchant["features"].append(
        {"name": "amount_cusum", "aggregation": "cusum", "column": "amount"}
    )
    with pytest.raises(RepositoryError) as caught:
        catalog_from_documents(docs)
    assert caught.value.document == "views/merchant_activity.yaml"
    assert caught.value.field == "views[merchant_activity].features[amount_cusum].aggregation"


def test_one_name_defined_in_two_documents_names_both() -> None:
    docs = _documents()
    docs["more.yaml"] = {"entities": [{"name": "user", "join_key": "user_id"}]}
    with pytest.raises(RepositoryError, match=r"also defined in entities\.yaml") as caught:
        catalog_from_documents(docs)
    assert caught.value.document == "more.yaml"


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        (["a list"], "a document is a mapping"),
        ({"feature_views": []}, "unknown top-level key 'feature_views'"),
        ({"views": {"name": "x"}}, "views: must be a list"),
        ({"views": [{"version": 1}]}, "views[0]: needs a name"),
    ],
)
def test_a_malformed_document_gets_a_clear_error(document: Any, needle: str) -> None:
    docs = _documents()
    docs["bad.yaml"] = document
    with pytest.raises(RepositoryError, match=r"^bad.yaml: ") as caught:
        catalog_from_documents(docs)
    assert needle in str(caught.value)


def test_an_empty_document_defines_nothing() -> None:
    docs = {**_documents(), "empty.yaml": None}
    assert plan(card_transactions_catalog(), catalog_from_documents(docs)) == []


def test_a_plan_lists_additions_removals_and_changes_by_kind_and_name() -> None:
    docs = _documents()
    del docs["views/merchant_activity.yaml"]
    docs["services.yaml"] = {"services": []}  # the fraud service used merchant features
    _view(docs, "user_spend")["version"] = 2
    _view(docs, "user_spend")["features"][0]["window"] = "10m"
    docs["entities.yaml"]["entities"].append({"name": "device", "join_key": "merchant_id"})
    changes = [str(c) for c in plan(card_transactions_catalog(), catalog_from_documents(docs))]
    assert changes == [
        "+ entity device",
        "- view merchant_activity: v1",
        "~ view user_spend: v1 -> v2",
        "- service fraud_v1",
    ]


def test_a_changed_view_that_keeps_its_version_is_refused() -> None:
    docs = _documents()
    _view(docs, "user_spend")["features"][0]["window"] = "10m"
    with pytest.raises(CatalogError, match="give the changed definition version 2") as caught:
        plan(card_transactions_catalog(), catalog_from_documents(docs))
    assert caught.value.field == "views[user_spend].version"


def test_the_first_plan_adds_everything() -> None:
    changes = plan(None, card_transactions_catalog())
    assert {c.op for c in changes} == {"+"}
    assert len(changes) == 2 + 1 + 2 + 1  # entities, sources, views, services


def test_a_version_round_trips_and_refuses_a_record_whose_catalog_was_altered() -> None:
    version = RegistryVersion(1, 0, card_transactions_catalog(), AT)
    again = RegistryVersion.decode(version.encode())
    assert again == version
    tampered = version.encode().replace(b'"ttl": "8d"', b'"ttl": "9d"')
    assert tampered != version.encode()
    with pytest.raises(CatalogError, match="does not match its digest"):
        RegistryVersion.decode(tampered)
    with pytest.raises(CatalogError, match="unreadable"):
        RegistryVersion.decode(b"{not json")


def test_versions_count_from_one_in_order_with_an_aware_time() -> None:
    catalog = card_transactions_catalog()
    with pytest.raises(CatalogError):
        RegistryVersion(3, 1, catalog, AT)
    with pytest.raises(CatalogError):
        RegistryVersion(0, -1, catalog, AT)
    with pytest.raises(CatalogError, match="timezone-aware"):
        RegistryVersion(1, 0, catalog, datetime(2026, 12, 5))  # noqa: DTZ001 - the naive case


def test_equal_catalogs_in_another_order_have_the_same_plan_but_order_is_kept() -> None:
    docs = _documents()
    reordered = copy.deepcopy(docs)
    reordered["views/user_spend.yaml"]["views"][0]["features"].reverse()
    a, b = catalog_from_documents(docs), catalog_from_documents(reordered)
    assert isinstance(b, Catalog)
    # Feature order is part of a view's definition (responses list features in it): a change.
    with pytest.raises(CatalogError, match="user_spend"):
        plan(a, b)
