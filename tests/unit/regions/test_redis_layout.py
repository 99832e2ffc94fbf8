"""Redis key layout: one server keeps today's keys and marker; a cluster's buckets are tagged so
that one entity's views, and a bucket's marker, share a slot, and buckets spread evenly over
masters that own equal contiguous slot ranges."""

from __future__ import annotations

from collections import Counter

import redis
import redis.exceptions as rex
from redis.crc import key_slot

from features.errors import StoreUnavailable
from features.keys import OnlineKey
from regions.exceptions import StoreRejected
from regions.redis_clients import layout_of, mapped
from regions.redis_layout import CLUSTER, CLUSTER_BUCKETS, SINGLE, RedisLayout, bucket_tags
from regions.tiles import TileWrite


def _key(view: str, entity: str) -> str:
    return OnlineKey("default", view, 1, entity).encode()


def test_one_server_keeps_the_keys_and_the_one_marker() -> None:
    key = _key("user_spend", "u_1")
    assert SINGLE.stored_key(key) == key
    assert SINGLE.marker_key(SINGLE.bucket_of(key)) == "fl:meta:epoch"
    assert list(SINGLE.all_buckets) == [0]
    assert RedisLayout(1, "fl:test:marker").marker_key(0) == "fl:test:marker"


def test_an_entitys_views_and_its_bucket_marker_share_one_slot() -> None:
    for entity in ("u_1", "u_000042", "a b/c", "ü"):
        keys = [_key(view, entity) for view in ("user_spend", "user_risk")]
        buckets = {CLUSTER.bucket_of(k) for k in keys}
        assert len(buckets) == 1
        slots = {key_slot(CLUSTER.stored_key(k).encode()) for k in keys}
        slots.add(key_slot(CLUSTER.marker_key(buckets.pop()).encode()))
        assert len(slots) == 1


def test_stored_keys_keep_the_view_prefix_and_the_acl_prefix() -> None:
    key = _key("user_spend", "u_1")
    stored = CLUSTER.stored_key(key)
    assert stored.startswith(f"{key}:{{") and stored.endswith("}")
    assert stored.startswith("fl:") and CLUSTER.marker_key(0).startswith("fl:")


def test_bucket_tags_land_one_per_slot_range() -> None:
    span = 16384 // CLUSTER_BUCKETS
    tags = bucket_tags(CLUSTER_BUCKETS)
    assert [key_slot(t.encode()) // span for t in tags] == list(range(CLUSTER_BUCKETS))
    # Three masters owning equal contiguous ranges each hold a third of the buckets.
    per_master = Counter(key_slot(t.encode()) * 3 // 16384 for t in tags)
    assert sorted(per_master.values()) == [21, 21, 22]


def test_a_batch_groups_by_bucket_in_batch_order() -> None:
    writes = [
        TileWrite(_key("user_spend", f"u_{i % 5}"), f"f{i}", b"v", i + 1, 1000) for i in range(20)
    ]
    groups = CLUSTER.group(writes)
    assert sum(len(g) for g in groups.values()) == 20
    for bucket, group in groups.items():
        assert all(CLUSTER.bucket_of(w.key) == bucket for w in group)
        assert group == [w for w in writes if CLUSTER.bucket_of(w.key) == bucket]
    assert list(SINGLE.group(writes)) == [0]


def test_a_down_cluster_is_unavailable_not_a_rejection() -> None:
    assert isinstance(mapped("redis-x", rex.ClusterDownError("CLUSTERDOWN")), StoreUnavailable)
    assert isinstance(mapped("redis-x", rex.RedisClusterException("no node")), StoreUnavailable)
    assert isinstance(mapped("redis-x", rex.NoPermissionError("acl")), StoreRejected)


def test_the_client_kind_picks_the_layout() -> None:
    single = redis.Redis()
    assert layout_of(single) == SINGLE
    assert layout_of(single, "fl:test:m").marker_key(0) == "fl:test:m"
    cluster = redis.RedisCluster.__new__(redis.RedisCluster)  # no connection needed to judge
    assert layout_of(cluster) == CLUSTER
