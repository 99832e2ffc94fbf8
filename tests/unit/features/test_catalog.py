from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from features.catalog import Aggregation, Catalog, Feature, FieldType
from features.demo import card_transactions_catalog
from features.errors import CatalogError


def _base() -> dict[str, Any]:
    """A small valid catalog as plain data; each test breaks one thing."""
    return {
        "entities": [
            {"name": "user", "join_key": "user_id"},
            {"name": "merchant", "join_key": "merchant_id"},
        ],
        "sources": [
            {
                "name": "tx",
                "topic": "fl.tx",
                "partitions": 4,
                "key_field": "user_id",
                "event_time_field": "ts",
                "event_type_field": "type",
                "event_types": ["tx"],
                "fields": {
                    "user_id": "string",
                    "merchant_id": "string",
                    "ts": "int",
                    "type": "string",
                    "amount": "float",
                    "flag": "bool",
                },
                "out_of_orderness": "5s",
                "allowed_lateness": "30s",
                "max_future_skew": "1m",
                "max_payload_bytes": 4096,
            }
        ],
        "views": [
            {
                "name": "user_spend",
                "version": 1,
                "entity": "user",
                "source": "tx",
                "ttl": "2d",
                "freshness_target": "5s",
                "features": [
                    {"name": "n_1h", "aggregation": "count", "window": "1h", "default": 0},
                    {
                        "name": "spend_sum_1h",
                        "aggregation": "sum",
                        "column": "amount",
                        "window": "1h",
                    },
                    {"name": "last_amount", "aggregation": "last", "column": "amount"},
                ],
            },
            {
                "name": "merchant_stats",
                "version": 2,
                "entity": "merchant",
                "source": "tx",
                "ttl": "1d",
                "freshness_target": "10s",
                "features": [{"name": "n_1h", "aggregation": "count", "window": "1h"}],
            },
        ],
        "services": [{"name": "svc", "features": ["user_spend:n_1h", "merchant_stats:n_1h"]}],
    }


def _error(data: dict[str, Any]) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        Catalog.from_dict(data)
    return info.value


def _feature(data: dict[str, Any], view: int, index: int) -> dict[str, Any]:
    feature: dict[str, Any] = data["views"][view]["features"][index]
    return feature


def test_valid_catalog_and_lookups() -> None:
    catalog = Catalog.from_dict(_base())
    view = catalog.view("user_spend")
    assert view.feature("spend_sum_1h").aggregation is Aggregation.SUM
    assert catalog.feature("user_spend:spend_sum_1h").window == timedelta(hours=1)
    assert catalog.resolve("merchant_stats:n_1h")[0].version == 2
    assert catalog.service("svc").features == ("user_spend:n_1h", "merchant_stats:n_1h")
    assert catalog.source("tx").fields["amount"] is FieldType.FLOAT
    assert catalog.source("tx").allowed_lateness_ms == 30_000
    assert [catalog.resolve(ref)[0].entity for ref in catalog.service("svc").features] == [
        "user",
        "merchant",
    ]


def test_a_view_keyed_unlike_its_source_reads_its_entity_join_key() -> None:
    catalog = Catalog.from_dict(_base())
    assert catalog.view("user_spend").key_field(catalog) == catalog.source("tx").key_field
    assert catalog.view("merchant_stats").key_field(catalog) == "merchant_id"


def test_cusum_is_refused_on_a_view_keyed_unlike_its_source() -> None:
    """Its state is sequential: partial states from several partitions cannot be merged."""
    cusum = {"name": "amount_cusum", "aggregation": "cusum", "column": "amount"}
    data = _base()
    data["views"][0]["features"].append(cusum)
    assert Catalog.from_dict(data).feature("user_spend:amount_cusum").window is None
    data = _base()
    data["views"][1]["features"].append(cusum)
    error = _error(data)
    assert error.field == "views[merchant_stats].features[amount_cusum].aggregation"
    assert "cannot merge" in str(error)


@pytest.mark.parametrize(
    ("ref", "message"),
    [("user_spend:nope", "no feature"), ("nope:n_1h", "unknown view"), ("n_1h", "not 'view")],
)
def test_unknown_feature_refs_raise(ref: str, message: str) -> None:
    catalog = Catalog.from_dict(_base())
    with pytest.raises(CatalogError, match=message):
        catalog.feature(ref)


def test_unknown_lookups_raise() -> None:
    catalog = Catalog.from_dict(_base())
    for lookup in (catalog.view, catalog.service, catalog.entity, catalog.source):
        with pytest.raises(CatalogError, match="unknown"):
            lookup("missing")


def test_unknown_entity_names_the_field() -> None:
    data = _base()
    data["views"][0]["entity"] = "account"
    err = _error(data)
    assert err.field == "views[user_spend].entity"
    assert "account" in str(err)


def test_unknown_source_names_the_field() -> None:
    data = _base()
    data["views"][1]["source"] = "clicks"
    assert _error(data).field == "views[merchant_stats].source"


def test_source_without_the_join_key_names_the_view_entity() -> None:
    data = _base()
    data["entities"][1]["join_key"] = "shop_id"
    assert _error(data).field == "views[merchant_stats].entity"


