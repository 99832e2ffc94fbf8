"""Rollouts: what applying a new view version publishes, each rollout step, and who sees which
version. Users rely on these: a changed view never replaces the served one unasked, a canary keeps
its entities, and a version still serving someone cannot be retired."""

from __future__ import annotations

from typing import Any

import pytest

from features.catalog import Catalog, Rollout
from features.demo import card_transactions_catalog
from features.errors import CatalogError
from features.registry import digest, plan
from features.rollout import (
    canary_bucket,
    merge_repository,
    retire,
    rollback,
    served_version,
    set_share,
)

V1 = card_transactions_catalog()


def _v2(catalog: Catalog = V1, *, add: bool = False) -> Catalog:
    """The demo catalog whose user_spend is version 2 with a 2h spend window (or an added
    feature)."""
    data: dict[str, Any] = catalog.model_dump(mode="json")
    data["rollouts"] = []
    view = next(v for v in data["views"] if v["name"] == "user_spend")
    view["version"] += 1
    for feature in view["features"]:
        if feature["name"] == "spend_sum_1h":
            feature["window"] = "2h"
    if add:
        view["features"].append({"name": "tx_count_2h", "aggregation": "count", "window": "2h"})
    return Catalog.from_dict(data)


def test_applying_a_new_view_version_starts_a_shadow_rollout_and_keeps_the_old_one() -> None:
    merged = merge_repository(V1, _v2())
    rollout = merged.rollout("user_spend")
    assert rollout is not None
    assert (rollout.previous, rollout.share) == (V1.view("user_spend"), 0)
    assert merged.view("user_spend").version == 2
    computed = [(v.name, v.version) for v in merged.computed_views]
    assert ("user_spend", 1) in computed and ("user_spend", 2) in computed
    assert [str(c) for c in plan(V1, merged)] == [
        "~ view user_spend: v1 -> v2",
        "+ rollout of view user_spend: v1 -> v2, share 0 %",
    ]


def test_an_unchanged_repository_carries_the_rollout_and_a_dropped_view_drops_it() -> None:
    merged = set_share(merge_repository(V1, _v2()), "user_spend", 2, 10)
    assert merge_repository(merged, _v2()) == merged
    data = _v2().model_dump(mode="json")
    data["views"] = [v for v in data["views"] if v["name"] != "user_spend"]
    data["services"] = []
    dropped = merge_repository(merged, Catalog.from_dict(data))
    assert dropped.rollouts == ()


def test_a_third_version_during_a_rollout_is_refused_naming_the_view() -> None:
    merged = merge_repository(V1, _v2())
    with pytest.raises(CatalogError, match="rolling out v2") as caught:
        merge_repository(merged, _v2(_v2()))
    assert caught.value.field == "views[user_spend].version"


def test_canary_buckets_are_sticky_spread_and_salted_per_view() -> None:
    ids = [f"u_{i}" for i in range(10_000)]
    buckets = [canary_bucket("user_spend", i) for i in ids]
    assert buckets == [canary_bucket("user_spend", i) for i in ids]
    share_10 = sum(b < 10 for b in buckets) / len(ids)
    assert 0.08 < share_10 < 0.12
    other = [canary_bucket("merchant_activity", i) for i in ids]
    assert other != buckets


def test_a_growing_share_only_adds_entities_to_the_candidate() -> None:
    shadow = merge_repository(V1, _v2())
    ids = [f"u_{i}" for i in range(2_000)]
    on_candidate = []
    for share in (0, 10, 50, 100):
        catalog = set_share(shadow, "user_spend", 2, share)
        on_candidate.append(
            {i for i in ids if served_version(catalog, "user_spend", i).version == 2}
        )
    assert on_candidate[0] == set() and on_candidate[-1] == set(ids)
    assert on_candidate[0] <= on_candidate[1] <= on_candidate[2] <= on_candidate[3]
    assert served_version(V1, "user_spend", "u_1").version == 1  # no rollout: the view itself


def test_rollout_steps_name_wrong_versions_and_shares() -> None:
    shadow = merge_repository(V1, _v2())
    with pytest.raises(CatalogError, match="--to must be 2"):
        set_share(shadow, "user_spend", 1, 10)
    with pytest.raises(CatalogError, match="between 0 and 100"):
        set_share(shadow, "user_spend", 2, 101)
    with pytest.raises(CatalogError, match="no rollout in progress"):
        set_share(shadow, "merchant_activity", 1, 10)
    with pytest.raises(CatalogError, match="unknown view"):
        rollback(shadow, "nope")


def test_rollback_returns_every_entity_and_keeps_computing_the_candidate() -> None:
    canary = set_share(merge_repository(V1, _v2()), "user_spend", 2, 10)
    back = rollback(canary, "user_spend")
    assert back.rollout("user_spend") == Rollout(
        view="user_spend", previous=V1.view("user_spend"), share=0
    )
    assert all(served_version(back, "user_spend", f"u_{i}").version == 1 for i in range(500))


def test_retire_only_a_version_no_entity_reads() -> None:
    canary = set_share(merge_repository(V1, _v2()), "user_spend", 2, 10)
    for version in (1, 2):
        with pytest.raises(CatalogError, match="serves"):
            retire(canary, "user_spend", version)
    with pytest.raises(CatalogError, match="not v3"):
        retire(canary, "user_spend", 3)
    promoted = retire(set_share(canary, "user_spend", 2, 100), "user_spend", 1)
    assert promoted == _v2()
    abandoned = retire(rollback(canary, "user_spend"), "user_spend", 2)
    assert abandoned == V1
    assert digest(abandoned) == digest(V1)  # no rollout left: the digest of before rollouts


def test_a_service_may_not_use_a_feature_the_previous_version_lacks_until_promoted() -> None:
    data = _v2(add=True).model_dump(mode="json")
    data["services"][0]["features"].append("user_spend:tx_count_2h")
    data["rollouts"] = [{"view": "user_spend", "previous": V1.view("user_spend"), "share": 10}]
    with pytest.raises(CatalogError, match="has no feature 'tx_count_2h'") as caught:
        Catalog.from_dict(data)
    assert caught.value.field == "services[fraud_v1].features[user_spend:tx_count_2h]"
    data["rollouts"][0]["share"] = 100
    assert Catalog.from_dict(data).rollout("user_spend") is not None


def test_a_rollout_may_not_change_the_entity_or_reuse_the_version() -> None:
    previous = V1.view("merchant_activity").model_dump(mode="json")
    previous["name"] = "user_spend"
    data = _v2().model_dump(mode="json")
    data["rollouts"] = [{"view": "user_spend", "previous": previous, "share": 0}]
    with pytest.raises(CatalogError, match="not its entity") as caught:
        Catalog.from_dict(data)
    assert caught.value.field == "rollouts[user_spend].previous.entity"
    data["rollouts"] = [{"view": "user_spend", "previous": _v2().view("user_spend"), "share": 0}]
    with pytest.raises(CatalogError, match="equals the candidate"):
        Catalog.from_dict(data)
