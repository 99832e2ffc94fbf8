"""Training sets against the real stack: generated events (out of order, late, malformed) go
through Kafka, a stream consumer and the offline writer into Iceberg; ``freshline training-set``
(on the stack's Ray) builds the set; every row equals the independent oracle
(``chaos/oracle.py``)."""

from __future__ import annotations

import itertools
import logging
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data
from kafka import KafkaConsumer, TopicPartition

from actors.offline_tables import RAW_TABLE
from chaos.oracle import LedgerEntry, accepted_events, expected_values
from cluster.events.runner import Clock, run_generator
from cluster.events.synth import GeneratorConfig
from cluster.services.offline import iceberg_catalog
from cluster.stack import Stack
from features.catalog import Catalog
from features.demo import SOURCE, card_transactions_catalog
from tests.integration.conftest import stack_env
from tests.integration.offline_path import OfflinePath
from training.build import TrainingSetOptions, training_dataset

pytestmark = pytest.mark.integration
CATALOG = card_transactions_catalog()
STEP_MS = 15_000  # event-time step per generated event: the stream spans hours, not a second
FEATURES = [
    *(
        f"user_spend:{f.name}"
        for f in CATALOG.view("user_spend").features
        if f.name != "amount_cusum"
    ),
    *(f"merchant_activity:{f.name}" for f in CATALOG.view("merchant_activity").features),
]


def _generate(bootstrap: str, topic: str, tmp: Path, *, seed: int, start_ms: int, n: int) -> None:
    """``n`` events whose clock starts at ``start_ms`` and steps ``STEP_MS`` per event."""
    ticks = itertools.count(start_ms, STEP_MS)
    config = GeneratorConfig(
        run_id=f"train{seed}",
        seed=seed,
        n_users=25,
        n_merchants=8,
        max_events=n,
        rate_per_s=50_000.0,
        out_of_order_share=0.1,
        max_out_of_order_ms=4_000,
        late_share=0.05,
        late_min_lag_ms=120_000,
        late_warmup_events=50,
        malformed_share=0.05,
    )
    clock = Clock(now_ms=lambda: next(ticks))
    report = run_generator(config, bootstrap, topic, tmp / f"ledger{seed}.jsonl", clock=clock)
    assert report.acked == n


