"""Serving during a rollout: each entity is answered by the one version its canary bucket picks,
with that version's own values (equal to what a replica serving only that version answers), the
answer names the version per entity and per view, and a feature one answering version lacks is
refused instead of served as a default."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from features.catalog import Catalog
from features.demo import card_transactions_catalog
from features.rollout import merge_repository, served_version, set_share
from serve_apps.http import ServingHttp
from serve_apps.plan import CatalogIndex
from serve_apps.wiring import build_http
from tests.unit.features.test_rollout import _v2
from tests.unit.serve_apps.fakes import READ_KEY, T0, FakeClock, FakeStore, config, event, tiles_for

V1 = card_transactions_catalog()
USERS = [f"u_{i}" for i in range(9)]
FEATURES = ["user_spend:spend_sum_1h", "user_spend:tx_count_1h", "merchant_activity:tx_count_1h"]


def _store() -> FakeStore:
    """Both versions' blocks, as the pipeline computes them during the rollout."""
    both = merge_repository(V1, _v2())
    events = [
        event(i, USERS[i % 9], f"m_{i % 3}", 10.0 + i, T0 - 5_400_000 + i * 60_000)
        for i in range(120)
    ]
    store = FakeStore("redis-us-east")
    store.apply(tiles_for(both, events, T0))
    return store


def _http(store: FakeStore, catalog: Catalog) -> ServingHttp:
    clock = FakeClock(wall=T0)
    http = build_http(config(), monotonic=clock, wall_ms=clock.wall_ms, stores=[(store, 5.0)])
    http.use_catalog(CatalogIndex(catalog, "default"), 2)
    return http


def _post(http: ServingHttp, body: dict[str, Any]) -> tuple[int, Any]:
    async def chunks():  # type: ignore[no-untyped-def]
        yield orjson.dumps(body)

    status, _, out = asyncio.run(
        http.handle("POST", "/v1/features", {"x-api-key": READ_KEY}, chunks)
    )
    return status, orjson.loads(out)


def _rows(http: ServingHttp, **extra: Any) -> Any:
    body = {"entities": {"user": USERS, "merchant": ["m_0"]}, "features": FEATURES, **extra}
    status, answer = _post(http, body)
    assert status == 200, answer
    return answer


def test_a_canary_answers_each_entity_from_its_own_version_and_names_it() -> None:
    store = _store()
    canary = set_share(merge_repository(V1, _v2()), "user_spend", 2, 40)
    answer = _rows(_http(store, canary))
    only_v1 = {r["id"]: r for r in _rows(_http(store, V1))["results"]}
    only_v2 = {r["id"]: r for r in _rows(_http(store, _v2()))["results"]}
    picked = {u: served_version(canary, "user_spend", u).version for u in USERS}
    assert set(picked.values()) == {1, 2}  # this sample holds entities of both versions
    assert answer["view_versions"] == {"user_spend": [1, 2], "merchant_activity": [1]}
    for row in answer["results"]:
        if row["entity"] != "user":
            continue
        version = picked[row["id"]]
        assert row["versions"] == {"user_spend": version}
        alone = (only_v1 if version == 1 else only_v2)[row["id"]]
        assert row["features"] == alone["features"]
    # The 2h window of v2 differs from v1's 1h somewhere, so the check above can tell them apart.
    assert any(
        only_v1[u]["features"]["user_spend:spend_sum_1h"]["value"]
        != only_v2[u]["features"]["user_spend:spend_sum_1h"]["value"]
        for u in USERS
    )


def test_the_columnar_shape_names_the_version_of_every_id() -> None:
    canary = set_share(merge_repository(V1, _v2()), "user_spend", 2, 40)
    answer = _rows(_http(_store(), canary), format="columns")
    user_spend = next(v for v in answer["views"] if v["view"] == "user_spend")
    expected = [served_version(canary, "user_spend", u).version for u in user_spend["ids"]]
    assert user_spend["versions"] == expected


def test_shadow_reads_the_previous_version_only_and_promotion_the_candidate_only() -> None:
    store = _store()
    shadow = merge_repository(V1, _v2())
    assert _rows(_http(store, shadow))["view_versions"]["user_spend"] == [1]
    promoted = set_share(shadow, "user_spend", 2, 100)
    assert _rows(_http(store, promoted))["view_versions"]["user_spend"] == [2]


def test_a_feature_the_previous_version_lacks_is_refused_until_promoted() -> None:
    canary = set_share(merge_repository(V1, _v2(add=True)), "user_spend", 2, 10)
    body = {"entities": {"user": ["u_1"]}, "features": ["user_spend:tx_count_2h"]}
    status, answer = _post(_http(_store(), canary), body)
    assert (status, answer["error"]) == (422, "feature_not_served")
    promoted = set_share(canary, "user_spend", 2, 100)
    status, _ = _post(_http(_store(), promoted), body)
    assert status == 200
