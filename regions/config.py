"""Region topology: which regions exist, where their stores listen, and who is nearest to whom.

Invariants:
- region names are unique, lowercase and DNS-safe (they appear in keys, metrics and file names);
- every store port is unique across the whole topology (two regions never share a store process);
- ``failover_order(region)`` never contains ``region`` itself and lists every other region exactly
  once, nearest first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_REGION_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")

# "local": each region's DynamoDB is an endpoint on this machine (moto) signed with local
# credentials; "aws": the real service, no endpoint URL and boto3's default credential chain.
DynamoDBMode = Literal["local", "aws"]
DEFAULT_DYNAMODB_MODE: DynamoDBMode = "local"


class RegionConfig(BaseModel):
    """One region's online stores: Redis for hot reads, a DynamoDB endpoint as durable replica."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    aws_region: str = Field(description="AWS region name boto3 signs requests for, e.g. us-east-1")
    redis_host: str = "127.0.0.1"
    redis_port: int = Field(ge=1, le=65535)
    # Masters of the region's Redis: 1 is one server; more is a Redis Cluster reached through
    # its node at redis_host:redis_port (clients discover the others; regions/redis_layout.py).
    redis_shards: int = Field(default=1, ge=1, le=16)
    dynamodb_endpoint_host: str = "127.0.0.1"
    dynamodb_port: int = Field(ge=1, le=65535)
    dynamodb_table: str = "freshline_online"
    dynamodb_mode: DynamoDBMode = DEFAULT_DYNAMODB_MODE
    # Lower is nearer; failover walks other regions by ascending distance from this one.
    coordinates: tuple[float, float] = (0.0, 0.0)

    @field_validator("name")
    @classmethod
    def _dns_safe(cls, value: str) -> str:
        if not _REGION_NAME.match(value):
            raise ValueError("region names are lowercase letters, digits and '-', 3 to 32 long")
        return value

    @property
    def dynamodb_endpoint_url(self) -> str:
        """The local endpoint (moto); a client for an ``aws`` region uses none (regions/aws.py)."""
        return f"http://{self.dynamodb_endpoint_host}:{self.dynamodb_port}"


class RedisUsers(BaseModel):
    """Names of the Redis ACL users every region's Redis has (passwords travel separately)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    admin_user: str = "fl-admin"
    writer_user: str = "fl-writer"
    reader_user: str = "fl-reader"


class RegionTopology(BaseModel):
    """All regions of a deployment. The first region is the default home region."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    regions: tuple[RegionConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> RegionTopology:
        names = [r.name for r in self.regions]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate region names in {names}")
        ports = [(r.redis_host, r.redis_port) for r in self.regions]
        ports += [(r.dynamodb_endpoint_host, r.dynamodb_port) for r in self.regions if _local(r)]
        if len(set(ports)) != len(ports):
            raise ValueError("two stores share a host and port; every region needs its own")
        return self

    def __iter__(self) -> Iterator[RegionConfig]:  # type: ignore[override]
        return iter(self.regions)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    @property
    def dynamodb_mode(self) -> DynamoDBMode:
        """Local or real DynamoDB: one mode for the whole deployment (the first region's)."""
        return self.regions[0].dynamodb_mode

    @property
    def redis_shards(self) -> int:
        """Masters of each region's Redis: one profile for the whole deployment (the first
        region's)."""
        return self.regions[0].redis_shards

    @property
    def redis_ports(self) -> tuple[int, ...]:
        """Each region's Redis port, in region order (home first)."""
        return tuple(r.redis_port for r in self.regions)

    @property
    def dynamodb_ports(self) -> tuple[int, ...]:
        """Each region's DynamoDB endpoint port, in region order (home first)."""
        return tuple(r.dynamodb_port for r in self.regions)

    def get(self, name: str) -> RegionConfig:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(f"unknown region {name!r}; known: {', '.join(self.names)}")

    def failover_order(self, name: str) -> tuple[RegionConfig, ...]:
        """Other regions, nearest first (ties broken by name so the order is deterministic)."""
        home = self.get(name)
        others = [r for r in self.regions if r.name != name]
        return tuple(sorted(others, key=lambda r: (_distance(home, r), r.name)))


def _local(region: RegionConfig) -> bool:
    return region.dynamodb_mode == "local"


def _distance(a: RegionConfig, b: RegionConfig) -> float:
    return float(
        (a.coordinates[0] - b.coordinates[0]) ** 2 + (a.coordinates[1] - b.coordinates[1]) ** 2
    )


def default_topology(
    *,
    redis_ports: tuple[int, int] = (16379, 16389),
    dynamodb_ports: tuple[int, int] = (14566, 14567),
    dynamodb_mode: DynamoDBMode = DEFAULT_DYNAMODB_MODE,
    redis_shards: int = 1,
) -> RegionTopology:
    """The two-region layout: ``us-east`` (home) and ``eu-west``; ``dynamodb_mode="aws"`` points
    both regions at real DynamoDB (``us-east-1``, ``eu-west-1``) instead of local endpoints."""
    return RegionTopology(
        regions=(
            RegionConfig(
                name="us-east",
                aws_region="us-east-1",
                redis_port=redis_ports[0],
                redis_shards=redis_shards,
                dynamodb_port=dynamodb_ports[0],
                dynamodb_mode=dynamodb_mode,
                coordinates=(38.9, -77.0),
            ),
            RegionConfig(
                name="eu-west",
                aws_region="eu-west-1",
                redis_port=redis_ports[1],
                redis_shards=redis_shards,
                dynamodb_port=dynamodb_ports[1],
                dynamodb_mode=dynamodb_mode,
                coordinates=(53.3, -6.3),
            ),
        )
    )
