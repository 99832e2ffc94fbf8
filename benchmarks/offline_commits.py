"""Iceberg commit cost as an offline table ages, with snapshot expiry and without, in one run.

    .venv/bin/python benchmarks/offline_commits.py --quick   # 200 commits per variant, ~1 minute
    .venv/bin/python benchmarks/offline_commits.py           # 500 commits per variant

The offline writer commits each table every 2 s (actors/offline.py). Each commit rewrites the
table's metadata file, and that file lists every snapshot still kept. This appends the same
5,000-row tile batch again and again to a fresh table on a local SQL catalog, three times:
`expiring` is `actors.offline_tables.IcebergTable` as shipped (the newest 20 snapshots kept,
commits through `actors.iceberg_tx.MemoTransaction`); `kept_forever` has expiry effectively off;
`plain_transaction` is shipped but commits through pyiceberg's own `Transaction`, which deep-copies
the table metadata on every read of it (the baseline the memo is measured against). For each fifth
of the run it reports CPU ms per commit (`first_fifth_ms`, `last_fifth_ms` per variant) and
`growth = last_fifth_ms / first_fifth_ms`. The last line printed is one JSON object, also appended
to `benchmarks/results/offline_commits.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from statistics import mean
from typing import Any
from unittest.mock import patch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Transaction

from actors import iceberg_tx
from actors.offline_tables import TILE_SCHEMA, IcebergTable
from cluster.results import current_command, record_run

ROWS = 5_000
NEVER = 10**9  # expire_every: no expiry within any run


def _batch() -> pa.Table:
    rows = [
        {
            "key": f"fl:t:user_spend:v1:u_{i:06d}",
            "field": f"60000_p{i % 8}@1764000000000",
            "version": i,
            "event_time_ms": 1_764_000_000_000 + i,
            "ttl_ms": 3_600_000,
            "deleted": False,
            "payload": b"\x00" * 40,
            "_partition": i % 8,
            "_offset": i,
            "_ingested_at_ms": 1_764_000_000_000,
        }
        for i in range(ROWS)
    ]
    return pa.Table.from_pylist(rows, schema=TILE_SCHEMA)


def _run(commits: int, *, expire_every: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="fl-iceberg-bench-"))
    try:
        (home / "wh").mkdir()
        catalog = SqlCatalog("bench", uri=f"sqlite:///{home}/c.db", warehouse=f"file://{home}/wh")
        table = IcebergTable(catalog, "bench", "tiles", TILE_SCHEMA, expire_every=expire_every)
        batch = _batch()
        fifth = max(1, commits // 5)
        per_fifth: list[float] = []
        spent = 0.0
        for n in range(commits):
            started = time.process_time()
            table.append(batch, {f"freshline.offsets.t.{p}": str(n) for p in range(8)})
            spent += time.process_time() - started
            if (n + 1) % fifth == 0:
                per_fifth.append(round(1000 * spent / fifth, 1))
                spent = 0.0
        return {
            "ms_per_commit_by_fifth": per_fifth,
            "first_fifth_ms": per_fifth[0],
            "last_fifth_ms": per_fifth[-1],
            "growth": round(per_fifth[-1] / per_fifth[0], 2),
            "snapshots_kept": table.snapshot_count(),
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 commits per variant")
    args = parser.parse_args()
    commits = 200 if args.quick else 500
    warnings.filterwarnings("ignore")  # pyiceberg warns about optional extras on every import
    kept_forever = _run(commits, expire_every=NEVER)
    expiring = _run(commits, expire_every=10)
    with patch.object(iceberg_tx, "MemoTransaction", Transaction):
        plain = _run(commits, expire_every=10)
    figures = {
        "commits": commits,
        "rows_per_commit": ROWS,
        "kept_forever": kept_forever,
        "expiring": expiring,
        "plain_transaction": plain,
        "last_fifth_ratio_expiring_to_kept_forever": round(
            expiring["last_fifth_ms"] / kept_forever["last_fifth_ms"], 3
        ),
        "ratio_memo_to_plain_transaction": round(
            mean(expiring["ms_per_commit_by_fifth"]) / mean(plain["ms_per_commit_by_fifth"]), 3
        ),
    }
    record_run("offline_commits", figures, command=current_command())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
