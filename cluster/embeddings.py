"""Starting and stopping the embedding index actors of a deployment.

One detached actor per (region, embedding view, model version), named by
``features.embeddings.index_actor_name`` so each region's Serve app finds its own and, when those
are down, the other regions'. Each actor mirrors its vectors to its region's Redis (as the
pipeline's writer user) for lookup by entity id; only one actor per view (the first region's,
first version's) sends refused events to the dead-letter topic, so a bad event is reported once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import ray
from pydantic import SecretStr

from actors.embedding_actor import SNAPSHOT_INTERVAL_S, EmbeddingIngestConfig, start_index_actor
from actors.embedding_mirror import RedisTarget
from features.embeddings import INDEX_ACTOR_NAMESPACE, EmbeddingView, index_actor_name
from regions.config import RegionTopology


class _Writer(Protocol):
    @property
    def writer_user(self) -> str: ...


class _Passwords(Protocol):
    @property
    def redis_writer_password(self) -> SecretStr: ...


def index_configs(
    view: EmbeddingView,
    topology: RegionTopology,
    *,
    bootstrap: str,
    state_dir: Path,
    users: _Writer,
    secrets: _Passwords,
    snapshot_interval_s: float = SNAPSHOT_INTERVAL_S,
) -> list[EmbeddingIngestConfig]:
    """The config of every index actor of ``view``: one per region and model version."""
    first = topology.regions[0].name
    return [
        EmbeddingIngestConfig(
            bootstrap=bootstrap,
            state_dir=state_dir,
            region=region.name,
            versions=(version,),
            dead_letters=(region.name, version) == (first, view.model_versions[0]),
            redis=RedisTarget(
                region=region,
                writer_user=users.writer_user,
                redis_writer_password=secrets.redis_writer_password,
            ),
            snapshot_interval_s=snapshot_interval_s,
        )
        for region in topology.regions
        for version in view.model_versions
    ]


EMBEDDING_PARTITIONS = 4


def ensure_topics(bootstrap: str, views: Sequence[EmbeddingView]) -> None:
    """Create the views' topics when missing: an index actor refuses to start without its topic
    (and Ray would restart it forever). Compacted: an entity's latest event is all a replay
    from the beginning needs."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="freshline-embeddings")
    try:
        existing = set(admin.list_topics())
        brokers = len(admin.describe_cluster()["brokers"])
        new = [
            NewTopic(
                view.topic,
                EMBEDDING_PARTITIONS,
                min(3, brokers),
                topic_configs={"cleanup.policy": "compact"},
            )
            for view in views
            if view.topic not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=30_000, wait_for_metadata=True)
    finally:
        admin.close()


def start_index_actors(
    views: Sequence[EmbeddingView], configs: Sequence[Sequence[EmbeddingIngestConfig]]
) -> list[Any]:
    """Starts (or finds) the actors; ``configs[i]`` are those of ``views[i]``."""
    return [
        start_index_actor(config, view)
        for view, view_configs in zip(views, configs, strict=True)
        for config in view_configs
    ]


def index_status(views: Sequence[EmbeddingView], topology: RegionTopology) -> dict[str, Any]:
    """Each index actor's status by name; ``None`` for one that does not exist."""
    out: dict[str, Any] = {}
    for name in _names(views, topology):
        try:
            actor = ray.get_actor(name, namespace=INDEX_ACTOR_NAMESPACE)
        except ValueError:
            out[name] = None
            continue
        out[name] = ray.get(actor.status.remote(), timeout=60)
    return out


def stop_index_actors(views: Sequence[EmbeddingView], topology: RegionTopology) -> int:
    """Snapshots and stops every index actor of ``views``; returns how many were running."""
    stopped = 0
    for name in _names(views, topology):
        try:
            actor = ray.get_actor(name, namespace=INDEX_ACTOR_NAMESPACE)
        except ValueError:
            continue
        ray.get(actor.stop.remote(), timeout=60)
        ray.kill(actor, no_restart=True)
        stopped += 1
    return stopped


def _names(views: Sequence[EmbeddingView], topology: RegionTopology) -> list[str]:
    return [
        index_actor_name(view.name, region.name, version)
        for view in views
        for region in topology.regions
        for version in view.model_versions
    ]
