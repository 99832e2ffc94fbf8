"""An embedding view's version catalog as a Ray actor: versions built side by side, switched,
retired and dropped (``features.embedding_catalog`` says what each change means).

One detached actor per view (``features.embeddings.catalog_actor_name``), started by
``cluster.embeddings``. It holds the view's :class:`ViewCatalog`, written to
``state_dir/catalog/<view>.json`` before anyone hears of a change (so it survives the actor, and a
restarted index actor reads it), and:

- keeps one index actor per region and live version started (:class:`RayFleet`); Ray restarts a
  crashed one, this restarts one that was removed for good;
- ``add``: the new version's actors start and build their index from the topic beside the others;
- ``switch``: refused unless the version's index is ready in every region; then reads move at once
  (Serve replicas long-poll :meth:`_ViewCatalogActor.watch`) and the previous version retires;
- ``retire``: a version that does not serve is dropped after a grace period;
- every ``TICK_S``, a version whose grace is over is dropped, in this order: (1) it leaves the
  catalog, so searches naming it are refused and ingest stops accepting it; (2) every remaining
  actor gets the new view, and the reporting actor (first region, first version) starts
  sending dead letters from its current positions; (3) the dropped version's actors keep running
  until they have read past those positions, so no refused event between the two goes unreported
  (some may be reported twice: dead letters are at least once); (4) its actors are stopped; (5) its
  Redis vectors and snapshots are deleted; (6) it leaves ``dropping``. A step that fails (an actor
  restarting, Redis down) is retried at the next tick from where it stopped.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import ray
from pydantic import BaseModel, ConfigDict, Field

from actors.config import DLQ_TOPIC
from actors.embedding_actor import (
    SNAPSHOT_INTERVAL_S,
    EmbeddingIngestConfig,
    snapshot_directory,
    start_index_actor,
)
from actors.embedding_catalog_file import catalog_path, read_catalog, write_catalog
from actors.embedding_mirror import RedisTarget
from features.embedding_catalog import VersionChangeRefused, ViewCatalog
from features.embeddings import (
    INDEX_ACTOR_NAMESPACE,
    EmbeddingView,
    IndexNotReady,
    catalog_actor_name,
    index_actor_name,
)
from features.errors import TransportError

log = logging.getLogger("freshline.actors.embeddings")

TICK_S = 1.0
WATCH_TIMEOUT_S = 30.0
STATUS_TIMEOUT_S = 10.0
Positions = dict[int, int]


class FleetConfig(BaseModel):
    """What every index actor of a deployment shares; ``targets`` is one Redis per region, in
    the topology's order (the first region's reporting actor sends the dead letters)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str
    state_dir: Path
    targets: tuple[RedisTarget, ...] = Field(min_length=1)
    snapshot_interval_s: float = Field(default=SNAPSHOT_INTERVAL_S, gt=0)
    dlq_topic: str = DLQ_TOPIC

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(t.region.name for t in self.targets)

    def ingest_config(self, target: RedisTarget, version: str) -> EmbeddingIngestConfig:
        return EmbeddingIngestConfig(
            bootstrap=self.bootstrap,
            state_dir=self.state_dir,
            dlq_topic=self.dlq_topic,
            snapshot_interval_s=self.snapshot_interval_s,
            region=target.region.name,
            versions=(version,),
            dead_letters=target == self.targets[0],
            redis=target,
        )


class Fleet(Protocol):
    """The index actors of one view, one per (region, version): Ray's in production."""

    def ensure(self, view: EmbeddingView, version: str) -> None:
        """Every region's actor of ``version`` exists (started when missing)."""

    def ready(self, view: str, version: str) -> dict[str, bool]:
        """Per region, whether ``version``'s actor exists, answers and is ready."""

    def reconfigure(self, view: EmbeddingView) -> Positions:
        """Pushes ``view`` to every live version's actors; returns the positions of the
        reporting actor (first region, first version) when it took the view."""

    def positions(self, view: str, version: str) -> Positions | None:
        """The first region's actor's positions; ``None`` when the actor does not exist.
        Raises ``IndexNotReady`` while it does not answer (restarting)."""

    def stop(self, view: str, version: str) -> None:
        """Stops every region's actor of ``version`` for good (after a last snapshot)."""

    def forget(self, view: str, version: str) -> None:
        """Deletes ``version``'s Redis vectors and snapshots in every region."""


