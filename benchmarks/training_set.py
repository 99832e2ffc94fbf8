"""Point-in-time training set build: spine rows x features over raw events in Iceberg.

    .venv/bin/python benchmarks/training_set.py --quick    # under two minutes
    .venv/bin/python benchmarks/training_set.py            # 100,000 rows x 10 features, 1M events

No stack: a private Iceberg warehouse (SQLite catalog, the offline writer's ``raw_events``
schema) in a temporary folder gets synthetic accepted events (uniform users, 5 % of them out of
order by up to 4 s, 8 source partitions with Kafka-like offsets), appended in one commit; the
spine draws users (1 % unknown) and times over the data's span, plus duplicate rows. A private
local Ray runs the build (``training.build.write_training_set``: pruned Iceberg read, bucketed
``map_groups``, Parquet write).

Figures: ``total_s`` the whole build (Ray already up); ``read_s`` the Iceberg scan alone;
``compute_s`` the as-of merge of every row in this process without Ray (one core); ``ray_init_s``
starting Ray (not in ``total_s``). Correctness: ``oracle_rows`` sampled spine rows are recomputed
by ``chaos/oracle.py`` from the raw events (all 10 features each); ``oracle_mismatches`` counts
the values that differ (floats within a relative 1e-9). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.offline_tables import RAW_TABLE, IcebergTable, raw_schema
from chaos.oracle import expected_values
from cluster.results import record_run
from features.demo import SOURCE, card_transactions_catalog
from features.tiles import DAY_MS
from training.asof import Columns, as_of_values
from training.build import TrainingSetOptions, write_training_set
from training.events import event_columns, read_events

CATALOG = card_transactions_catalog()
VIEW = CATALOG.view("user_spend")
NAMES = (
    "tx_count_5m",
    "tx_count_1h",
    "tx_count_24h",
    "tx_count_7d",
    "spend_sum_1h",
    "spend_sum_24h",
    "spend_mean_24h",
    "spend_max_1h",
    "spend_min_1h",
    "last_amount",
)
FEATURES = [f"user_spend:{n}" for n in NAMES]
PARTITIONS = 8
T0 = 1_764_806_400_000  # a UTC midnight


def _events(n: int, users: int, days: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, n)
    times = T0 + np.sort(rng.integers(0, days * DAY_MS, n))
    late = rng.random(n) < 0.05
    times = times - late * rng.integers(1, 4_000, n)
    partition = (user % PARTITIONS).astype(np.int32)
    offset = np.zeros(n, dtype=np.int64)
    for p in range(PARTITIONS):
        mine = partition == p
        offset[mine] = np.arange(int(mine.sum()))
    amount = np.round(np.exp(rng.normal(3.2, 1.0, n)), 2) + 0.01
    columns: dict[str, Any] = {
        "event_id": pa.array([f"b-{i}" for i in range(n)]),
        "seq": pa.array(np.arange(n, dtype=np.int64)),
        "event_type": pa.array(["card_tx"] * n),
        "user_id": pa.array([f"u_{u:06d}" for u in user.tolist()]),
        "merchant_id": pa.array([f"m_{m:05d}" for m in rng.integers(0, 1_000, n).tolist()]),
        "amount": pa.array(amount),
        "currency": pa.array(["EUR"] * n),
        "event_time_ms": pa.array(times),
        "_event_time": pa.array(times * 1000).cast(pa.timestamp("us", tz="UTC")),
        "_event_date": pa.array((times // DAY_MS).astype(np.int32)).cast(pa.date32()),
        "_partition": pa.array(partition),
        "_offset": pa.array(offset),
        "_kafka_timestamp_ms": pa.array(times),
        "_ingested_at_ms": pa.array(times + 50),
    }
    return pa.table(columns).cast(raw_schema(CATALOG.source(SOURCE)))


def _spine(rows: int, users: int, days: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed + 1)
    user = rng.integers(0, int(users * 1.01) + 1, rows)  # about 1 % have no events
    times = T0 + rng.integers(-3_600_000, days * DAY_MS + 3_600_000, rows)
    spine = pa.table(
        {
            "user_id": pa.array([f"u_{u:06d}" for u in user.tolist()]),
            "timestamp": pa.array(times),
            "label": pa.array(rng.random(rows) < 0.02),
        }
    )
    return pa.concat_tables([spine, spine.slice(0, rows // 100)])  # duplicates


def _oracle_mismatches(events: pa.Table, got: pa.Table, rows: int, seed: int) -> int:
    """Values of ``rows`` sampled spine rows that differ from the oracle's."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    wanted = ("user_id", "merchant_id", "amount", "event_time_ms", "_partition", "_offset")
    for event in events.select(wanted).to_pylist():
        by_user[event["user_id"]].append(event)
    sample = random.Random(seed).sample(range(got.num_rows), min(rows, got.num_rows))
    mismatches = 0
    for i in sample:
        row = got.slice(i, 1).to_pylist()[0]
        expected = expected_values(
            by_user.get(row["user_id"], []), CATALOG, VIEW.name, row["user_id"], row["timestamp"]
        )
        for name in NAMES:
            mismatches += not _same(row, name, expected.get(name))
    return mismatches


