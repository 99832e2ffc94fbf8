"""The Ray actor around ``OfflineWriter`` (crash-only, like ``actors.runtime``).

Any error exits the process; Ray restarts the actor, which resumes from the Iceberg snapshot
properties. There is no in-process recovery path.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import ray

from actors.kafka_io import read_committed_consumer, topic_partitions
from actors.offline import OfflineWriter, OfflineWriterConfig
from actors.offline_tables import open_tables
from features.catalog import Catalog

log = logging.getLogger("freshline.offline")


def _die(exc: BaseException) -> None:
    log.exception("offline writer failed; exiting so that Ray restarts it", exc_info=exc)
    os._exit(1)


def build_writer(config: OfflineWriterConfig, catalog: Catalog) -> OfflineWriter:
    """The production writer: read_committed, no group offsets (position lives in Iceberg)."""
    source = catalog.source(config.source)
    consumer = read_committed_consumer(config.bootstrap, None, max_poll_records=5_000)
    raw, tiles = open_tables(
        config.iceberg_catalog_uri, config.iceberg_warehouse, config.namespace, source
    )
    return OfflineWriter(config, source, raw_table=raw, tile_table=tiles, consumer=consumer)


class _OfflineWriterActor:
    """Crash-only: any error exits the process; Ray's restart resumes from the Iceberg snapshot."""

    def __init__(self, config: OfflineWriterConfig, catalog: Catalog) -> None:
        self._config, self._catalog = config, catalog
        self._writer: OfflineWriter | None = None
        self._stop = threading.Event()
        self.ready = threading.Event()
        threading.Thread(target=self._run, name="offline-loop", daemon=True).start()

    def _run(self) -> None:
        try:
            writer = build_writer(self._config, self._catalog)
            topics = (self._config.offline_topic, self._config.changelog_topic)
            writer.start(topic_partitions(writer.consumer, topics))
            self._writer = writer
            self.ready.set()
            while not self._stop.is_set():
                writer.step()
            writer.consumer.close()
        except BaseException as exc:
            _die(exc)

    def status(self) -> dict[str, Any]:
        w = self._writer
        return {
            "pid": os.getpid(),
            "shard": self._config.shard,
            "ready": self.ready.is_set(),
            "positions": w.positions() if w else {},
            "rows_written": dict(w.rows_written) if w else {},
            "commit_retries": w.commit_retries if w else 0,
        }

    def stop(self) -> None:
        self._stop.set()


_remote: Any = ray.remote
OfflineWriterActor: Any = _remote(
    max_restarts=-1, max_task_retries=-1, max_concurrency=4, num_cpus=0.25
)(_OfflineWriterActor)
