"""Live data for the serving benchmark: a child process that keeps a view's blocks changing.

It writes each user's history (40 events over 7 days plus 20 in the last hour) through one
:class:`~actors.processor.PartitionProcessor` per source partition and the Redis writer every
region's sink uses, reports ready, then keeps events for the same users flowing at a fixed rate:
every commit interval (the pipeline's default) it folds that interval's events, drains the changed
blocks and applies them to every region's Redis, exactly as a consumer and its sinks would (Kafka
is left out: it is not on the read path). Reads therefore meet blocks that change under them and
head tiles that roll, as in production.

It runs in its own process so that its CPU competes with serving as a co-located pipeline does,
but not for the load generator's interpreter lock. For each applied batch it logs the wall time the
apply returned and the users whose blocks it wrote; :func:`changed_share` uses that log to say
which reads met a block that had changed since the entity's previous read.
"""

from __future__ import annotations

import bisect
import random
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from actors.config import StreamSettings
from actors.processor import PartitionProcessor, RawRecord
from cluster.settings import StackSettings
from cluster.stack import Stack
from features.catalog import Catalog
from features.demo import SOURCE
from features.keys import OnlineKey
from regions.redis_store import RedisRole, RedisTileWriter, redis_client
from regions.tiles import TileWrite

PARTITIONS = 8
COMMIT_INTERVAL_MS: int = StreamSettings.model_fields["commit_interval_ms"].default
# How far behind the clock a live event may be stamped: a little disorder, none of it late.
MAX_DELAY_MS = 2_000


def user_id(index: int) -> str:
    return f"u_{index:06d}"


def partition_of(user: str) -> int:
    return zlib.crc32(user.encode()) % PARTITIONS


def _event(user: str, at_ms: int, rng: random.Random, seq: int) -> dict[str, Any]:
    return {
        "event_id": f"b-{seq}",
        "seq": seq,
        "event_type": "card_tx",
        "currency": "USD",
        "user_id": user,
        "merchant_id": f"m_{rng.randrange(50):05d}",
        "amount": round(rng.uniform(1, 500), 2),
        "event_time_ms": at_ms,
    }


def history(users: int, now_ms: int, rng: random.Random) -> list[dict[str, Any]]:
    """Per user: 40 events over 7 days plus 20 in the last hour (a busy user's tile spread)."""
    stamped = []
    for u in range(users):
        times = [now_ms - rng.randrange(60_000, 7 * 86_400_000) for _ in range(40)]
        times += [now_ms - rng.randrange(1_000, 3_600_000) for _ in range(20)]
        stamped += [(t, user_id(u)) for t in times]
    stamped.sort()
    return [_event(user, t, rng, seq) for seq, (t, user) in enumerate(stamped)]


class Feed:
    """The processors of every partition and the writers of every region's Redis."""

    def __init__(
        self,
        catalog: Catalog,
        writers: Sequence[RedisTileWriter],
        clock: Callable[[], int],
    ) -> None:
        self._procs = [
            PartitionProcessor(catalog, SOURCE, p, now_ms=clock) for p in range(PARTITIONS)
        ]
        self._offsets = [0] * PARTITIONS
        self._writers = writers
        self.events = 0
        self.writes = 0

    def fold(self, events: Iterable[dict[str, Any]]) -> None:
        by_partition: list[list[RawRecord]] = [[] for _ in range(PARTITIONS)]
        for e in events:
            p = partition_of(e["user_id"])
            by_partition[p].append(RawRecord(self._offsets[p], None, orjson.dumps(e)))
            self._offsets[p] += 1
        for proc, records in zip(self._procs, by_partition, strict=True):
            if records:
                proc.process(records)
                self.events += len(records)

    def flush(self, chunk: int = 2_000) -> list[TileWrite]:
        """Drain every partition's changed blocks and apply them to every region's Redis."""
        writes = [c.write for proc in self._procs for c in proc.drain_changes()]
        for i in range(0, len(writes), chunk):
            for writer in self._writers:
                writer.apply(writes[i : i + chunk])
        self.writes += len(writes)
        return writes