def test_unknown_column_names_the_feature_column() -> None:
    data = _base()
    _feature(data, 0, 1)["column"] = "price"
    err = _error(data)
    assert err.field == "views[user_spend].features[spend_sum_1h].column"
    assert "price" in str(err)


@pytest.mark.parametrize("aggregation", ["sum", "mean", "min", "max", "cusum"])
def test_numeric_aggregations_refuse_non_numeric_columns(aggregation: str) -> None:
    data = _base()
    feature = _feature(data, 0, 1)
    feature.update(aggregation=aggregation, column="merchant_id")
    if aggregation == "cusum":
        del feature["window"]
    err = _error(data)
    assert err.field == "views[user_spend].features[spend_sum_1h].column"
    assert "float or int" in str(err)


def test_bool_is_not_numeric() -> None:
    data = _base()
    _feature(data, 0, 1)["column"] = "flag"
    assert _error(data).field == "views[user_spend].features[spend_sum_1h].column"


def test_window_without_a_tile_names_the_window() -> None:
    data = _base()
    _feature(data, 0, 1)["window"] = "61s"
    err = _error(data)
    assert err.field == "views[user_spend].features[spend_sum_1h].window"
    assert "tile" in str(err)


def test_ttl_shorter_than_longest_window() -> None:
    data = _base()
    _feature(data, 0, 0)["window"] = "7d"
    err = _error(data)
    assert err.field == "views[user_spend].ttl"


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("entities", "entities[user].name"),
        ("sources", "sources[tx].name"),
        ("views", "views[user_spend].name"),
        ("services", "services[svc].name"),
    ],
)
def test_duplicate_names(section: str, field: str) -> None:
    data = _base()
    data[section].append(copy.deepcopy(data[section][0]))
    assert _error(data).field == field


def test_duplicate_feature_in_a_view() -> None:
    data = _base()
    data["views"][0]["features"].append({"name": "n_1h", "aggregation": "count", "window": "5m"})
    assert _error(data).field == "views[user_spend].features[n_1h].name"


def test_service_with_unknown_or_duplicate_refs() -> None:
    data = _base()
    data["services"][0]["features"].append("user_spend:gone")
    assert _error(data).field == "services[svc].features[user_spend:gone]"
    data = _base()
    data["services"][0]["features"].append("user_spend:n_1h")
    assert _error(data).field == "services[svc].features[user_spend:n_1h]"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"column": None}, "column"),  # sum without a column
        ({"window": None}, "window"),  # sum without a window
        ({"aggregation": "count"}, "column"),  # count with a column
        ({"aggregation": "last"}, "window"),  # last is not windowed
        ({"n": 3}, "n"),  # n only for last_n
        ({"aggregation": "last_n"}, "n"),  # last_n needs n
        ({"window": "soon"}, "window"),  # pydantic-level: bad duration string
        ({"window": 3600}, "window"),  # a bare number has no unit
        ({"hll_precision": 20}, "hll_precision"),
        ({"aggregation": "median"}, "aggregation"),
        ({"colour": "red"}, "colour"),  # extra keys are refused
        ({"default": float("nan")}, "default"),
    ],
)
def test_feature_level_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    data = _base()
    _feature(data, 0, 1).update(change)
    assert _error(data).field == f"views[user_spend].features[spend_sum_1h].{field}"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"key_field": "amount"}, "sources[tx].key_field"),  # key must be a string field
        ({"event_time_field": "type"}, "sources[tx].event_time_field"),
        ({"allowed_lateness": "-5s"}, "sources[tx].allowed_lateness"),
        ({"partitions": 0}, "sources[tx].partitions"),
        ({"topic": "bad topic"}, "sources[tx].topic"),
        ({"fields": {"user_id": "uuid"}}, "sources[tx].fields.user_id"),
    ],
)
def test_source_level_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    data = _base()
    data["sources"][0].update(change)
    assert _error(data).field == field


def test_view_level_errors_name_the_field() -> None:
    data = _base()
    data["views"][0]["version"] = 0
    assert _error(data).field == "views[user_spend].version"
    data = _base()
    data["views"][0]["freshness_target"] = "0s"
    assert _error(data).field == "views[user_spend].freshness_target"
    data = _base()
    data["views"][0]["name"] = "User Spend"
    assert _error(data).field == "views[User Spend].name"


def test_missing_section_item_without_name_uses_the_index() -> None:
    data = _base()
    del data["entities"][0]["name"]
    assert _error(data).field == "entities[0].name"


def test_direct_construction_raises_cross_reference_errors_as_catalog_errors() -> None:
    catalog = Catalog.from_dict(_base())
    with pytest.raises(CatalogError) as info:
        Catalog(entities=catalog.entities, sources=(), views=catalog.views)
    assert info.value.field == "views[user_spend].source"


def test_direct_feature_construction_raises_pydantic_errors() -> None:
    with pytest.raises(ValidationError, match="column"):
        Feature(name="s", aggregation=Aggregation.SUM, window=timedelta(hours=1))


def test_models_are_frozen() -> None:
    catalog = Catalog.from_dict(_base())
    with pytest.raises(ValidationError):
        catalog.view("user_spend").version = 3


def test_json_dump_round_trips() -> None:
    catalog = card_transactions_catalog()
    dumped = catalog.model_dump(mode="json")
    assert dumped["views"][0]["ttl"] == "8d"
    assert Catalog.from_dict(dumped) == catalog
