"""The demo's similar items: a small item catalog streamed to the embedding topic, then nearest
neighbours from each region's index actor, plain and filtered by price.

Items belong to one of a few categories; an item's vector is its category's centre plus noise,
so similar items are (mostly) of the same category, which the table makes visible.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from cluster.settings import StackSettings
from features.demo import item_embedding_views
from features.embedding_search import Query, compile_filter
from features.embeddings import INDEX_ACTOR_NAMESPACE, EmbeddingView, index_actor_name

CATEGORIES = ("boots", "jackets", "lamps", "mugs", "novels", "tents")
ITEMS = 1_200
SHOWN = ("item_0", "item_1", "item_2")


def produce_items(bootstrap: str, view: EmbeddingView, seed: int = 11) -> dict[str, str]:
    """Upserts ``ITEMS`` items (now as event time); returns each item's category."""
    from kafka import KafkaProducer

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(CATEGORIES), view.dimension)).astype(np.float32)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    now = int(time.time() * 1000)
    categories = {}
    for i in range(ITEMS):
        category = CATEGORIES[i % len(CATEGORIES)]
        noise = 0.6 * rng.standard_normal(view.dimension).astype(np.float32)
        item = f"item_{i}"
        event = {
            "id": item,
            "model": view.model,
            "version": view.serving_version,
            "op": "upsert",
            "time": now,
            "vector": (centres[i % len(CATEGORIES)] + noise).tolist(),
            "categories": {"category": category},
            "numbers": {"price": float(5 + (i * 37) % 95)},
        }
        producer.send(view.topic, key=item.encode(), value=orjson.dumps(event))
        categories[item] = category
    producer.flush()
    producer.close()
    return categories


def show_similar_items(settings: StackSettings, console: Console) -> None:
    """Streams the items, waits until every region's index holds them, prints the answers."""
    import ray

    view = item_embedding_views()[0]
    categories = produce_items(settings.kafka.bootstrap, view)
    os.environ.update(settings.ray.client_env())
    ray.init(address=settings.ray.address, namespace=INDEX_ACTOR_NAMESPACE, log_to_driver=False)
    try:
        for region in settings.topology.names:
            actor = ray.get_actor(
                index_actor_name(view.name, region, view.serving_version),
                namespace=INDEX_ACTOR_NAMESPACE,
            )
            _wait_for_items(actor)
            console.print(_table(actor, view, region, categories))
    finally:
        ray.shutdown()


def _wait_for_items(actor: Any, timeout_s: float = 120.0) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ray.get(actor.status.remote(), timeout=30)
        if status["ready"] and status["indexes"]["v1"]["size"] >= ITEMS:
            return
        time.sleep(0.5)
    raise TimeoutError("the item index did not catch up")


def _table(actor: Any, view: EmbeddingView, region: str, categories: dict[str, str]) -> Table:
    import ray

    cheap = compile_filter({"price": {"lt": 20}}, view)
    queries = []
    for item in SHOWN:
        vector = np.asarray(ray.get(actor.vector_of.remote(None, item)), dtype=np.float32)
        queries += [Query(vector, 6), Query(vector, 6, cheap)]
    answer = ray.get(actor.search.remote(None, queries), timeout=30)
    table = Table(
        title=f"similar items, {region} (model {answer.model_version}, "
        f"index version {answer.index_version}, {answer.store})"
    )
    for column in ("item", "category", "5 nearest", "5 nearest with price < 20"):
        table.add_column(column)
    for n, item in enumerate(SHOWN):
        plain, filtered = answer.results[2 * n], answer.results[2 * n + 1]
        table.add_row(
            item,
            categories[item],
            _hits(plain.ids, item, categories),
            _hits(filtered.ids, item, categories),
        )
    return table


def _hits(ids: tuple[str, ...], item: str, categories: dict[str, str]) -> str:
    others = [i for i in ids if i != item][:5]  # 6 asked: the item itself may be among them
    return ", ".join(f"{i} ({categories[i]})" for i in others)
