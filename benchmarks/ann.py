"""Nearest neighbours: recall and latency of the embedding indexes, in process and through Serve.

    .venv/bin/python benchmarks/ann.py            # 1,000,000 base vectors
    .venv/bin/python benchmarks/ann.py --quick    # 100,000 base vectors, under ~3 minutes

Data: ``faiss.contrib.datasets.SyntheticDataset(128, 200_000, nb, 1_000)`` (nb = 1,000,000, or
100,000 with ``--quick``); ground truth is its exact top 10 (L2). For IVF-Flat and HNSW, each an
``actors.embedding_index.EmbeddingIndex`` fed the base vectors as events (the product's code path,
one event at a time): build seconds, resident MB (RSS growth while building), 10-recall@10 (the
share of the true top 10 returned), p50/p99 of single queries in process, and recall of filtered
queries at 50 %, 5 % and 0.5 % selectivity (a number attribute ``sel`` = row mod 1000, filtered
``sel < 500 | 50 | 5``; truth is the exact top 10 among the rows that pass).

Through Serve: the real stack (Kafka, Redis, Ray, Serve), the first ``--serve-vectors`` base
vectors produced to Kafka and indexed by the deployment's index actors (``cluster.embeddings``),
then ``POST /us-east/v1/similar`` by vector at a fixed 200 req/s (open loop); p50/p99 include
the wait for a connection.

Last line: JSON with ivf_recall10, ivf_p99_ms, hnsw_recall10, hnsw_p99_ms, serve_p99_ms,
filtered_recall_min; the run is appended to ``benchmarks/results/ann.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss
import orjson
from faiss.contrib.datasets import SyntheticDataset
from loadgen import open_loop, request_bytes

from actors.embedding_index import EmbeddingIndex
from cluster.results import current_command, record_run
from features.embedding_search import Query, compile_filter
from features.embeddings import EmbeddingEvent, EmbeddingView, IndexKind, Op

DIM, TRAIN, QUERIES, K = 128, 200_000, 1_000, 10
SELECTIVITY = {"50%": 500, "5%": 50, "0.5%": 5}  # sel < bound passes
FILTERED_QUERIES = 200
SERVE_RATE = 200.0
Matrix = NDArray[np.float32]


def _view(kind: IndexKind, args: argparse.Namespace, topic: str = "fl.bench.ann") -> EmbeddingView:
    return EmbeddingView(
        name="ann",
        topic=topic,
        dimension=DIM,
        index=kind,
        model="bench",
        model_versions=("v1",),
        serving_version="v1",
        numbers=frozenset({"sel"}),
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        hnsw_ef_search=args.ef_search,
    )


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _events(base: Matrix, start: int, stop: int) -> list[EmbeddingEvent]:
    return [
        EmbeddingEvent(f"e{i}", "v1", Op.UPSERT, 1, base[i], {}, {"sel": float(i % 1000)}, ())
        for i in range(start, stop)
    ]


def recall_at_10(found: list[list[int]], truth: NDArray[np.int64]) -> float:
    hits = sum(len(set(f[:K]) & set(t[:K].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (K * len(found))


def _rows(ids: tuple[str, ...]) -> list[int]:
    return [int(entity[1:]) for entity in ids]


def measure_index(
    kind: IndexKind, args: argparse.Namespace, base: Matrix, queries: Matrix, truth: Any
) -> dict[str, Any]:
    index = EmbeddingIndex(_view(kind, args), "v1")
    rss, started = _rss_mb(), time.perf_counter()
    for start in range(0, len(base), 10_000):
        index.apply(_events(base, start, min(start + 10_000, len(base))))
    build_s = time.perf_counter() - started
    resident = _rss_mb() - rss
    found, latencies = [], []
    for q in queries:
        t0 = time.perf_counter()
        neighbours = index.search_batch([Query(q, K)])[0]
        latencies.append(time.perf_counter() - t0)
        found.append(_rows(neighbours.ids))
    out = {
        "build_s": round(build_s, 1),
        "resident_mb": round(resident, 1),
        "recall10": round(recall_at_10(found, truth), 4),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
        "filtered": _filtered(index, base, queries[:FILTERED_QUERIES]),
    }
    del index
    return out


def _filtered(index: EmbeddingIndex, base: Matrix, queries: Matrix) -> dict[str, Any]:
    sel = np.arange(len(base)) % 1000
    out: dict[str, Any] = {}
    for label, bound in SELECTIVITY.items():
        passing = np.flatnonzero(sel < bound)
        _, local = faiss.knn(queries, base[passing], K)
        truth = passing[local]
        flt = compile_filter({"sel": {"lt": bound}}, index.view)
        answers = index.search_batch([Query(q, K, flt) for q in queries])
        found = [_rows(n.ids) for n in answers]
        out[label] = {
            "recall10": round(recall_at_10(found, truth), 4),
            "strategy": answers[0].strategy.value,
        }
    return out


# --- Through Serve ---------------------------------------------------------------------------


def measure_serve(args: argparse.Namespace, base: Matrix, queries: Matrix) -> dict[str, Any]:
    from cluster.embeddings import index_configs, start_index_actors
    from cluster.isolated import isolated_settings
    from cluster.stack import Stack
    from regions.aws import LOCAL_CREDENTIALS
    from serve_apps.config import ApiKey, new_api_key
    from serve_apps.deploy import configs_for_stack, deploy

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as benchmarks/serving.py
    state = Path(tempfile.mkdtemp(prefix="fl-ann-"))
    stack = Stack.build(isolated_settings(state, with_ray=True), environ={})
    key = new_api_key()
    try:
        for service in stack.services:
            if service.name.startswith(("kafka", "redis", "dynamodb", "ray")):
                service.start()
        settings = stack.settings
        view = _view(IndexKind.IVF_FLAT, args, topic="fl.bench.ann")
        vectors = base[: args.serve_vectors]
        _produce(settings.kafka.bootstrap, view.topic, vectors)
        import ray

        ray.init(address=settings.ray.address, log_to_driver=False)
        configs = index_configs(
            view,
            settings.topology,
            bootstrap=settings.kafka.bootstrap,
            state_dir=state / "embeddings",
            users=settings.redis,
            secrets=stack.secrets,
        )
        actors = start_index_actors([view], [configs])
        indexed_s = _wait_indexed(actors, len(vectors))
        serving = configs_for_stack(
            settings,
            [ApiKey.from_raw("bench", key)],
            dynamodb_credentials=(
                LOCAL_CREDENTIALS["aws_access_key_id"],
                LOCAL_CREDENTIALS["aws_secret_access_key"],
            ),
            replicas=1,
        )
        port = settings.ray.serve_port
        deploy(serving, ray_address=settings.ray.address, http_port=port, embeddings=[view])
        headers = {"x-api-key": key, "content-type": "application/json"}
        raws = [
            request_bytes(
                "127.0.0.1",
                port,
                "/us-east/v1/similar",
                orjson.dumps({"view": view.name, "vector": q.tolist(), "k": K}),
                headers,
            )
            for q in queries[:200]
        ]
        _wait_served(port, raws[0])
        result = asyncio.run(open_loop("127.0.0.1", port, raws, SERVE_RATE, args.serve_seconds))
        summary = result.summary()
        return {"vectors": len(vectors), "indexed_s": round(indexed_s, 1), **summary}
    finally:
        try:
            from ray import serve

            serve.shutdown()  # type: ignore[no-untyped-call]
            import ray

            ray.shutdown()
        finally:
            stack.down(purge=True)
            shutil.rmtree(state, ignore_errors=True)


def _produce(bootstrap: str, topic: str, vectors: Matrix) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20)
    now = int(time.time() * 1000)
    for i, vector in enumerate(vectors):
        event: dict[str, Any] = {"id": f"e{i}", "model": "bench", "version": "v1", "op": "upsert"}
        event.update(time=now, vector=vector.tolist(), numbers={"sel": float(i % 1000)})
        producer.send(topic, key=f"e{i}".encode(), value=orjson.dumps(event))
    producer.flush()
    producer.close()


def _wait_indexed(actors: list[Any], count: int, timeout_s: float = 300.0) -> float:
    import ray

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        statuses = ray.get([a.status.remote() for a in actors], timeout=60)
        if all(s["ready"] and s["indexes"]["v1"]["size"] >= count for s in statuses):
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"the index actors never held {count} vectors")


def _wait_served(port: int, raw: bytes, timeout_s: float = 120.0) -> None:
    from chaos.load import connect

    async def once() -> int:
        conn = await connect("127.0.0.1", port)
        try:
            return (await conn.roundtrip(raw)).status
        finally:
            conn.writer.close()

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if asyncio.run(once()) == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("POST /us-east/v1/similar never answered 200")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 base vectors")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    parser.add_argument("--nprobe", type=int, default=64, help="IVF lists visited per query")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search beam")
    parser.add_argument("--serve-vectors", type=int, default=None, help="vectors through Kafka")
    parser.add_argument("--serve-seconds", type=float, default=None, help="load duration")
    parser.add_argument("--no-serve", action="store_true", help="in process only")
    args = parser.parse_args()
    if args.serve_vectors is None:
        args.serve_vectors = 20_000 if args.quick else 100_000
    if args.serve_seconds is None:
        args.serve_seconds = 10.0 if args.quick else 30.0
    return args


def main() -> None:
    args = _args()
    started = time.monotonic()
    base_count = 100_000 if args.quick else 1_000_000
    # faiss.contrib is untyped.
    ds: Any = SyntheticDataset(DIM, TRAIN, base_count, QUERIES)  # type: ignore[no-untyped-call]
    base, queries = ds.get_database(), ds.get_queries()
    truth = ds.get_groundtruth(K)
    figures: dict[str, Any] = {"base_vectors": base_count, "queries": QUERIES}
    figures["params"] = {k: getattr(args, k) for k in ("nlist", "nprobe", "hnsw_m", "ef_search")}
    figures["ivf"] = measure_index(IndexKind.IVF_FLAT, args, base, queries, truth)
    figures["hnsw"] = measure_index(IndexKind.HNSW, args, base, queries, truth)
    figures["serve"] = None if args.no_serve else measure_serve(args, base, queries)
    filtered = [
        f["recall10"] for kind in ("ivf", "hnsw") for f in figures[kind]["filtered"].values()
    ]
    figures.update(
        ivf_recall10=figures["ivf"]["recall10"],
        ivf_p99_ms=figures["ivf"]["p99_ms"],
        hnsw_recall10=figures["hnsw"]["recall10"],
        hnsw_p99_ms=figures["hnsw"]["p99_ms"],
        serve_p99_ms=None if figures["serve"] is None else figures["serve"]["p99_ms"],
        filtered_recall_min=min(filtered),
        wall_s=round(time.monotonic() - started, 1),
    )
    record_run("ann", figures, command=current_command())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
