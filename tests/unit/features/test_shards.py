"""Partitions split among shards: each owned exactly once, by a shard derived from its index
alone."""

from __future__ import annotations

import pytest

from features.shards import Shard


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shards_own_every_partition_exactly_once(count: int) -> None:
    partitions = list(range(8))
    owned = [p for i in range(count) for p in Shard(i, count).partitions(partitions)]
    assert sorted(owned) == partitions
    assert all(Shard(i, count).partitions(partitions) for i in range(count))


def test_a_shard_outside_its_count_is_refused() -> None:
    with pytest.raises(ValueError, match="shard 2 of 2"):
        Shard(2, 2)