class VersionKeeper:
    """The catalog's rules applied to the fleet. Not thread-safe: the actor serialises calls.
    ``publish`` persists a new catalog and tells the followers; it runs before the fleet hears."""

    def __init__(
        self,
        catalog: ViewCatalog,
        fleet: Fleet,
        publish: Callable[[ViewCatalog], None],
        now_ms: Callable[[], int],
    ) -> None:
        self.catalog = catalog
        self._fleet = fleet
        self._publish = publish
        self._now_ms = now_ms
        self._handover: dict[str, Positions] = {}

    def ensure(self) -> None:
        for version in self.catalog.view.model_versions:
            self._fleet.ensure(self.catalog.view, version)

    def add(self, version: str) -> ViewCatalog:
        self._change(self.catalog.add(version))
        self._reconfigure()  # the reporting actor must accept the new version's events
        self._fleet.ensure(self.catalog.view, version)
        return self.catalog

    def switch(self, version: str, grace_ms: int) -> ViewCatalog:
        nxt = self.catalog.switch(version, self._now_ms(), grace_ms)
        if nxt is self.catalog:
            return nxt
        waiting = sorted(
            r for r, ok in self._fleet.ready(self.catalog.name, version).items() if not ok
        )
        if waiting:
            raise VersionChangeRefused(f"{version!r} is not ready in {', '.join(waiting)}")
        self._change(nxt)
        self._reconfigure()
        return self.catalog

    def retire(self, version: str, grace_ms: int) -> ViewCatalog:
        self._change(self.catalog.retire(version, self._now_ms(), grace_ms))
        return self.catalog

    def tick(self) -> None:
        """Drops what is due and finishes drops under way; keeps the live actors started."""
        for version in self.catalog.due(self._now_ms()):
            self._change(self.catalog.drop(version))
            log.info("embedding view %s: version %s dropped", self.catalog.name, version)
        for version in self.catalog.dropping:
            if self._gone(version):
                self._change(self.catalog.forget(version))
                log.info("embedding view %s: version %s deleted", self.catalog.name, version)
        self.ensure()

    def _gone(self, version: str) -> bool:
        """Steps 2 to 5 of the module docstring; ``False`` when one must wait for a later tick."""
        name = self.catalog.name
        if version not in self._handover:
            self._handover[version] = self._fleet.reconfigure(self.catalog.view)
        try:
            old = self._fleet.positions(name, version)
        except IndexNotReady:
            return False
        if old is not None and not _passed(old, self._handover[version]):
            return False
        self._fleet.stop(name, version)
        try:
            self._fleet.forget(name, version)
        except TransportError as exc:
            log.warning("embedding view %s: deleting %s's vectors failed: %s", name, version, exc)
            return False
        del self._handover[version]
        return True

    def _change(self, catalog: ViewCatalog) -> None:
        self._publish(catalog)
        self.catalog = catalog

    def _reconfigure(self) -> None:
        try:
            self._fleet.reconfigure(self.catalog.view)
        except Exception as exc:  # a restarting actor reads the catalog file when it starts
            log.warning("embedding view %s: an actor missed the change: %s", self.catalog.name, exc)


def _passed(positions: Positions, targets: Positions) -> bool:
    return all(positions.get(p, end) >= end for p, end in targets.items())


class RayFleet:
    """:class:`Fleet` over named, detached Ray actors (``features.embeddings.index_actor_name``)."""

    def __init__(self, config: FleetConfig) -> None:
        self._config = config

    def ensure(self, view: EmbeddingView, version: str) -> None:
        for target in self._config.targets:
            start_index_actor(self._config.ingest_config(target, version), view)

    def ready(self, view: str, version: str) -> dict[str, bool]:
        out = {}
        for region in self._config.regions:
            status = _status(index_actor_name(view, region, version))
            out[region] = bool(status and status["ready"])
        return out

    def reconfigure(self, view: EmbeddingView) -> Positions:
        refs = {
            (region, version): _actor(index_actor_name(view.name, region, version))
            for region in self._config.regions
            for version in view.model_versions
        }
        calls = {key: a.reconfigure.remote(view) for key, a in refs.items() if a is not None}
        reporter = (self._config.regions[0], view.model_versions[0])
        if reporter not in calls:
            raise VersionChangeRefused(f"the reporting actor {reporter} does not exist yet")
        positions: Positions = {}
        for key, ref in calls.items():
            try:
                answer = ray.get(ref, timeout=STATUS_TIMEOUT_S)
            except Exception as exc:
                if key == reporter:
                    raise
                log.warning("index actor %s missed a catalog change: %s", key, exc)
                continue
            if key == reporter:
                positions = {int(p): int(o) for p, o in answer.items()}
        return positions

    def positions(self, view: str, version: str) -> Positions | None:
        name = index_actor_name(view, self._config.regions[0], version)
        if _actor(name) is None:
            return None
        status = _status(name)
        if status is None:
            raise IndexNotReady(f"{name} does not answer")
        return {int(p): int(o) for p, o in status["positions"].items()}

    def stop(self, view: str, version: str) -> None:
        for region in self._config.regions:
            stop_actor(index_actor_name(view, region, version))

    def forget(self, view: str, version: str) -> None:
        for target in self._config.targets:
            target.vector_store(view, version).drop()
            config = self._config.ingest_config(target, version)
            shutil.rmtree(snapshot_directory(config, view, version), ignore_errors=True)