def _same(row: dict[str, Any], name: str, oracle: Any) -> bool:
    value, status = row[f"user_spend__{name}"], row[f"user_spend__{name}__status"]
    if status != "present":
        return value == VIEW.feature(name).default and oracle in (None, 0, 0.0)
    if isinstance(oracle, float) and isinstance(value, float):
        return abs(value - oracle) <= 1e-9 * max(abs(oracle), 1e-300)
    return bool(value == oracle)


def _in_process_compute(events: pa.Table, spine: pa.Table) -> float:
    features = [VIEW.feature(n) for n in NAMES]
    started = time.perf_counter()
    as_of_values(
        VIEW,
        features,
        events,
        columns=Columns(key="user_id", time="event_time_ms"),
        keys=spine["user_id"].to_pylist(),
        ts=spine["timestamp"].to_numpy(),
    )
    return time.perf_counter() - started


def run(quick: bool, seed: int) -> dict[str, Any]:
    import ray
    from pyiceberg.catalog.sql import SqlCatalog

    n_events, n_rows, users, days = (
        (100_000, 10_000, 2_000, 3) if quick else (1_000_000, 100_000, 20_000, 3)
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        catalog = SqlCatalog("bench", uri=f"sqlite:///{folder}/c.db", warehouse=f"file://{folder}")
        table = IcebergTable(
            catalog, "bench", RAW_TABLE, raw_schema(CATALOG.source(SOURCE)), "_event_date"
        )
        events = _events(n_events, users, days, seed)
        table.append(events, {})
        pq.write_table(_spine(n_rows, users, days, seed), folder / "spine.parquet")
        iceberg = catalog.load_table(("bench", RAW_TABLE))
        columns = event_columns(["user_id"], "event_time_ms", ["amount"])
        started = time.perf_counter()
        read = read_events(iceberg, columns, time_column="event_time_ms", until_ms=T0 + 9 * DAY_MS)
        read_s = time.perf_counter() - started
        spine = pq.read_table(folder / "spine.parquet")
        compute_s = _in_process_compute(read.table, spine)
        started = time.perf_counter()
        ray.init(logging_level=logging.ERROR, include_dashboard=False, num_cpus=2)
        ray_init_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            write_training_set(
                folder / "spine.parquet",
                FEATURES,
                folder / "train.parquet",
                catalog=CATALOG,
                events_table=iceberg,
                options=TrainingSetOptions(),
            )
            total_s = time.perf_counter() - started
        finally:
            ray.shutdown()
        got = pq.read_table(folder / "train.parquet")
        mismatches = _oracle_mismatches(events, got, 100 if quick else 300, seed)
    return {
        "quick": quick,
        "spine_rows": got.num_rows,
        "events": n_events,
        "features": len(FEATURES),
        "users": users,
        "total_s": round(total_s, 2),
        "rows_per_s": round(got.num_rows / total_s),
        "read_s": round(read_s, 2),
        "compute_s": round(compute_s, 2),
        "ray_init_s": round(ray_init_s, 2),
        "oracle_rows": 100 if quick else 300,
        "oracle_mismatches": mismatches,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k rows over 100k events")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    figures = run(args.quick, args.seed)
    command = "benchmarks/training_set.py" + (" --quick" if args.quick else "")
    record_run("training_set", figures, command=command)
    print(json.dumps(figures))
    return 0 if figures["oracle_mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
