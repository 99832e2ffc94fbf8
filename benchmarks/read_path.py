"""CPU per read, from raw store bytes to an encoded response, on data that changes between reads.

    .venv/bin/python benchmarks/read_path.py --quick    # a few seconds
    .venv/bin/python benchmarks/read_path.py            # under a minute

In process, no stack. The serving benchmark's 50-feature view (``benchmarks/serving.py``) gets a
busy history for 200 users through the partition processors; then, before every read, one new
event per entity to be read is folded and drained, so every read sees changed stored state and a
rolling head tile (the clock advances between reads): no memo can hit. Both layouts are kept
current from the same processor state:

* old: per entity the HGETALL reply of the per-tile fields (``regions.tiles`` header + payload),
  read by stripping headers as the Redis reader does, then ``serve_apps.values.evaluate`` with
  the replica's decode cache (``cached_groups``) and a fresh memo, then the columnar response;
* new: per entity its blocks (one per source partition, ``features.blocks``), ``decode_block``,
  one ``merge_blocks`` for all entities, statuses and ages as arrays, the same columnar response
  (event time = the newest covering tile start, as ``evaluate`` has it for a view without
  ``last`` features, which this one is).

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
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import numpy.typing as npt
import orjson
from serving import PARTITIONS, USERS, benchmark_catalog

from actors.processor import TENANT, PartitionProcessor, RawRecord
from features.block_merge import NO_TILE, merge_blocks
from features.blocks import Block, BlockLayout, decode_block, encode_block
from features.catalog import Catalog, Feature
from features.demo import SOURCE
from features.keys import OnlineKey
from features.tile_groups import TileGroup, parse_field
from regions.tiles import HEADER_BYTES, TAG_OFFSET, TAG_VALUE, TileWrite, encode_field
from serve_apps.config import Limits
from serve_apps.plan import CatalogIndex, ReadPlan, build_plan, encoded_id
from serve_apps.responses import columnar_response
from serve_apps.service import ReadResult, ViewValues
from serve_apps.values import DEFAULT, NOT_FOUND, PRESENT, STALE, cached_groups, evaluate

VIEW = "bench_user"
STORE = "redis-us-east"
REGION = "us-east"
STEP_MS = 137  # clock advance between reads: the 10 s head tiles roll every ~73 reads
BATCH = 100
STATUS_NAMES = np.array([PRESENT, DEFAULT, STALE, NOT_FOUND], dtype=object)
NULL = np.array(None, dtype=object)


def _user(u: int) -> str:
    return f"u_{u:06d}"


def _partition(user: str) -> int:
    return zlib.crc32(user.encode()) % PARTITIONS


@dataclass
class Stores:
    """Both layouts of the view, kept current from the processors' drained changes."""

    catalog: Catalog
    layout: BlockLayout
    clock: list[int]
    processors: list[PartitionProcessor] = field(default_factory=list)
    fields: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # key -> HGETALL reply
    blocks: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # key -> {p: block}
    tiles: dict[str, set[tuple[int | None, int | None]]] = field(default_factory=dict)
    seq: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def __post_init__(self) -> None:
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
            by_partition.setdefault(_partition(e["user_id"]), []).append(e)
        for p, mine in by_partition.items():
            proc = self.processors[p]
            first = proc.state.last_offset + 1
            proc.process(
                RawRecord(first + i, e["user_id"].encode(), orjson.dumps(e))
                for i, e in enumerate(mine)
            )
            changed = {self._apply(c.write) for c in proc.drain_changes()}
            for key in changed:
                self._rebuild_block(key, p)

    def _apply(self, write: TileWrite) -> str:
        name = write.field.encode()
        reply = self.fields.setdefault(write.key, {})
        tile_ms, _, start = parse_field(write.field)
        kept = self.tiles.setdefault(write.key, set())
        if write.value is None:
            reply.pop(name, None)
            kept.discard((tile_ms, start))
        else:
            reply[name] = encode_field(write)
            kept.add((tile_ms, start))
        return write.key

    def _rebuild_block(self, key: str, partition: int) -> None:
        entity = OnlineKey.parse(key).entity_id
        states = self.processors[partition].state.tiles
        mine = {tile: states[(VIEW, entity, tile[0], tile[1])] for tile in self.tiles[key]}
        reply = self.blocks.setdefault(key, {})
        reply[f"p{partition}".encode()] = encode_block(self.layout, partition, mine)


