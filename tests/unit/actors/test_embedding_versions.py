"""The version keeper on a fake fleet: versions start beside each other, a switch waits for
readiness everywhere, a retired version is dropped after its grace period in the documented
order, and a failed step is retried at the next tick."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.embedding_catalog_file import catalog_path, read_catalog, write_catalog
from actors.embedding_versions import VersionKeeper
from features.embedding_catalog import VersionChangeRefused, ViewCatalog
from features.embeddings import EmbeddingView, IndexNotReady
from features.errors import ConfigError, StoreUnavailable

VIEW = EmbeddingView(
    name="items",
    topic="fl.items.embeddings",
    dimension=4,
    model="item2vec",
    model_versions=("v1",),
    serving_version="v1",
)
REGIONS = ("us-east", "eu-west")
HOUR_MS = 3_600_000


class Fleet:
    """Actors by (region, version); every call is logged in ``log``."""

    def __init__(self) -> None:
        self.actors: dict[tuple[str, str], dict[int, int]] = {}  # positions
        self.ready_regions: dict[str, set[str]] = {}
        self.views: dict[tuple[str, str], EmbeddingView] = {}
        self.vectors: set[str] = set()  # versions with vectors in Redis
        self.redis_down = False
        self.restarting: set[str] = set()
        self.log: list[str] = []

    def ensure(self, view: EmbeddingView, version: str) -> None:
        missing = [r for r in REGIONS if (r, version) not in self.actors]
        for region in missing:
            self.actors[region, version] = {0: 0}
            self.views[region, version] = view
            self.vectors.add(version)
        if missing:
            self.log.append(f"start {version}" + ("" if len(missing) == 2 else f" {missing[0]}"))

    def ready(self, view: str, version: str) -> dict[str, bool]:
        return {r: r in self.ready_regions.get(version, set()) for r in REGIONS}

    def reconfigure(self, view: EmbeddingView) -> dict[int, int]:
        for key in self.actors:
            if key[1] in view.model_versions:
                self.views[key] = view
        self.log.append(f"reconfigure {','.join(view.model_versions)}")
        return dict(self.actors[REGIONS[0], view.model_versions[0]])

    def positions(self, view: str, version: str) -> dict[int, int] | None:
        if version in self.restarting:
            raise IndexNotReady("restarting")
        return self.actors.get((REGIONS[0], version))

    def stop(self, view: str, version: str) -> None:
        for region in REGIONS:
            self.actors.pop((region, version), None)
        self.log.append(f"stop {version}")

    def forget(self, view: str, version: str) -> None:
        if self.redis_down:
            raise StoreUnavailable("redis-us-east: Connection refused")
        self.vectors.discard(version)
        self.log.append(f"forget {version}")


class World:
    def __init__(self) -> None:
        self.fleet = Fleet()
        self.now = 1_000
        self.published: list[ViewCatalog] = []
        self.keeper = VersionKeeper(
            ViewCatalog.initial(VIEW), self.fleet, self.published.append, lambda: self.now
        )
        self.keeper.ensure()


def test_a_new_version_starts_beside_the_old_and_the_reporting_actor_learns_of_it_first() -> None:
    world = World()
    catalog = world.keeper.add("v2")
    assert catalog.view.model_versions == ("v1", "v2")
    assert world.published[-1] == catalog  # published before the fleet heard of it
    assert world.fleet.log == ["start v1", "reconfigure v1,v2", "start v2"]
    assert world.fleet.views["us-east", "v1"].model_versions == ("v1", "v2")


def test_a_switch_is_refused_until_the_version_is_ready_in_every_region() -> None:
    world = World()
    world.keeper.add("v2")
    world.fleet.ready_regions["v2"] = {"us-east"}
    with pytest.raises(VersionChangeRefused, match="not ready in eu-west"):
        world.keeper.switch("v2", HOUR_MS)
    assert world.keeper.catalog.view.serving_version == "v1"
    world.fleet.ready_regions["v2"] = set(REGIONS)
    catalog = world.keeper.switch("v2", HOUR_MS)
    assert catalog.view.serving_version == "v2"
    assert world.fleet.views["eu-west", "v2"].serving_version == "v2"
    assert catalog.drop_after_ms("v1") == world.now + HOUR_MS


def _switched() -> World:
    world = World()
    world.keeper.add("v2")
    world.fleet.ready_regions["v2"] = set(REGIONS)
    world.keeper.switch("v2", HOUR_MS)
    world.fleet.log.clear()
    return world


def test_a_retired_version_is_kept_for_its_grace_period_then_dropped_in_order() -> None:
    world = _switched()
    world.now += HOUR_MS - 1
    world.keeper.tick()
    assert ("us-east", "v1") in world.fleet.actors and world.fleet.log == []
    world.fleet.actors["us-east", "v2"] = {0: 50}  # the new reporter is ahead of v1's actor
    world.fleet.actors["us-east", "v1"] = {0: 40}
    world.now += 1
    world.keeper.tick()
    dropped = world.published[-1]
    assert (dropped.view.model_versions, dropped.dropping) == (("v2",), ("v1",))
    # v1's actor reports until it has read past where v2's took over: not stopped yet.
    assert world.fleet.log == ["reconfigure v2"]
    world.fleet.actors["us-east", "v1"] = {0: 50}
    world.keeper.tick()
    assert world.fleet.log == ["reconfigure v2", "stop v1", "forget v1"]
    assert world.keeper.catalog.dropping == ()
    assert not any(v == "v1" for _, v in world.fleet.actors) and world.fleet.vectors == {"v2"}
    assert [c.generation for c in world.published] == list(range(2, 2 + len(world.published)))


def test_a_drop_step_that_fails_is_retried_at_the_next_tick() -> None:
    world = _switched()
    world.keeper.retire("v1", 0)
    world.fleet.redis_down = True
    world.fleet.restarting.add("v1")
    world.keeper.tick()
    assert world.keeper.catalog.dropping == ("v1",) and world.fleet.log == ["reconfigure v2"]
    world.fleet.restarting.clear()
    world.keeper.tick()  # stopped, but Redis refuses the delete
    assert world.keeper.catalog.dropping == ("v1",) and "v1" in world.fleet.vectors
    world.fleet.redis_down = False
    world.keeper.tick()
    assert world.keeper.catalog.dropping == () and world.fleet.vectors == {"v2"}
    assert world.fleet.log == ["reconfigure v2", "stop v1", "stop v1", "forget v1"]


def test_ticks_restart_a_live_version_removed_for_good_but_not_a_dropped_one() -> None:
    world = _switched()
    world.keeper.retire("v1", 0)
    world.keeper.tick()
    world.fleet.actors.pop(("eu-west", "v2"))
    world.keeper.tick()
    assert sorted(world.fleet.actors) == [("eu-west", "v2"), ("us-east", "v2")]


def test_the_catalog_file_round_trips_and_refuses_garbage(tmp_path: Path) -> None:
    path = catalog_path(tmp_path, "items")
    assert read_catalog(path) is None
    catalog = ViewCatalog.initial(VIEW).add("v2")
    write_catalog(path, catalog)
    assert read_catalog(path) == catalog
    path.write_text('{"generation": 0}')
    with pytest.raises(ConfigError, match="not a view catalog"):
        read_catalog(path)
