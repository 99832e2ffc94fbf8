"""Reading the feature registry from Kafka, and publishing a version to the regions' Redis.

The registry's record of truth is the compacted topic ``fl.registry`` (written by
``cluster/registry.py``'s publisher). The pipeline reads it here: at start, and while it runs, to
follow newer versions (``actors.runtime``); once its consumers compute a version it publishes it
to each region's Redis (``regions.registry_mirror``), which Serve replicas follow.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from actors.config import REGISTRY_TOPIC
from actors.kafka_io import read_committed_consumer
from features.errors import StackError
from features.registry import RegistryVersion

if TYPE_CHECKING:
    from regions.config import RegionTopology
    from regions.redis_store import RedisPasswords, RedisUsers

_READ_TIMEOUT_S = 30.0


class RegistryUnavailable(StackError):
    """The registry topic could not be read or written."""


def history(bootstrap: str, tenant: str) -> list[RegistryVersion]:
    """Every applied version of ``tenant``, oldest first."""
    from kafka import TopicPartition

    consumer = read_committed_consumer(bootstrap, None, consumer_timeout_ms=1_000)
    tp = TopicPartition(REGISTRY_TOPIC, 0)
    found: dict[int, RegistryVersion] = {}
    prefix = f"{tenant}/v".encode()
    try:
        if not consumer.partitions_for_topic(REGISTRY_TOPIC):
            return []
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        deadline = time.monotonic() + _READ_TIMEOUT_S
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise RegistryUnavailable(f"could not read {REGISTRY_TOPIC} to its end")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key is not None and record.key.startswith(prefix):
                        version = RegistryVersion.decode(record.value)
                        found[version.number] = version
    finally:
        consumer.close()
    return [found[n] for n in sorted(found)]


def latest(bootstrap: str, tenant: str) -> RegistryVersion | None:
    versions = history(bootstrap, tenant)
    return versions[-1] if versions else None


def publish_to_regions(
    topology: RegionTopology,
    users: RedisUsers,
    secrets: RedisPasswords,
    tenant: str,
    version: RegistryVersion,
    *,
    after_parent: bool = False,
) -> list[str]:
    """Make ``version`` the one each region's Serve replicas follow (``regions.registry_mirror``);
    the regions where it was new. Called by the pipeline once its consumers compute it, so a
    replica never serves a catalog the pipeline does not run; ``after_parent`` (a rollout step,
    which computes nothing new) writes only where the parent version is served."""
    from regions.redis_store import RedisRole, redis_client
    from regions.registry_mirror import publish

    written = []
    for region in topology.regions:
        client = redis_client(region, RedisRole.WRITER, users, secrets)
        try:
            if publish(client, tenant, version, after_parent=after_parent):
                written.append(region.name)
        finally:
            client.close()
    return written
