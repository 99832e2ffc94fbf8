"""CPU per read, from raw store bytes to an encoded response, on data that changes between reads.

    .venv/bin/python benchmarks/read_path.py --quick    # a few seconds
    .venv/bin/python benchmarks/read_path.py            # under a minute

In process, no stack. The serving benchmark's 50-feature view (``benchmarks/serving.py``) gets a
busy history for 200 users through the partition processors; then, before every read, one new
event per entity to be read is folded and drained, so every read sees changed stored state and a
rolling head tile (the clock advances between reads): no memo can hit. Both layouts are kept
current from the same processor state:

* old: per entity the HGETALL reply of the per-tile fields (``regions.tiles`` header + payload),
  read by stripping headers as the Redis reader does, then ``old_values.evaluate`` (the path
  before layout v2) with its decode cache (``cached_groups``) and a fresh memo, then the columnar
  response;
* new: per entity the HGETALL reply of its blocks (one per source partition, ``features.blocks``)
  as the processor wrote them, headers stripped alike, then the serving code itself:
  ``serve_apps.values.evaluate_view`` (one ``merge_blocks`` for all entities, statuses and ages
  as arrays) and the same columnar response.

Both responses are encoded with orjson; the run first checks that they carry the same values,
statuses, event times and ages. CPU time is ``time.process_time`` around each read; a figure is
the mean over its reads. ``--profile`` prints where the new path's batch reads spend their time.
Each read is also repeated at once on the same bytes: ``*_warm_cpu_ms`` is that repeat, the read's
own cost with the caches warm; the difference is what the changing data (and the ingest between
reads evicting the reader's working set) adds. The last line printed is one JSON object with
every figure.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from live_feed import PARTITIONS, history, partition_of, user_id
from old_values import cached_groups, evaluate
from serving import USERS, benchmark_catalog

from actors.processor import PartitionProcessor, RawRecord, view_ident
from features.catalog import Catalog
from features.demo import SOURCE
from features.keys import DEFAULT_TENANT, OnlineKey
from features.tile_groups import TileGroup, tile_groups
from regions.tiles import HEADER_BYTES, TAG_OFFSET, TAG_VALUE, TileWrite, encode_field
from serve_apps.config import Limits
from serve_apps.plan import CatalogIndex, ReadPlan, build_plan, encoded_id
from serve_apps.responses import columnar_response
from serve_apps.service import ReadResult, ViewValues
from serve_apps.values import Columns, evaluate_view

VIEW = "bench_user"
STORE = "redis-us-east"
REGION = "us-east"
STEP_MS = 137  # clock advance between reads: the 10 s head tiles roll every ~73 reads
BATCH = 100


@dataclass
class Stores:
    """Both layouts of the view, kept current from the processors' drained changes."""

    catalog: Catalog
    clock: list[int]
    processors: list[PartitionProcessor] = field(default_factory=list)
    fields: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # key -> HGETALL reply
    blocks: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # key -> {p: block}
    seq: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    groups: tuple[TileGroup, ...] = ()
    by_tile: dict[int | None, TileGroup] = field(init=False)
    ident: str = field(init=False)  # the view version's key in the processors' state

    def __post_init__(self) -> None:
        self.groups = tile_groups(self.catalog.view(VIEW))
        self.by_tile = {g.tile_ms: g for g in self.groups}
        self.ident = view_ident(VIEW, self.catalog.view(VIEW).version)
        self.processors = [
            PartitionProcessor(self.catalog, SOURCE, p, now_ms=lambda: self.clock[0])
            for p in range(PARTITIONS)
        ]

    def event(self, user: str, at_ms: int) -> dict[str, Any]:
        self.seq += 1
        return {
            "event_id": f"r-{self.seq}",
            "seq": self.seq,
            "event_type": "card_tx",
            "currency": "USD",
            "user_id": user,
            "merchant_id": f"m_{self.rng.randrange(50):05d}",
            "amount": round(self.rng.uniform(1, 500), 2),
            "event_time_ms": at_ms,
        }

    def ingest(self, events: list[dict[str, Any]]) -> None:
        """Fold ``events`` (ascending event time) and apply every drained change to both stores."""
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for e in events:
            by_partition.setdefault(partition_of(e["user_id"]), []).append(e)
        for p, mine in by_partition.items():
            proc = self.processors[p]
            first = proc.state.last_offset + 1
            proc.process(
                RawRecord(first + i, e["user_id"].encode(), orjson.dumps(e))
                for i, e in enumerate(mine)
            )
            for change in proc.drain_changes():
                self._apply(change.write, p)

    def _apply(self, write: TileWrite, partition: int) -> None:
        """The block as the processor wrote it; the old layout's per-tile fields of the same
        partition rebuilt from the processor's tiles (what the old processor would have written)."""
        blocks = self.blocks.setdefault(write.key, {})
        old = self.fields.setdefault(write.key, {})
        suffix = f"_p{partition}"
        for name in [n for n in old if n.decode().split("@")[0].endswith(suffix)]:
            del old[name]
        if write.value is None:
            blocks.pop(write.field.encode(), None)
            return
        blocks[write.field.encode()] = encode_field(write)
        entity = OnlineKey.parse(write.key).entity_id
        for (tile_ms, start), states in (
            self.processors[partition].state.tiles[(self.ident, entity)].items()
        ):
            group = self.by_tile[tile_ms]
            stored = TileWrite(write.key, group.field(partition, start), group.encode(states), 1, 1)
            old[stored.field.encode()] = encode_field(stored)


