"""Model versions on the real stack: v2 is built beside v1 by the view's catalog actor, a switch
moves every region's reads without redeploying Serve, both versions answer while v1 retires, and
after its grace period v1's actors, Redis vectors and snapshots are gone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import ray
from kafka import KafkaProducer

from cluster import embeddings
from cluster.stack import Stack
from features.embeddings import (
    INDEX_ACTOR_NAMESPACE,
    EmbeddingView,
    index_actor_name,
    vector_key,
    vector_marker_key,
)
from regions.aws import LOCAL_CREDENTIALS
from regions.redis_store import RedisRole, redis_client
from serve_apps.config import ApiKey, new_api_key
from serve_apps.deploy import configs_for_stack, deploy
from tests.integration.serving_world import shutdown_serve

DIM = 8
ENTITIES = 120
KEY = new_api_key()


class Versions:
    """What the producer sent per model version: each entity's vector (the oracle)."""

    def __init__(self, bootstrap: str, view: EmbeddingView) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.view = view
        self.vectors: dict[str, dict[str, np.ndarray]] = {}
        self.sent = 0

    def send(self, version: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        now = int(time.time() * 1000)
        vectors = self.vectors.setdefault(version, {})
        for i in range(ENTITIES):
            vector = rng.standard_normal(DIM).astype(np.float32)
            event = {
                "id": f"e{i}",
                "model": self.view.model,
                "version": version,
                "op": "upsert",
                "time": now - 10_000,
                "vector": vector.tolist(),
            }
            self.producer.send(self.view.topic, key=f"e{i}".encode(), value=orjson.dumps(event))
            vectors[f"e{i}"] = vector
            self.sent += 1
        self.producer.flush()

    def top(self, version: str, query: np.ndarray, k: int) -> list[str]:
        rows = sorted(
            self.vectors[version].items(), key=lambda ev: float(((ev[1] - query) ** 2).sum())
        )
        return [e for e, _ in rows[:k]]


def _until(what: str, check: Callable[[], Any], timeout_s: float = 120.0) -> Any:
    """Waits until ``check()`` is truthy and returns it (a wait, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except (ray.exceptions.RayError, httpx.HTTPError):
            found = None
        if found:
            return found
        time.sleep(0.25)
    pytest.fail(f"never: {what}")


def _status(name: str) -> dict[str, Any] | None:
    try:
        actor = ray.get_actor(name, namespace=INDEX_ACTOR_NAMESPACE)
    except ValueError:
        return None
    return dict(ray.get(actor.status.remote(), timeout=10))


def _caught_up(view: EmbeddingView, region: str, version: str, records: int) -> bool:
    status = _status(index_actor_name(view.name, region, version))
    return bool(status and status["ready"] and sum(status["positions"].values()) >= records)


def _exists(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=INDEX_ACTOR_NAMESPACE)
    except ValueError:
        return False
    return True


@pytest.fixture
def ray_client(stack: Stack) -> Iterator[None]:
    ray.init(
        address=stack.settings.ray.address,
        namespace=INDEX_ACTOR_NAMESPACE,
        ignore_reinit_error=True,
    )
    yield
    ray.shutdown()


def test_v2_builds_beside_v1_switches_live_and_v1_is_dropped_after_its_grace(
    stack: Stack,
    topic_factory: Callable[..., str],
    ray_client: None,
    tmp_path: Path,
) -> None:
    view = EmbeddingView(
        name=f"versions_{uuid.uuid4().hex[:8]}",
        topic=topic_factory(partitions=2),
        dimension=DIM,
        model="item2vec",
        model_versions=("v1",),
        serving_version="v1",
        nlist=2,
        nprobe=2,  # every list visited: answers equal brute force
    )
    topology = stack.settings.topology
    regions = topology.names
    versions = Versions(stack.settings.kafka.bootstrap, view)
    versions.send("v1", seed=1)
    fleet = embeddings.fleet_config(
        topology,
        bootstrap=stack.settings.kafka.bootstrap,
        state_dir=tmp_path,
        users=stack.settings.redis,
        secrets=stack.secrets,
        snapshot_interval_s=1.0,
    )
    admins = {
        r.name: redis_client(r, RedisRole.ADMIN, stack.settings.redis, stack.secrets)
        for r in topology.regions
    }
    port = stack.settings.ray.serve_port
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
    query = np.random.default_rng(3).standard_normal(DIM).astype(np.float32)

    def similar(region: str, **extra: Any) -> httpx.Response:
        body = {"view": view.name, "vector": query.tolist(), "k": 5, **extra}
        return http.post(f"/{region}/v1/similar", headers={"x-api-key": KEY}, json=body)

    def answered(region: str, **extra: Any) -> dict[str, Any]:
        out = similar(region, **extra)
        assert out.status_code == 200, out.text
        return dict(out.json())

    try:
        embeddings.start_catalogs([view], fleet)
        for region in regions:
            _until("v1 indexed", lambda r=region: _caught_up(view, r, "v1", versions.sent))
        serving = configs_for_stack(
            stack.settings,
            [ApiKey.from_raw("tests", KEY)],
            dynamodb_credentials=(
                LOCAL_CREDENTIALS["aws_access_key_id"],
                LOCAL_CREDENTIALS["aws_secret_access_key"],
            ),
            replicas=1,
        )
        deploy(serving, ray_address=stack.settings.ray.address, http_port=port, embeddings=[view])
        for region in regions:
            _until(f"{region} serves", lambda r=region: similar(r).status_code == 200)
            answer = answered(region)
            assert answer["model_version"] == "v1"
            assert [h["id"] for h in answer["results"]] == versions.top("v1", query, 5)

        # v2 is built beside v1; reads stay on v1 until the switch.
        assert embeddings.add_version(view.name, "v2").view.model_versions == ("v1", "v2")
        versions.send("v2", seed=2)
        for region in regions:
            _until("v2 indexed", lambda r=region: _caught_up(view, r, "v2", versions.sent))
            named = _until(
                f"{region} follows the catalog's v2",
                lambda r=region: (
                    (out := similar(r, version="v2")).status_code == 200 and out.json()
                ),
            )
            assert (named["model_version"], named["store"]) == ("v2", f"index-{region}")
            assert [h["id"] for h in named["results"]] == versions.top("v2", query, 5)
            assert answered(region)["model_version"] == "v1"

        switched = embeddings.switch_version(view.name, "v2", grace_s=3600)
        assert switched.view.serving_version == "v2"
        for region in regions:
            moved = _until(
                f"{region} reads v2 without a redeploy",
                lambda r=region: (a := answered(r))["model_version"] == "v2" and a,
            )
            assert [h["id"] for h in moved["results"]] == versions.top("v2", query, 5)
            retiring = answered(region, version="v1")  # searchable through its grace period
            assert [h["id"] for h in retiring["results"]] == versions.top("v1", query, 5)
            assert _exists(index_actor_name(view.name, region, "v1"))
            assert admins[region].exists(vector_key(view.name, "v1", "e1"))

        # A short grace: v1's actors, vectors and snapshots go once it is over.
        embeddings.retire_version(view.name, "v1", grace_s=2)
        catalog = _until(
            "v1 dropped and deleted",
            lambda: (
                (c := embeddings.catalog(view.name)).dropping == ()
                and "v1" not in c.view.model_versions
                and c
            ),
        )
        assert (catalog.view.model_versions, catalog.view.serving_version) == (("v2",), "v2")
        for region in regions:
            assert not _exists(index_actor_name(view.name, region, "v1"))
            admin = admins[region]
            assert list(admin.scan_iter(match=f"fl:emb:{view.name}:v1:*")) == []
            assert not admin.exists(vector_marker_key(view.name, "v1"))
            assert len(list(admin.scan_iter(match=f"fl:emb:{view.name}:v2:*"))) == ENTITIES
            assert admin.get(vector_marker_key(view.name, "v2")) == b"ready"
            assert not (tmp_path / region / view.name / "v1").exists()
            assert (tmp_path / region / view.name / "v2").exists()
            gone = _until(
                f"{region} refuses v1",
                lambda r=region: (out := similar(r, version="v1")).status_code == 422 and out,
            )
            assert gone.json()["error"] == "unknown_model_version"
            assert answered(region)["model_version"] == "v2"
    finally:
        http.close()
        for admin in admins.values():
            admin.close()
        embeddings.stop_index_actors([view], topology)
        shutdown_serve()
