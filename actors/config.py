"""Pipeline configuration: frozen, validated, built once by the job's entry point."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from regions.config import RedisUsers, RegionTopology


class PipelineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str
    source: str = "card_tx"
    partitions: int = Field(default=8, ge=1)
    consumers: int = Field(
        default=2, ge=1, le=64, description="consumer actors sharing the partitions"
    )
    changelog_topic: str = "fl.tiles.changelog"
    dlq_topic: str = "fl.dlq"
    group_id: str = "freshline-pipeline"
    commit_interval_ms: int = Field(default=250, ge=10)
    topology: RegionTopology
    stores: tuple[str, ...] = ("redis", "dynamodb")
    redis_users: RedisUsers
    # Offline store: exactly one writer may run (Iceberg's optimistic commits reject a second one).
    offline: bool = True
    iceberg_catalog_uri: str = ""
    iceberg_warehouse: str = ""
    offline_batch_records: int = Field(default=5000, ge=1)
    # Ray starts workers at nice 15 so that its raylet and GCS win the CPU; on a shared node that
    # made the broker and the DynamoDB endpoint (nice 0) win it over the consumers and sinks too.
    # Consumers and sinks run at this niceness; the offline writer (batch work) keeps Ray's 15.
    # Measured on 2 cores (docs/benchmarks.md): end-to-end 9-12k -> 18k events/s. Putting only the
    # Redis sinks and consumers first (DynamoDB sinks at nice 10, 2026-12-03) slowed the drain,
    # which waits for every sink (4.0 -> 8.3 s), and did not move Redis freshness (p99 1.35 s).
    # (A 91 s drain once blamed on that was a sink left without partitions, actors.runtime.)
    stream_niceness: int = Field(default=0, ge=0, le=19)
    # DynamoDB sinks apply at most one batch per interval (0: as fast as they can). DynamoDB is
    # the fallback replica and costs per item written; a longer batch lets a hot tile's writes of
    # several consumer commits coalesce into one item.
    durable_batch_interval_ms: int = Field(default=1000, ge=0, le=60_000)

    def stream_runtime_env(self) -> dict[str, dict[str, str]]:
        """Merged into the job's runtime env by Ray (its env_vars are kept)."""
        return {"env_vars": {"RAY_worker_niceness": str(self.stream_niceness)}}

    def assignments(self) -> list[list[int]]:
        """Partitions per consumer, round-robin; every partition owned exactly once."""
        count = min(self.consumers, self.partitions)
        return [list(range(i, self.partitions, count)) for i in range(count)]