def _actor(name: str) -> Any:
    try:
        return ray.get_actor(name, namespace=INDEX_ACTOR_NAMESPACE)
    except ValueError:
        return None


def _status(name: str) -> dict[str, Any] | None:
    actor = _actor(name)
    if actor is None:
        return None
    try:
        return dict(ray.get(actor.status.remote(), timeout=STATUS_TIMEOUT_S))
    except Exception:  # dead, restarting or busy: not ready
        return None


def stop_actor(name: str) -> bool:
    """Stops the named actor for good, after its own ``stop`` when it answers; ``False`` when
    there was none."""
    actor = _actor(name)
    if actor is None:
        return False
    try:
        ray.get(actor.stop.remote(), timeout=60)
    except Exception as exc:  # dead or hung: killed all the same
        log.warning("actor %s did not stop cleanly: %s", name, exc)
    ray.kill(actor, no_restart=True)
    return True


class _ViewCatalogActor:
    """The Ray actor around a :class:`VersionKeeper`: its tick thread, the long poll Serve
    replicas follow, and the operator's commands."""

    def __init__(self, config: FleetConfig, view: EmbeddingView) -> None:
        self._path = catalog_path(config.state_dir, view.name)
        catalog = read_catalog(self._path) or ViewCatalog.initial(view)
        self._changed = threading.Condition()
        self._lock = threading.Lock()  # one change (or tick) at a time
        self._keeper = VersionKeeper(catalog, RayFleet(config), self._publish, _now_ms)
        write_catalog(self._path, catalog)
        self._keeper.ensure()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="catalog-tick", daemon=True)
        self._thread.start()

    def _publish(self, catalog: ViewCatalog) -> None:
        write_catalog(self._path, catalog)
        with self._changed:
            self._keeper.catalog = catalog
            self._changed.notify_all()

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                with self._lock:
                    self._keeper.tick()
            except Exception:  # the catalog is on disk; the next tick starts from it again
                log.exception("embedding catalog tick failed; retrying at the next tick")

    def catalog(self) -> ViewCatalog:
        return self._keeper.catalog

    def watch(self, generation: int, timeout_s: float = WATCH_TIMEOUT_S) -> ViewCatalog:
        """The catalog once its generation differs from ``generation``, or after ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._keeper.catalog.generation != generation, timeout=timeout_s
            )
            return self._keeper.catalog

    def add(self, version: str) -> ViewCatalog:
        with self._lock:
            return self._keeper.add(version)

    def switch(self, version: str, grace_s: float) -> ViewCatalog:
        with self._lock:
            return self._keeper.switch(version, _ms(grace_s))

    def retire(self, version: str, grace_s: float) -> ViewCatalog:
        with self._lock:
            return self._keeper.retire(version, _ms(grace_s))

    def stop(self) -> None:
        """Ends the tick loop (and so the restarting of index actors); the catalog stays."""
        self._stop.set()
        self._thread.join(timeout=60)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


_remote: Any = ray.remote
# Threads: each Serve replica holds one in ``watch``; commands and status need their own.
ViewCatalogActor: Any = _remote(
    max_restarts=-1, max_task_retries=-1, max_concurrency=32, num_cpus=0
)(_ViewCatalogActor)


def start_catalog_actor(config: FleetConfig, view: EmbeddingView) -> Any:
    """Starts (or finds) ``view``'s catalog actor, which starts its index actors."""
    return ViewCatalogActor.options(
        name=catalog_actor_name(view.name),
        namespace=INDEX_ACTOR_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(config, view)
