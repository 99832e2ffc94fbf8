"""A sink's replication lag, measured beside its loop rather than by it.

The lag a region operator cares about is what the region has not durably applied: the changelog's
end offsets (last stable offsets, as the sinks read ``read_committed``) minus the offsets the
sink's group committed, which it does only after its store acknowledged a batch. Measuring it
with clients of its own means a sink blocked inside a call to a hung store (a SIGSTOPped
DynamoDB endpoint) shows a growing lag instead of its last figure (dynamodb-down drill).

Invariant: the result is never below the true un-applied count (commits follow applies), and a
partition the group never committed counts from the log's first retained offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from features.shards import SOLE, Shard


def committed_lag(
    ends: Mapping[Any, int], committed: Mapping[Any, int | None], beginnings: Mapping[Any, int]
) -> int:
    """Sum over partitions of ``end - committed`` (``beginning`` when never committed), >= 0."""
    total = 0
    for tp, end in ends.items():
        done = committed.get(tp)
        start = beginnings.get(tp, 0) if done is None else done
        total += max(0, end - start)
    return total


class CommittedLag:
    """Measures one group's lag on one topic (on one sink shard's partitions of it); its Kafka
    clients are its own (one thread)."""

    def __init__(self, bootstrap: str, group_id: str, topic: str, shard: Shard = SOLE) -> None:
        from kafka import KafkaAdminClient

        from actors.kafka_io import read_committed_consumer

        self._group_id, self._topic, self._shard = group_id, topic, shard
        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{group_id}-lag")
        # No group: this consumer only asks for offsets, it never joins or commits.
        self._offsets = read_committed_consumer(bootstrap, None)

    def measure(self) -> int:
        from kafka import TopicPartition

        partitions = self._offsets.partitions_for_topic(self._topic) or set()
        tps = [TopicPartition(self._topic, p) for p in self._shard.partitions(partitions)]
        if not tps:
            return 0
        ends = self._offsets.end_offsets(tps)
        raw = self._admin.list_group_offsets({self._group_id: tps}).get(self._group_id, {})
        committed = {tp: meta.offset for tp, meta in raw.items() if meta.offset >= 0}
        # A group that committed every partition (the steady state) needs no third request.
        uncommitted = [tp for tp in tps if tp not in committed]
        beginnings = self._offsets.beginning_offsets(uncommitted) if uncommitted else {}
        return committed_lag(ends, committed, beginnings)

    def close(self) -> None:
        self._offsets.close()
        self._admin.close()