def _history(stores: Stores, now: int) -> None:
    """The serving benchmark's history for every user (its ``live_feed.history``)."""
    stores.ingest(history(USERS, now, random.Random(11)))


@dataclass(frozen=True)
class Reader:
    index: CatalogIndex
    names: tuple[str, ...]

    @classmethod
    def of(cls, catalog: Catalog) -> Reader:
        view = catalog.view(VIEW)
        return cls(CatalogIndex(catalog, DEFAULT_TENANT), tuple(f.name for f in view.features))


def old_read(
    reader: Reader, plan: ReadPlan, stores: Stores, as_of: int, groups: Sequence[TileGroup]
) -> bytes:
    """The path before layout v2: per-tile fields, ``evaluate`` per entity (a fresh memo),
    columns shape."""
    info = plan.refs[0].info
    features = [r.feature for r in plan.refs]
    by_id = {}
    for entity_id in plan.ids["user"]:
        key = info.prefix + encoded_id(entity_id, info.entity.max_id_bytes)
        raw = stores.fields.get(key, {})
        fields = {
            name.decode(): stored[HEADER_BYTES:]
            for name, stored in raw.items()
            if stored[TAG_OFFSET] == TAG_VALUE
        }
        by_id[entity_id] = evaluate(
            info.view.ttl_ms, groups, features, fields, as_of_ms=as_of, store=STORE, memo={}
        )
    # The columnar response as the old path built it: one transpose per id.
    rows = [tuple(zip(*served, strict=True)) for served in by_id.values()]
    columns = Columns(
        [list(r[0]) for r in rows],
        [list(r[1]) for r in rows],
        [list(r[2]) for r in rows],
        [list(r[3]) for r in rows],
        STORE,
    )
    views = {VIEW: ViewValues(info, plan.refs, tuple(by_id), columns, plan_versions(plan))}
    result = ReadResult(as_of, STORE, [(STORE, "ok")], views)
    return orjson.dumps(columnar_response(result, plan, REGION, "bench"))


def plan_versions(plan: ReadPlan) -> tuple[int, ...]:
    """The version answering each id of the benchmark's one view (what the service reports)."""
    return tuple(info.view.version for info in plan.answering[VIEW])


def new_read(reader: Reader, plan: ReadPlan, stores: Stores, as_of: int) -> bytes:
    """The serving path: blocks per entity, one ``evaluate_view`` (one merge) per view, columns."""
    info = plan.refs[0].info
    ids = plan.ids["user"]
    replies = []
    for entity_id in ids:
        raw = stores.blocks.get(info.prefix + encoded_id(entity_id, info.entity.max_id_bytes), {})
        replies.append(
            {
                name.decode(): stored[HEADER_BYTES:]
                for name, stored in raw.items()
                if stored[TAG_OFFSET] == TAG_VALUE
            }
        )
    features = [r.feature for r in plan.refs]
    served = evaluate_view(
        info.layout, info.view.ttl_ms, features, replies, as_of_ms=as_of, store=STORE
    )
    views = {VIEW: ViewValues(info, plan.refs, ids, served, plan_versions(plan))}
    result = ReadResult(as_of, STORE, [(STORE, "ok")], views)
    return orjson.dumps(columnar_response(result, plan, REGION, "bench"))


