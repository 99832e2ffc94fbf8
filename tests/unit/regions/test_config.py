from __future__ import annotations

import pytest
from pydantic import ValidationError

from regions.config import RegionConfig, RegionTopology, default_topology


def _region(
    name: str, redis_port: int, dynamodb_port: int, at: tuple[float, float]
) -> RegionConfig:
    return RegionConfig(
        name=name,
        aws_region="us-east-1",
        redis_port=redis_port,
        dynamodb_port=dynamodb_port,
        coordinates=at,
    )


def test_default_topology_has_two_regions_with_distinct_stores() -> None:
    topology = default_topology()
    assert topology.names == ("us-east", "eu-west")
    assert topology.get("eu-west").dynamodb_endpoint_url == "http://127.0.0.1:14567"


def test_failover_order_is_nearest_first_and_excludes_home() -> None:
    topology = RegionTopology(
        regions=(
            _region("us-east", 1, 2, (38.9, -77.0)),
            _region("eu-west", 3, 4, (53.3, -6.3)),
            _region("us-west", 5, 6, (37.4, -122.0)),
        )
    )
    assert [r.name for r in topology.failover_order("us-east")] == ["us-west", "eu-west"]
    assert [r.name for r in topology.failover_order("eu-west")] == ["us-east", "us-west"]


@pytest.mark.parametrize("bad", ["US-EAST", "a", "east_1", "-east", "x" * 40])
def test_region_names_must_be_dns_safe(bad: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        _region(bad, 1, 2, (0, 0))


def test_two_regions_may_not_share_a_store_port() -> None:
    with pytest.raises(ValidationError, match="share a host and port"):
        RegionTopology(regions=(_region("us-east", 1, 2, (0, 0)), _region("eu-west", 2, 3, (0, 0))))


def test_duplicate_region_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="duplicate region"):
        RegionTopology(regions=(_region("us-east", 1, 2, (0, 0)), _region("us-east", 3, 4, (0, 0))))


def test_unknown_region_lookup_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="us-east, eu-west"):
        default_topology().get("ap-south")
