"""Warm start of a view version a partition has never computed: a backfill from the offline table.

A changed view definition is a new view version, computed beside the old one from the same stream
(``features.rollout``). When a consumer starts on a partition (``StreamConsumer.start``), every
computed version whose state that partition never committed is first folded from the partition's
accepted events in the offline ``raw_events`` table (``actors.offline_tables``), offsets up to the
committed position minus one, in offset order, through the processor's own fold
(``PartitionProcessor.backfill``). Its blocks then equal those of a processor that computed it from
the first event the table holds, and the first commit publishes them like any change.

**Exactly once.** Each commit's offset metadata lists the view versions the partition computes
(:func:`offset_metadata`, beside the watermark), in the transaction that carries their blocks:

- a listed version is live: restored from the changelog, never backfilled;
- metadata without a list (written before backfills existed) means every computed version is live,
  so an upgrade backfills nothing;
- a partition without a committed offset is read from its beginning: every version is computed
  from its first event;
- a computed version not listed is backfilled, replacing whatever the partition held for it (a
  version retired and applied again). The first commit lists it, with the backfilled blocks: a
  crash before that commit backfills again from the same committed state, after it never.

**The offline writer may lag** (it appends every couple of seconds). The table holds every event
accepted below the committed position once its position on the partition of the offline topic
(``freshline.offsets.<topic>.<partition>``, in the same Iceberg commit as the rows) is past the last
committed record of that partition. The consumer has just fenced its predecessor
(``init_transactions`` aborts an open transaction) and is the only producer to that partition, so
that last record is final. Backfills wait for it at most :data:`BACKFILL_WAIT_S`; a partition whose
table is still behind then is not backfilled: an ERROR is logged, its new versions are computed from
the events that follow and left off the list, so the consumer's next start backfills them again
(replacing that partial state). A pipeline without an offline writer cannot backfill: its new
versions start empty and are listed at once (a WARNING says so).

**What is read.** A version with an unwindowed feature (``last``, ``cusum``) needs the whole history
the table holds. A windowed-only version needs only events of tiles the processor has not evicted:
``event_time >= watermark - allowed lateness - eviction slack - the longest tile span`` (exact, so
the backfilled blocks are still those of the from-start processor), which also prunes whole days.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np
import orjson
import pyarrow as pa

from actors.processor import _EVICTION_SLACK_MS, PartitionProcessor, view_ident
from features.batch_fold import BatchColumns
from features.catalog import Catalog, FeatureView
from features.errors import TransportError
from features.tile_groups import tile_groups
from features.watermark import WatermarkState

if TYPE_CHECKING:
    from actors.config import PipelineConfig
    from actors.offline_tables import IcebergTable

log = logging.getLogger("freshline.backfill")

# How long a starting consumer waits for the offline writer to hold its partitions' events. Well
# under the supervisor's wait for a rolled consumer to be ready (``actors.runtime``).
BACKFILL_WAIT_S: Final = 120.0
_POLL_S: Final = 0.5
_VIEWS: Final = "views"  # the list's key in the offset metadata
_TAIL_READ_S: Final = 60.0  # reading a partition's last records takes a few round trips


class OfflineTopicUnreadable(TransportError):
    """The tail of a partition of the offline topic could not be read in time: without its last
    record, whether the table is complete cannot be told. The consumer exits and Ray restarts it
    (crash-only), which tries again."""

    def __init__(self, topic: str, partition: int, seconds: float) -> None:
        super().__init__(
            f"could not read the tail of {topic}[{partition}] in {seconds:.0f} s: "
            "the backfill cannot tell whether the offline table is complete"
        )


class AcceptedHistory(Protocol):
    """The accepted events of the source, per partition, as the offline writer appended them."""

    def behind(self, partitions: Collection[int]) -> set[int]:
        """The partitions whose accepted events (below the committed position) the table does
        not all hold yet."""
        ...

    def events(
        self,
        partition: int,
        upto_offset: int,
        columns: Sequence[str],
        *,
        time_field: str,
        since_ms: int | None,
    ) -> pa.Table:
        """``columns`` and ``_offset`` of the partition's events with ``_offset <= upto_offset``
        (and ``time_field >= since_ms`` when given), in offset order."""
        ...


@dataclass(frozen=True)
class Committed:
    """What a partition's committed offset metadata says."""

    watermark: WatermarkState
    views: frozenset[str] | None  # None: written before the list existed (every version live)