def _measure(
    stores: Stores,
    ids_of: Callable[[int], tuple[str, ...]],
    reads: int,
    read: Callable[..., bytes],
    profiler: cProfile.Profile | None = None,
) -> tuple[float, float]:
    """Mean CPU ms of ``reads`` reads, one new event per read entity folded before each; and of
    the same reads repeated at once (same bytes, caches warm: the read's own cost)."""
    total = warm = 0.0
    for i in range(reads):
        ids = ids_of(i)
        stores.clock[0] += STEP_MS
        stores.ingest([stores.event(u, stores.clock[0]) for u in ids])
        if profiler is not None:
            profiler.enable()
        before = time.process_time()
        read(ids, stores.clock[0])
        total += time.process_time() - before
        if profiler is not None:
            profiler.disable()
        before = time.process_time()
        read(ids, stores.clock[0])
        warm += time.process_time() - before
    return total / reads * 1000.0, warm / reads * 1000.0


def _check_same(reader: Reader, stores: Stores, groups: Sequence[TileGroup]) -> None:
    """Both paths answer the same, for every user (not timed)."""
    ids = tuple(user_id(u) for u in range(USERS))
    plan = Plan(reader, len(ids)).plan_for(ids)
    as_of = stores.clock[0]
    old = orjson.loads(old_read(reader, plan, stores, as_of, groups))["views"][0]
    new = orjson.loads(new_read(reader, plan, stores, as_of))["views"][0]
    for part in ("values", "statuses", "event_time_ms", "age_ms", "ids", "features"):
        if old[part] != new[part]:
            raise SystemExit(f"the block path differs from evaluate in {part}")


@dataclass
class Plan:
    reader: Reader
    size: int
    cache: dict[tuple[str, ...], ReadPlan] = field(default_factory=dict)

    def plan_for(self, ids: tuple[str, ...]) -> ReadPlan:
        """Plans are built outside the timed read (the HTTP layer does this per request, on
        both paths alike)."""
        found = self.cache.get(ids)
        if found is None:
            refs = [self.reader.index.ref(f"{VIEW}:{n}") for n in self.reader.names]
            found = build_plan(
                self.reader.index, refs, {"user": ids}, Limits(max_entities=max(self.size, 1)), None
            )
            self.cache[ids] = found
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer reads (a few seconds)")
    parser.add_argument("--profile", action="store_true", help="profile the new batch reads")
    args = parser.parse_args()
    started = time.monotonic()
    catalog = benchmark_catalog()
    reader = Reader.of(catalog)
    now = time.time_ns() // 1_000_000
    stores = Stores(catalog, [now])
    _history(stores, now)
    groups = cached_groups(stores.groups)  # the old replica's decode cache
    _check_same(reader, stores, groups)
    scale = 1 if args.quick else 4
    single = Plan(reader, 1)
    batch = Plan(reader, BATCH)

    def one(i: int) -> tuple[str, ...]:
        return (user_id(i * 7 % USERS),)

    def hundred(i: int) -> tuple[str, ...]:
        return tuple(user_id((i * 37 + j) % USERS) for j in range(BATCH))

    def old(plans: Plan) -> Callable[..., bytes]:
        return lambda ids, as_of: old_read(reader, plans.plan_for(ids), stores, as_of, groups)

    def new(plans: Plan) -> Callable[..., bytes]:
        return lambda ids, as_of: new_read(reader, plans.plan_for(ids), stores, as_of)

    for i in range(20):  # plans and first-use costs outside the measured reads
        single.plan_for(one(i))
        batch.plan_for(hundred(i))
    runs = {
        "old_single": _measure(stores, one, 100 * scale, old(single)),
        "single": _measure(stores, one, 400 * scale, new(single)),
        "old_batch100": _measure(stores, hundred, 5 * scale, old(batch)),
        "batch100": _measure(stores, hundred, 20 * scale, new(batch)),
    }
    figures: dict[str, Any] = {f"{name}_cpu_ms": cold for name, (cold, _) in runs.items()}
    figures.update({f"{name}_warm_cpu_ms": warm for name, (_, warm) in runs.items()})
    if args.profile:
        profiler = cProfile.Profile()
        _measure(stores, hundred, 20 * scale, new(batch), profiler)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
        print(out.getvalue(), file=sys.stderr)
    figures = {k: round(v, 4) for k, v in figures.items()}
    figures.update(
        speedup_single=round(figures["old_single_cpu_ms"] / figures["single_cpu_ms"], 1),
        speedup_batch100=round(figures["old_batch100_cpu_ms"] / figures["batch100_cpu_ms"], 1),
        features=len(reader.names),
        users=USERS,
        quick=args.quick,
        wall_s=round(time.monotonic() - started, 1),
    )
    _record(figures)
    print(json.dumps(figures))


def _record(figures: dict[str, Any]) -> None:
    try:
        from cluster.results import record_run
    except ImportError:
        print("cluster.results.record_run is not available: run not recorded", file=sys.stderr)
        return
    record_run("read_path", figures, command=" ".join(sys.argv))


if __name__ == "__main__":
    main()
