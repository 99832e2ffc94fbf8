"""The embedding index actor on the real stack: Kafka in, Ray actor, searches against brute force,
and a kill mid-stream that loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import ray
from kafka import KafkaProducer

from actors.embedding_actor import EmbeddingIngestConfig, start_index_actor
from cluster.embeddings import index_configs, start_index_actors
from cluster.stack import Stack
from features.embedding_search import Query, SearchAnswer, compile_filter
from features.embeddings import INDEX_ACTOR_NAMESPACE, EmbeddingView, index_actor_name
from regions.aws import LOCAL_CREDENTIALS
from serve_apps.config import ApiKey, new_api_key
from serve_apps.deploy import configs_for_stack, deploy
from serve_apps.similar import SimilarSearch
from tests.integration.serving_world import shutdown_serve

DIM = 8
COLOURS = ("red", "blue", "green")


def _view(topic: str, versions: tuple[str, ...] = ("v1",)) -> EmbeddingView:
    # nprobe = nlist: the trained IVF visits every list, so answers must equal brute force.
    return EmbeddingView(
        name=f"items_{topic.rsplit('.', maxsplit=1)[-1]}",
        topic=topic,
        dimension=DIM,
        model="item2vec",
        model_versions=versions,
        serving_version="v1",
        categories=frozenset({"colour"}),
        nlist=2,
        nprobe=2,
    )


class Ledger:
    """What the producer sent: the latest vector per live entity (the oracle)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.topic = topic
        self.live: dict[str, tuple[np.ndarray, str]] = {}
        self.sent = 0
        self.rng = np.random.default_rng(7)

    def upsert(self, i: int, time_ms: int) -> None:
        vector = self.rng.standard_normal(DIM).astype(np.float32)
        colour = COLOURS[i % 3]
        self._send(
            i,
            {
                "op": "upsert",
                "time": time_ms,
                "vector": vector.tolist(),
                "categories": {"colour": colour},
            },
        )
        self.live[f"e{i}"] = (vector, colour)

    def delete(self, i: int, time_ms: int) -> None:
        self._send(i, {"op": "delete", "time": time_ms})
        self.live.pop(f"e{i}", None)

    def bad(self, i: int) -> None:
        self._send(i, {"op": "upsert", "time": 1, "vector": [1.0]})  # wrong dimension

    def _send(self, i: int, fields: dict[str, Any]) -> None:
        event = {"id": f"e{i}", "model": "item2vec", "version": "v1", **fields}
        self.producer.send(self.topic, key=f"e{i}".encode(), value=orjson.dumps(event))
        self.sent += 1

    def flush(self) -> None:
        self.producer.flush()

    def top(self, query: np.ndarray, k: int, colour: str | None = None) -> list[str]:
        rows = [(e, v) for e, (v, c) in self.live.items() if colour in (None, c)]
        rows.sort(key=lambda ev: float(((ev[1] - query) ** 2).sum()))
        return [e for e, _ in rows[:k]]


def _wait_for(actor: Any, consumed: int, timeout_s: float = 90.0) -> dict[str, Any]:
    """The actor's status once it has read ``consumed`` records (a wait, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = ray.get(actor.status.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            time.sleep(0.5)  # restarting
            continue
        if status["ready"] and sum(status["positions"].values()) >= consumed:
            return status
        time.sleep(0.2)
    pytest.fail(f"the index actor did not read {consumed} records: {status}")


def _search(actor: Any, queries: list[Query]) -> SearchAnswer:
    answer: SearchAnswer = ray.get(actor.search.remote(None, queries), timeout=30)
    return answer


@pytest.fixture
def ray_client(stack: Stack) -> Iterator[None]:
    ray.init(
        address=stack.settings.ray.address,
        namespace=INDEX_ACTOR_NAMESPACE,
        ignore_reinit_error=True,
    )
    yield
    ray.shutdown()


def test_the_index_actor_answers_brute_force_and_survives_a_kill(
    stack: Stack,
    topic_factory: Callable[..., str],
    ray_client: None,
    tmp_path: Path,
) -> None:
    topic, dlq = topic_factory(partitions=2), topic_factory(partitions=1)
    view = _view(topic)
    ledger = Ledger(stack.settings.kafka.bootstrap, topic)
    now = int(time.time() * 1000)
    for i in range(300):
        ledger.upsert(i, now - 10_000)
    for i in range(0, 300, 5):
        ledger.delete(i, now - 9_000)
    ledger.bad(1)
    ledger.flush()
    config = EmbeddingIngestConfig(
        bootstrap=stack.settings.kafka.bootstrap,
        state_dir=tmp_path,
        dlq_topic=dlq,
        snapshot_interval_s=0.5,
        region=stack.settings.topology.names[0],
    )
    actor = start_index_actor(config, view)
    try:
        status = _wait_for(actor, ledger.sent)
        assert status["dead_lettered"] == {"wrong_dimension": 1}
        assert status["indexes"]["v1"]["kind"] == "ivf"  # 240 live > train_size (78)
        queries = np.random.default_rng(1).standard_normal((5, DIM)).astype(np.float32)
        red = compile_filter({"colour": "red"}, view)
        answer = _search(
            actor, [Query(q, 10) for q in queries] + [Query(q, 10, red) for q in queries]
        )
        assert [list(n.ids) for n in answer.results] == [ledger.top(q, 10) for q in queries] + [
            ledger.top(q, 10, "red") for q in queries
        ]

        # Through Serve's path: the Ray backend finds the named actor, by entity id.
        similar = SimilarSearch({view.name: view}, config.region)
        body = {"view": view.name, "entity_id": "e3", "k": 5}
        served = asyncio.run(similar.answer(body, "it"))
        assert [hit["id"] for hit in served["results"]] == ledger.top(ledger.live["e3"][0], 6)[1:]
        assert (served["model_version"], served["strategy"]) == ("v1", "unfiltered")

        time.sleep(1.0)  # past the snapshot interval: the next poll writes a snapshot
        ray.kill(actor, no_restart=False)  # Ray restarts it: restore the snapshot, replay
        for i in range(300, 400):
            ledger.upsert(i, now - 8_000)
        for i in range(1, 300, 7):
            ledger.delete(i, now - 7_000)
        ledger.flush()
        _wait_for(actor, ledger.sent)
        everything = _search(actor, [Query(queries[0], 1000)]).results[0].ids
        assert len(everything) == len(set(everything))  # no duplicate ids
        assert set(everything) == set(ledger.live)  # none missing, no deleted one back
    finally:
        ray.kill(actor, no_restart=True)


KEY = new_api_key()


def _similar(http: httpx.Client, region: str, body: dict[str, Any]) -> httpx.Response:
    return http.post(f"/{region}/v1/similar", headers={"x-api-key": KEY}, json=body)


def _wait_served(http: httpx.Client, region: str, body: dict[str, Any]) -> None:
    """Until the region's app is up (its readiness needs a tile read, which this test has none
    of): a wait, not a timing check."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if _similar(http, region, body).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{region} never served /v1/similar")