def offset_metadata(watermark: WatermarkState, views: Iterable[str]) -> str:
    """The committed offset's metadata: the watermark and the view versions computed."""
    return orjson.dumps({**watermark.to_dict(), _VIEWS: sorted(views)}).decode()


def parse_offset_metadata(metadata: str | None) -> Committed:
    if not metadata:
        return Committed(WatermarkState(), None)
    data = orjson.loads(metadata)
    views = data.get(_VIEWS)
    return Committed(WatermarkState.from_dict(data), None if views is None else frozenset(views))


def to_backfill(computed: Iterable[str], committed: Committed) -> tuple[str, ...]:
    """The computed view versions the partition never committed (module docstring)."""
    if committed.views is None:
        return ()
    return tuple(ident for ident in computed if ident not in committed.views)


def read_floor_ms(view: FeatureView, watermark_ms: int, allowed_lateness_ms: int) -> int | None:
    """The oldest event time whose tile the processor still keeps (None: the whole history)."""
    groups = tile_groups(view)
    if any(g.tile_ms is None for g in groups):
        return None
    horizon = watermark_ms - allowed_lateness_ms - _EVICTION_SLACK_MS
    return horizon - max(g.span_ms or 0 for g in groups)


@dataclass
class Warmed:
    """What a warm start did: events folded per (partition, version), the versions left for a
    later start per partition (the table was behind), and the time it took."""

    folded: dict[tuple[int, str], int] = field(default_factory=dict)
    left: dict[int, tuple[str, ...]] = field(default_factory=dict)
    seconds: float = 0.0


