"""Pipeline configuration: frozen, validated, built once by the job's entry point.

This module is the one definition of the pipeline's Kafka topic names and of the settings a
stream consumer shares with the pipeline (:class:`StreamSettings`); the stack that creates the
topics (``cluster.settings``) and every actor read them from here.
"""

from __future__ import annotations

from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from features import demo
from features.catalog import Name
from features.keys import DEFAULT_TENANT
from regions.config import RedisUsers, RegionTopology

# The source topic is named by the catalog (a source's ``topic``); the demo catalog's is the
# default. The changelog and the dead-letter topic are the pipeline's own.
EVENTS_TOPIC: Final = demo.TOPIC
# Consumers write each tile change to the changelog partition numbered like its source
# partition, so the changelog has as many partitions as the source topic.
EVENTS_PARTITIONS: Final = demo.card_transactions_catalog().source(demo.SOURCE).partitions
CHANGELOG_TOPIC: Final = "fl.tiles.changelog"
DLQ_TOPIC: Final = "fl.dlq"
# The accepted events of each poll batch, as Arrow IPC, handed from the consumers to the offline
# writer in the same transaction as the batch's tiles (``actors.offline_feed``); partitions are
# numbered like the source's.
OFFLINE_TOPIC: Final = "fl.offline.accepted"
# Applied catalog versions (``cluster.registry``): one partition, so the log orders versions.
REGISTRY_TOPIC: Final = "fl.registry"
# Consumer actors sharing the source partitions (every --consumers option defaults to it).
DEFAULT_CONSUMERS: Final = 2
# Sink actors per (region, store), sharing the changelog partitions (every --sink-shards option).
DEFAULT_SINK_SHARDS: Final = 1
# Offline writer actors sharing the offline topic's and changelog's partitions (--offline-writers).
DEFAULT_OFFLINE_WRITERS: Final = 1


class StreamSettings(BaseModel):
    """What a stream consumer needs from the pipeline; :class:`PipelineConfig` extends it, so
    each of these defaults is defined here only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str
    tenant: Name = DEFAULT_TENANT
    source: str = Field(default=demo.SOURCE, description="catalog name of the event source")
    changelog_topic: str = CHANGELOG_TOPIC
    dlq_topic: str = DLQ_TOPIC
    # Also the prefix of every consumer's transactional id: a restarted consumer fences its
    # predecessor only if both derive the same id.
    group_id: str = "freshline-pipeline"
    # One Kafka transaction per interval: shorter makes tiles visible sooner but costs a commit
    # round trip more often. The interval adapts (``features.commit_pacing``): from this base it
    # doubles up to the maximum while the consumer is behind, and drops to the minimum while an
    # interval brings only a trickle of events.
    commit_interval_ms: int = Field(default=250, ge=10)
    commit_interval_min_ms: int = Field(default=100, ge=10)
    commit_interval_max_ms: int = Field(default=1_000, ge=10, le=30_000)

    @model_validator(mode="after")
    def _ordered_intervals(self) -> Self:
        low, high = self.commit_interval_min_ms, self.commit_interval_max_ms
        if not low <= self.commit_interval_ms <= high:
            raise ValueError(
                "commit_interval_min_ms <= commit_interval_ms <= commit_interval_max_ms must hold"
            )
        return self


class ConsumerConfig(StreamSettings):
    """One stream consumer's settings (``actors.consumer.StreamConsumer``)."""

    max_poll_records: int = Field(default=5000, ge=1)
    # Where to hand each batch's accepted events to the offline writer; None when no offline
    # writer runs (a consumer outside a pipeline, a pipeline with ``offline`` off).
    offline_topic: str | None = None


class PipelineConfig(StreamSettings):
    partitions: int = Field(default=EVENTS_PARTITIONS, ge=1)
    consumers: int = Field(
        default=DEFAULT_CONSUMERS, ge=1, le=64, description="consumer actors sharing the partitions"
    )
    topology: RegionTopology
    stores: tuple[str, ...] = ("redis", "dynamodb")
    # Each shard applies its own changelog partitions to the store; together they rehydrate a
    # store that lost its data (regions.rehydration). At most one per changelog partition.
    sink_shards: int = Field(default=DEFAULT_SINK_SHARDS, ge=1, le=64)
    redis_users: RedisUsers
    # Offline store: ``offline_writers`` writer actors share both Iceberg tables, each over its own
    # partitions (actors.offline); at most one per partition.
    offline: bool = True
    offline_writers: int = Field(default=DEFAULT_OFFLINE_WRITERS, ge=1, le=64)
    offline_topic: str = OFFLINE_TOPIC
    iceberg_catalog_uri: str = ""
    iceberg_warehouse: str = ""
    offline_batch_records: int = Field(default=5000, ge=1)
    # Ray starts workers at nice 15 so that its raylet and GCS win the CPU; on a shared node that
    # also lets the broker and the DynamoDB endpoint (nice 0) win it over the consumers and sinks,
    # which then fall behind. Consumers and sinks run at this niceness; the offline writer (batch
    # work) keeps Ray's 15. All sinks share it: the drain waits for every sink, so favouring only
    # the Redis ones slows it (docs/benchmarks.md).
    stream_niceness: int = Field(default=0, ge=0, le=19)
    # DynamoDB sinks apply at most one batch per interval (0: as fast as they can). DynamoDB is
    # the fallback replica and costs per item written; a longer batch lets a hot tile's writes of
    # several consumer commits coalesce into one item.
    durable_batch_interval_ms: int = Field(default=1000, ge=0, le=60_000)
    # How often the supervisor looks for a newer registry version to roll its consumers to and
    # publish to the regions (0: never; the pipeline keeps the catalog it started with).
    registry_refresh_s: float = Field(default=10.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _a_partition_per_shard(self) -> Self:
        if self.sink_shards > self.partitions:
            raise ValueError(
                f"sink_shards ({self.sink_shards}) must not exceed partitions ({self.partitions}):"
                " a shard without a partition could never do its part of a rehydration"
            )
        if self.offline_writers > self.partitions:
            raise ValueError(
                f"offline_writers ({self.offline_writers}) must not exceed partitions"
                f" ({self.partitions}): a writer without a partition would only idle"
            )
        return self

    def consumer_config(self) -> ConsumerConfig:
        """The settings of this pipeline's consumers: the shared fields, copied, never re-typed."""
        shared = self.model_dump(include=set(StreamSettings.model_fields))
        return ConsumerConfig(**shared, offline_topic=self.offline_topic if self.offline else None)

    def stream_runtime_env(self) -> dict[str, dict[str, str]]:
        """Merged into the job's runtime env by Ray (its env_vars are kept)."""
        return {"env_vars": {"RAY_worker_niceness": str(self.stream_niceness)}}

    def assignments(self) -> list[list[int]]:
        """Partitions per consumer, round-robin; every partition owned exactly once."""
        count = min(self.consumers, self.partitions)
        return [list(range(i, self.partitions, count)) for i in range(count)]