def _ledger(bootstrap: str, topic: str) -> list[LedgerEntry]:
    """Every record of the topic as Kafka stored it (the oracle's input)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out: list[LedgerEntry] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in parts):
            assert time.monotonic() < deadline, "timed out reading the topic back"
            for batch in consumer.poll(timeout_ms=500).values():
                out += [LedgerEntry(r.partition, r.offset, r.value, r.timestamp) for r in batch]
        return out
    finally:
        consumer.close()


def _spine(accepted: list[dict[str, Any]], seed: int, until_ms: int) -> pa.Table:
    rng = random.Random(seed)
    users = [*sorted({e["user_id"] for e in accepted}), "u_ghost"]
    merchants = [*sorted({e["merchant_id"] for e in accepted}), "m_ghost"]
    first = min(e["event_time_ms"] for e in accepted)
    times = []
    for _ in range(260):
        pick = rng.random()
        if pick < 0.5:
            times.append(rng.choice(accepted)["event_time_ms"] + rng.choice([-1, 0, 0, 1]))
        elif pick < 0.6:
            times.append(first - rng.randrange(1, 3_600_000))  # before any data
        else:
            times.append(rng.randrange(first, until_ms))
    rows = {
        "user_id": [rng.choice(users) for _ in times],
        "merchant_id": [rng.choice(merchants) for _ in times],
        "timestamp": times,
        "label": [rng.random() < 0.1 for _ in times],
    }
    spine = pa.table(rows)
    return pa.concat_tables([spine, spine.slice(0, 30)])  # duplicate rows are kept


def _training_set(stack: Stack, tmp: Path, spine: pa.Table, name: str, *extra: str) -> pa.Table:
    pq.write_table(spine, tmp / f"{name}.spine.parquet")
    out = tmp / f"{name}.parquet"
    argv = [
        sys.executable, "-m", "cluster.cli", "training-set",
        "--spine", str(tmp / f"{name}.spine.parquet"),
        "--features", ",".join(FEATURES),
        "--out", str(out),
        "--ray-address", stack.settings.ray.address,
        *extra,
    ]  # fmt: skip
    done = subprocess.run(argv, env=stack_env(stack.settings), capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return pq.read_table(out)


def _expected(catalog: Catalog, accepted: list[dict[str, Any]], ref: str, entity: str, t: int
              ) -> tuple[Any, str]:  # fmt: skip
    """(value, status) by the oracle: defaults where serving would have none."""
    view_name, _, name = ref.partition(":")
    view = catalog.view(view_name)
    feature = view.feature(name)
    key = view.key_field(catalog)
    mine = [e["event_time_ms"] for e in accepted if e[key] == entity and e["event_time_ms"] <= t]
    if not mine:
        return feature.default, "not_found"
    if t - max(mine) > view.ttl_ms:
        return feature.default, "stale"
    spec = feature.tile_spec
    if spec is not None:
        start = (t // spec.tile_ms) * spec.tile_ms + spec.tile_ms - spec.window_ms
        if not any(m >= start for m in mine):
            return feature.default, "default"
    value = expected_values(accepted, catalog, view_name, entity, t)[name]
    return (feature.default, "default") if value is None else (value, "present")


def _assert_equals_oracle(got: pa.Table, spine: pa.Table, accepted: list[dict[str, Any]]) -> None:
    assert got.num_rows == spine.num_rows
    assert got.select(spine.column_names).equals(spine), "spine columns, order and rows kept"
    rows = got.to_pylist()
    for ref in FEATURES:
        view, _, name = ref.partition(":")
        key = CATALOG.view(view).key_field(CATALOG)
        for row in rows:
            value, status = _expected(CATALOG, accepted, ref, row[key], row["timestamp"])
            where = (ref, row[key], row["timestamp"])
            assert row[f"{view}__{name}__status"] == status, where
            if isinstance(value, float):
                assert row[f"{view}__{name}"] == pytest.approx(value, rel=1e-9), where
            else:
                assert row[f"{view}__{name}"] == value, where


def test_training_sets_equal_the_oracle_and_late_ingestion_does_not_leak(
    stack: Stack, kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory(partitions=8)
    path = OfflinePath(
        kafka_bootstrap,
        topic_factory,
        topic,
        batch_records=1_000,
        batch_interval_ms=200,
        iceberg_catalog_uri=stack.settings.iceberg_catalog_uri,
        iceberg_warehouse=stack.settings.iceberg_warehouse,
        namespace=f"t_{uuid.uuid4().hex[:8]}",
    )
    config = path.writer_config
    now = int(time.time() * 1000)
    start = now - 3_000 * STEP_MS
    _generate(kafka_bootstrap, topic, tmp_path, seed=1, start_ms=start, n=2_000)
    first = _ledger(kafka_bootstrap, topic)
    path.ingest()
    accepted_first = accepted_events(first, CATALOG, SOURCE)
    assert len(accepted_first) < len(first), "the stream holds refused (late, malformed) events"

    # Every row as the oracle says; the Parquet names the snapshot it read.
    spine = _spine(accepted_first, 1, start + 2_100 * STEP_MS)
    namespace = ["--namespace", config.namespace]
    built = _training_set(stack, tmp_path, spine, "first", *namespace)
    _assert_equals_oracle(built, spine, accepted_first)
    snapshot = built.schema.metadata[b"freshline.iceberg.snapshot_id"].decode()
    cutoff = int(time.time() * 1000)

    # Later ingestion: events after the cutoff, some stamped inside the spine's span.
    time.sleep(0.05)
    _generate(kafka_bootstrap, topic, tmp_path, seed=2, start_ms=start + 2_000 * STEP_MS, n=600)
    everything = _ledger(kafka_bootstrap, topic)
    path.ingest()
    accepted_all = accepted_events(everything, CATALOG, SOURCE)
    assert len(accepted_all) > len(accepted_first)

    later = _spine(accepted_all, 2, start + 2_700 * STEP_MS)
    cut = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(cutoff // 1000))}.{cutoff % 1000:03d}"
    as_known = _training_set(stack, tmp_path, later, "cutoff", *namespace, "--ingested-before", cut)
    _assert_equals_oracle(as_known, later, accepted_first)
    everything_known = _training_set(stack, tmp_path, later, "all", *namespace)
    _assert_equals_oracle(everything_known, later, accepted_all)
    assert not everything_known.equals(as_known), "the later events change some rows"

    # The first set rebuilt from its snapshot, after more data landed, is the same table.
    rebuilt = _training_set(
        stack, tmp_path, spine, "rebuilt", *namespace, "--snapshot-id", snapshot
    )
    assert rebuilt.equals(built)

    # The Python API: a Dataset spine in, a Dataset out, the same rows as the CLI's file.
    table = iceberg_catalog(stack.settings).load_table((config.namespace, RAW_TABLE))
    options = TrainingSetOptions(snapshot_id=int(snapshot))
    ray.init(address=stack.settings.ray.address, logging_level=logging.WARNING)
    try:
        dataset = training_dataset(
            ray.data.from_arrow(spine), FEATURES, catalog=CATALOG, events_table=table,
            options=options,
        )  # fmt: skip
        assert pa.concat_tables(ray.get(dataset.to_arrow_refs())).equals(built)
    finally:
        ray.shutdown()