def _history(stores: Stores, now: int) -> None:
    """Per user: 40 events over 7 days and 20 in the last hour, as the serving benchmark writes."""
    rng = random.Random(11)
    timed = []
    for u in range(USERS):
        times = [now - rng.randrange(60_000, 7 * 86_400_000) for _ in range(40)]
        times += [now - rng.randrange(1_000, 3_600_000) for _ in range(20)]
        timed += [(t, _user(u)) for t in times]
    timed.sort()
    stores.ingest([stores.event(user, t) for t, user in timed])


@dataclass(frozen=True)
class Reader:
    index: CatalogIndex
    layout: BlockLayout
    features: tuple[Feature, ...]
    names: tuple[str, ...]
    defaults: npt.NDArray[np.object_]  # features x 1

    @classmethod
    def of(cls, catalog: Catalog) -> Reader:
        index = CatalogIndex(catalog, TENANT)
        view = catalog.view(VIEW)
        defaults = np.array([[f.default] for f in view.features], dtype=object)
        names = tuple(f.name for f in view.features)
        return cls(index, BlockLayout.for_view(view), view.features, names, defaults)


def old_read(
    reader: Reader, plan: ReadPlan, stores: Stores, as_of: int, groups: Sequence[TileGroup]
) -> bytes:
    """Today's path: per-tile fields, ``evaluate`` per entity (a fresh memo), columns shape."""
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
            info, groups, features, fields, as_of_ms=as_of, store=STORE, memo={}
        )
    result = ReadResult(as_of, STORE, [(STORE, "ok")], {VIEW: ViewValues(info, plan.refs, by_id)})
    return orjson.dumps(columnar_response(result, plan, REGION, "bench"))


def new_read(reader: Reader, plan: ReadPlan, stores: Stores, as_of: int) -> bytes:
    """The block path: decode every entity's blocks, one vectorised merge, statuses as arrays."""
    info = plan.refs[0].info
    ids = plan.ids["user"]
    blocks: list[list[Block]] = []
    for entity_id in ids:
        raw = stores.blocks.get(info.prefix + encoded_id(entity_id, info.entity.max_id_bytes), {})
        blocks.append([decode_block(reader.layout, b) for b in raw.values()])
    merged = merge_blocks(reader.layout, blocks, as_of, reader.names)
    newest = merged.newest.T  # features x entities
    has = newest != NO_TILE
    event_time = np.minimum(newest, as_of)
    age = as_of - event_time
    stale = has & (age > info.view.ttl_ms)
    codes = np.where(has, np.where(stale, 2, 0), 1)
    codes[:, np.array([not bs for bs in blocks])] = 3
    present = codes == 0
    timed = present | (codes == 2)
    # Object arrays, not Python loops: the default where a value is not present, null where a
    # time is unknown (a value of this view is None only when its window holds no data).
    values = np.where(present, merged.values, reader.defaults)
    response = {
        "request_id": "bench",
        "region": REGION,
        "as_of_ms": as_of,
        "store": STORE,
        "fallback": [{"store": STORE, "outcome": "ok"}],
        "format": "columns",
        "views": [
            {
                "view": VIEW,
                "entity": info.entity.name,
                "features": [r.ref for r in plan.refs],
                "ids": list(ids),
                "values": values.T.tolist(),
                "statuses": STATUS_NAMES[codes].T.tolist(),
                "event_time_ms": _times(event_time, timed),
                "age_ms": _times(age, timed),
            }
        ],
    }
    return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)


def _times(times: npt.NDArray[np.int64], known: npt.NDArray[np.bool_]) -> Any:
    """Per entity, its row of ``times`` (features x entities) with null where not ``known``:
    a numpy row (orjson writes it without a Python int per value) when every time is known."""
    rows = np.ascontiguousarray(times.T)
    whole = known.all(axis=0)
    if whole.all():
        return rows
    partial = np.where(known, times, NULL).T
    flags = cast(list[bool], whole.tolist())
    return [rows[e] if ok else partial[e].tolist() for e, ok in enumerate(flags)]


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
    ids = tuple(_user(u) for u in range(USERS))
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
            found = build_plan(refs, {"user": ids}, Limits(max_entities=max(self.size, 1)), None)
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
    stores = Stores(catalog, reader.layout, [now])
    _history(stores, now)
    groups = cached_groups(reader.index.views[VIEW].groups)  # the replica's decode cache
    _check_same(reader, stores, groups)
    scale = 1 if args.quick else 4
    single = Plan(reader, 1)
    batch = Plan(reader, BATCH)

    def one(i: int) -> tuple[str, ...]:
        return (_user(i * 7 % USERS),)

    def hundred(i: int) -> tuple[str, ...]:
        return tuple(_user((i * 37 + j) % USERS) for j in range(BATCH))

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