def test_each_region_serves_similar_items_and_falls_back_when_its_index_dies(
    stack: Stack,
    topic_factory: Callable[..., str],
    ray_client: None,
    tmp_path: Path,
) -> None:
    """The deployment's path: ``cluster.embeddings`` starts the actors, Serve finds them by name."""
    topic = topic_factory(partitions=2)
    view = _view(topic, versions=("v1", "v2"))  # v2 declared, its index never started
    ledger = Ledger(stack.settings.kafka.bootstrap, topic)
    now = int(time.time() * 1000)
    for i in range(200):
        ledger.upsert(i, now - 10_000)
    for i in range(0, 200, 9):
        ledger.delete(i, now - 9_000)
    ledger.flush()
    topology = stack.settings.topology
    configs = index_configs(
        view,
        topology,
        bootstrap=stack.settings.kafka.bootstrap,
        state_dir=tmp_path,
        users=stack.settings.redis,
        secrets=stack.secrets,
    )
    actors = start_index_actors([view], [[c for c in configs if c.versions == ("v1",)]])
    serving = configs_for_stack(
        stack.settings,
        [ApiKey.from_raw("tests", KEY)],
        dynamodb_credentials=(
            LOCAL_CREDENTIALS["aws_access_key_id"],
            LOCAL_CREDENTIALS["aws_secret_access_key"],
        ),
        replicas=1,
    )
    port = stack.settings.ray.serve_port
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
    try:
        for actor in actors:
            _wait_for(actor, ledger.sent)
        deploy(serving, ray_address=stack.settings.ray.address, http_port=port, embeddings=[view])
        query = np.random.default_rng(3).standard_normal(DIM).astype(np.float32)
        for region in topology.names:
            _wait_served(http, region, {"view": view.name, "vector": query.tolist()})
        home, other = topology.names[0], topology.names[1]
        index_versions: set[int] = set()
        for region in topology.names:
            out = _similar(http, region, {"view": view.name, "vector": query.tolist(), "k": 10})
            assert out.status_code == 200, out.text
            answer = out.json()
            assert [hit["id"] for hit in answer["results"]] == ledger.top(query, 10)
            assert (answer["region"], answer["store"], answer["model_version"]) == (
                region,
                f"index-{region}",
                "v1",
            )
            index_versions.add(answer["index_version"])
            # By id: the vector comes from the region's Redis; the entity is left out.
            by_id = _similar(http, region, {"view": view.name, "entity_id": "e4", "k": 5}).json()
            assert [h["id"] for h in by_id["results"]] == ledger.top(ledger.live["e4"][0], 6)[1:]
            red = {
                "view": view.name,
                "vector": query.tolist(),
                "k": 5,
                "filters": {"colour": "red"},
            }
            hits = _similar(http, region, red).json()["results"]
            assert [h["id"] for h in hits] == ledger.top(query, 5, "red")
            deleted = _similar(http, region, {"view": view.name, "entity_id": "e9"})
            assert (deleted.status_code, deleted.json()["error"]) == (422, "unknown_entity")
            not_built = {"view": view.name, "vector": query.tolist(), "version": "v2"}
            refused = _similar(http, region, not_built)
            assert (refused.status_code, refused.json()["error"]) == (409, "version_not_ready")
        assert len(index_versions) == 1  # both regions applied the same changes

        # The home region's index dies for good: its Serve app answers from the other region's.
        ray.kill(ray.get_actor(index_actor_name(view.name, home, "v1")), no_restart=True)
        out = _similar(http, home, {"view": view.name, "vector": query.tolist(), "k": 10})
        assert out.status_code == 200, out.text
        assert (out.json()["region"], out.json()["store"]) == (home, f"index-{other}")
        assert [hit["id"] for hit in out.json()["results"]] == ledger.top(query, 10)
    finally:
        http.close()
        for actor in actors:
            ray.kill(actor, no_restart=True)
        shutdown_serve()