def warm_start(
    catalog: Catalog,
    processors: Mapping[int, PartitionProcessor],
    needed: Mapping[int, Sequence[str]],
    history: AcceptedHistory,
    *,
    wait_s: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Warmed:
    """Backfill ``needed[p]`` (view versions) of each partition's processor, once the table
    holds the partition's events, waiting at most ``wait_s`` (default :data:`BACKFILL_WAIT_S`)
    for it (module docstring). Processors must be restored already."""
    began = monotonic()
    warmed = Warmed()
    wait = BACKFILL_WAIT_S if wait_s is None else wait_s
    behind = _wait(history, [p for p, idents in needed.items() if idents], wait, monotonic, sleep)
    views = {view_ident(v.name, v.version): v for v in catalog.computed_views}
    for partition, idents in needed.items():
        if partition in behind:
            warmed.left[partition] = tuple(idents)
            continue
        processor = processors[partition]
        for ident in idents:
            warmed.folded[(partition, ident)] = _backfill_one(
                catalog, processor, views[ident], history
            )
    warmed.seconds = monotonic() - began
    for (partition, ident), count in sorted(warmed.folded.items()):
        log.warning("backfilled %s on partition %d: %d events", ident, partition, count)
    return warmed


def _wait(
    history: AcceptedHistory,
    partitions: Sequence[int],
    wait_s: float,
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> set[int]:
    """The partitions still behind after waiting at most ``wait_s``."""
    if not partitions:
        return set()
    deadline = monotonic() + wait_s
    behind = history.behind(partitions)
    while behind and monotonic() < deadline:
        sleep(_POLL_S)
        behind = history.behind(sorted(behind))
    if behind:
        log.error(
            "offline table still behind on partitions %s after %.0f s: their new view versions "
            "are computed from now on and backfilled at the consumer's next start",
            sorted(behind),
            wait_s,
        )
    return behind


def _backfill_one(
    catalog: Catalog, processor: PartitionProcessor, view: FeatureView, history: AcceptedHistory
) -> int:
    source = catalog.source(view.source)
    key_field, time_field = view.key_field(catalog), source.event_time_field
    columns = tuple(
        dict.fromkeys([key_field, time_field, *(f.column for f in view.features if f.column)])
    )
    since = read_floor_ms(view, processor.watermark_ms, source.allowed_lateness_ms)
    rows = history.events(
        processor.partition,
        processor.state.last_offset,
        columns,
        time_field=time_field,
        since_ms=since,
    )
    batch = BatchColumns(
        np.asarray(rows.column(time_field).to_numpy(), dtype=np.int64),
        np.asarray(rows.column("_offset").to_numpy(), dtype=np.int64),
        {name: rows.column(name).to_pylist() for name in columns},
    )
    return processor.backfill(view_ident(view.name, view.version), batch)


class IcebergHistory:
    """:class:`AcceptedHistory` on the offline ``raw_events`` table and the offline topic."""

    def __init__(
        self, bootstrap: str, offline_topic: str, open_table: Callable[[], IcebergTable]
    ) -> None:
        self._bootstrap, self._topic = bootstrap, offline_topic
        self._open = open_table
        self._table: IcebergTable | None = None
        self._last: dict[int, int | None] = {}  # final while this consumer has not produced

    def table(self) -> IcebergTable:
        if self._table is None:
            self._table = self._open()
        return self._table

    def behind(self, partitions: Collection[int]) -> set[int]:
        from actors.offline import OFFSET_PREFIX

        for p in partitions:
            if p not in self._last:
                self._last[p] = last_committed_offset(self._bootstrap, self._topic, p)
        held = self.table().committed()
        prefix = f"{OFFSET_PREFIX}{self._topic}."
        out = set()
        for p in partitions:
            last = self._last[p]
            if last is not None and int(held.get(f"{prefix}{p}", 0)) <= last:
                out.add(p)
        return out

    def events(
        self,
        partition: int,
        upto_offset: int,
        columns: Sequence[str],
        *,
        time_field: str,
        since_ms: int | None,
    ) -> pa.Table:
        return self.table().accepted(
            partition, upto_offset, columns, time_field=time_field, since_ms=since_ms
        )


def last_committed_offset(bootstrap: str, topic: str, partition: int) -> int | None:
    """The offset of the last committed record of one partition (None: it has none). Reads
    ``read_committed`` backwards from the end in growing windows: the tail holds transaction
    markers and maybe an aborted transaction, which a reader never sees."""
    from kafka import TopicPartition

    from actors.kafka_io import read_committed_consumer

    consumer = read_committed_consumer(bootstrap, None)
    tp = TopicPartition(topic, partition)
    give_up = time.monotonic() + _TAIL_READ_S
    try:
        consumer.assign([tp])
        first = consumer.beginning_offsets([tp])[tp]
        end = consumer.end_offsets([tp])[tp]
        window = 16
        while True:
            start = max(first, end - window)
            consumer.seek(tp, start)
            last = None
            while consumer.position(tp) < end:
                if time.monotonic() > give_up:
                    raise OfflineTopicUnreadable(topic, partition, _TAIL_READ_S)
                for batch in consumer.poll(timeout_ms=500, max_records=500).values():
                    last = max([last or -1, *(r.offset for r in batch)])
            if last is not None or start == first:
                return last
            window *= 8
    finally:
        consumer.close()


def offline_history(config: PipelineConfig, catalog: Catalog) -> IcebergHistory | None:
    """The history a pipeline's consumers backfill from; None when it runs no offline writer."""
    if not config.offline:
        return None
    from actors.offline import OfflineWriterConfig
    from actors.offline_tables import open_tables

    writer = OfflineWriterConfig(
        offline_topic=config.offline_topic, changelog_topic=config.changelog_topic
    )
    source = catalog.source(config.source)

    def open_raw() -> IcebergTable:
        raw, _tiles = open_tables(
            config.iceberg_catalog_uri, config.iceberg_warehouse, writer.namespace, source
        )
        return raw

    return IcebergHistory(config.bootstrap, config.offline_topic, open_raw)
