"""Starting, changing and stopping the embedding views of a deployment.

Each view has one detached catalog actor (``actors.embedding_versions``, named by
``features.embeddings.catalog_actor_name``), which starts and keeps one index actor per (region,
live model version), named by ``features.embeddings.index_actor_name`` so each region's Serve app
finds its own and, when those are down, the other regions'. Each index actor mirrors its vectors
to its region's Redis (as the pipeline's writer user) for lookup by entity id; only the first
region's actor of the view's reporting version sends refused events to the dead-letter topic, so a
bad event is reported once. Names, start, status and stop all follow the catalog's versions.
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
from actors.embedding_versions import FleetConfig, start_catalog_actor, stop_actor
from features.embedding_catalog import ViewCatalog
from features.embeddings import (
    INDEX_ACTOR_NAMESPACE,
    EmbeddingView,
    catalog_actor_name,
    index_actor_name,
)
from features.errors import FreshlineError, StackError
from regions.config import RegionTopology

DEFAULT_GRACE_S = 3600.0


class _Writer(Protocol):
    @property
    def writer_user(self) -> str: ...


class _Passwords(Protocol):
    @property
    def redis_writer_password(self) -> SecretStr: ...


def fleet_config(
    topology: RegionTopology,
    *,
    bootstrap: str,
    state_dir: Path,
    users: _Writer,
    secrets: _Passwords,
    snapshot_interval_s: float = SNAPSHOT_INTERVAL_S,
) -> FleetConfig:
    """What the index actors of every view share: Kafka, the state dir, each region's Redis."""
    return FleetConfig(
        bootstrap=bootstrap,
        state_dir=state_dir,
        targets=tuple(
            RedisTarget(
                region=region,
                writer_user=users.writer_user,
                redis_writer_password=secrets.redis_writer_password,
            )
            for region in topology.regions
        ),
        snapshot_interval_s=snapshot_interval_s,
    )


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
    """The config of every index actor of ``view``: one per region and model version (the
    ones a catalog actor starts; tests and benchmarks start them without one)."""
    fleet = fleet_config(
        topology,
        bootstrap=bootstrap,
        state_dir=state_dir,
        users=users,
        secrets=secrets,
        snapshot_interval_s=snapshot_interval_s,
    )
    return [
        fleet.ingest_config(target, version)
        for target in fleet.targets
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
    """Starts (or finds) index actors without a catalog; ``configs[i]`` are ``views[i]``'s."""
    return [
        start_index_actor(config, view)
        for view, view_configs in zip(views, configs, strict=True)
        for config in view_configs
    ]


def start_catalogs(views: Sequence[EmbeddingView], fleet: FleetConfig) -> list[ViewCatalog]:
    """Starts (or finds) each view's catalog actor, which starts the view's index actors; returns
    the catalogs. A view whose catalog already exists (on disk or running) keeps it: the code's
    definition only seeds a new view."""
    actors = [start_catalog_actor(fleet, view) for view in views]
    return [_call(actor.catalog.remote()) for actor in actors]


def catalog(view: str) -> ViewCatalog:
    return _call(_catalog_actor(view).catalog.remote())  # type: ignore[no-any-return]


def add_version(view: str, version: str) -> ViewCatalog:
    """Builds ``version``'s index beside the others; reads do not move."""
    return _call(_catalog_actor(view).add.remote(version))  # type: ignore[no-any-return]


def switch_version(view: str, version: str, grace_s: float = DEFAULT_GRACE_S) -> ViewCatalog:
    """Moves reads to ``version`` (refused unless its index is ready in every region); the
    previous serving version is dropped after ``grace_s``."""
    return _call(_catalog_actor(view).switch.remote(version, grace_s))  # type: ignore[no-any-return]


def retire_version(view: str, version: str, grace_s: float = DEFAULT_GRACE_S) -> ViewCatalog:
    """Drops ``version`` (not the serving one) after ``grace_s``."""
    return _call(_catalog_actor(view).retire.remote(version, grace_s))  # type: ignore[no-any-return]


def index_status(views: Sequence[EmbeddingView], topology: RegionTopology) -> dict[str, Any]:
    """Each view's catalog and each of its index actors' status by name (``None``: missing)."""
    out: dict[str, Any] = {}
    for view in views:
        found = _catalog_or_none(view.name)
        out[catalog_actor_name(view.name)] = _catalog_summary(found)
        for name in _names(view, found, topology):
            try:
                actor = ray.get_actor(name, namespace=INDEX_ACTOR_NAMESPACE)
            except ValueError:
                out[name] = None
                continue
            out[name] = ray.get(actor.status.remote(), timeout=60)
    return out


def stop_index_actors(views: Sequence[EmbeddingView], topology: RegionTopology) -> int:
    """Stops each view's catalog actor first (it would start index actors again), then every
    index actor of the view's versions after a last snapshot; returns how many index actors were
    running. The catalogs stay on disk for the next start."""
    stopped = 0
    for view in views:
        found = _catalog_or_none(view.name)
        stop_actor(catalog_actor_name(view.name))
        stopped += sum(stop_actor(name) for name in _names(view, found, topology))
    return stopped


def _names(view: EmbeddingView, found: ViewCatalog | None, topology: RegionTopology) -> list[str]:
    versions = list(view.model_versions)
    if found is not None:
        versions = list(dict.fromkeys([*found.view.model_versions, *found.dropping]))
    return [
        index_actor_name(view.name, region.name, version)
        for region in topology.regions
        for version in versions
    ]


def _catalog_summary(found: ViewCatalog | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "generation": found.generation,
        "serving_version": found.view.serving_version,
        "model_versions": list(found.view.model_versions),
        "retiring": {r.version: r.drop_after_ms for r in found.retiring},
        "dropping": list(found.dropping),
    }


def _catalog_actor(view: str) -> Any:
    try:
        return ray.get_actor(catalog_actor_name(view), namespace=INDEX_ACTOR_NAMESPACE)
    except ValueError:
        raise StackError(f"embedding view {view!r} has no catalog: is the pipeline up?") from None


def _catalog_or_none(view: str) -> ViewCatalog | None:
    try:
        actor = ray.get_actor(catalog_actor_name(view), namespace=INDEX_ACTOR_NAMESPACE)
    except ValueError:
        return None
    return _call(actor.catalog.remote())  # type: ignore[no-any-return]


def _call(ref: Any, timeout_s: float = 120.0) -> Any:
    """``ray.get``, re-raising a Freshline error raised in the actor as itself (a refused change
    reads as its message, not as a remote traceback)."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, FreshlineError):
            raise exc.cause from None
        raise