@dataclass
class ChangeLog:
    """When (wall time, after the apply returned) each user's block was written."""

    times: list[float]
    users: list[int]

    def record(self, at: float, writes: Sequence[TileWrite]) -> None:
        for w in writes:
            entity = OnlineKey.parse(w.key).entity_id
            self.times.append(at)
            self.users.append(int(entity[2:]))

    def save(self, path: Path, events_per_s: float) -> None:
        np.savez(
            path,
            times=np.asarray(self.times),
            users=np.asarray(self.users),
            events_per_s=np.asarray(events_per_s),
        )


def run(  # noqa: PLR0917 - a multiprocessing target takes positional arguments
    settings_json: str,
    catalog_json: bytes,
    users: int,
    rate: float,
    ready: Event,
    stop: Event,
    log_path: str,
) -> None:
    """The child's body: history, ``ready``, then ``rate`` events/s until ``stop``."""
    settings = StackSettings.model_validate_json(settings_json)
    stack = Stack.build(settings, environ={}, create_secrets=False)
    catalog = Catalog.from_dict(orjson.loads(catalog_json))
    clients = [
        redis_client(region, RedisRole.WRITER, settings.redis, stack.secrets)
        for region in settings.topology
    ]
    writers = [
        RedisTileWriter(c, f"redis-{r.name}")
        for c, r in zip(clients, settings.topology, strict=True)
    ]
    feed = Feed(catalog, writers, clock=lambda: time.time_ns() // 1_000_000)
    rng = random.Random(7)
    feed.fold(history(users, time.time_ns() // 1_000_000, rng))
    feed.flush()
    feed.events = 0  # the live rate counts live events only
    ready.set()
    log = ChangeLog([], [])
    started, ticks = time.monotonic(), 0
    interval_s = COMMIT_INTERVAL_MS / 1000
    seq = 10**9  # above every history event's sequence number
    while not stop.is_set():
        now = time.time_ns() // 1_000_000
        n = _poisson(rng, rate * interval_s)
        feed.fold(
            _event(user_id(rng.randrange(users)), now - rng.randrange(MAX_DELAY_MS), rng, seq + i)
            for i in range(n)
        )
        seq += n
        log.record(time.time(), feed.flush())
        ticks += 1
        pause = started + ticks * interval_s - time.monotonic()
        if pause > 0:
            stop.wait(pause)
    elapsed = time.monotonic() - started
    log.save(Path(log_path), events_per_s=(feed.events / elapsed) if elapsed else 0.0)
    for c in clients:
        c.close()


def _poisson(rng: random.Random, mean: float) -> int:
    """Arrivals in one interval of a Poisson stream (exponential gaps)."""
    count, t = 0, rng.expovariate(1.0)
    while t < mean:
        count += 1
        t += rng.expovariate(1.0)
    return count


def changed_share(
    log_path: Path, reads: Sequence[tuple[float, Sequence[int]]]
) -> tuple[float, dict[str, float]]:
    """The share of (read, entity) pairs whose entity's block was written after that entity's
    previous read and before this one; ``reads`` are (wall send time, user indexes) in send
    order. An entity's first read has no previous read and is not counted. Also returns the
    feed's own figures (``events_per_s``)."""
    data = np.load(log_path)
    per_user: dict[int, list[float]] = {}
    for t, u in zip(data["times"].tolist(), data["users"].tolist(), strict=True):
        per_user.setdefault(int(u), []).append(float(t))
    last: dict[int, float] = {}
    counted = changed = 0
    for sent, entities in sorted(reads, key=lambda r: r[0]):
        for e in entities:
            previous = last.get(e)
            last[e] = sent
            if previous is None:
                continue
            times = per_user.get(e, [])
            counted += 1
            changed += bisect.bisect_right(times, sent) > bisect.bisect_right(times, previous)
    share = round(changed / counted, 4) if counted else float("nan")
    return share, {"events_per_s": round(float(cast(Any, data["events_per_s"])), 1)}
