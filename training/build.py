"""A point-in-time training set on Ray Data: spine rows joined as of their time with features.

Ray Data has no as-of join, so both sides are co-partitioned by a hash of the entity id: the
driver splits the spine rows and the events of one view into buckets, each bucket's events one
object in the object store and each bucket's spine rows one block of a Dataset; ``map_batches``
over those blocks reads, per bucket, only that bucket's events and computes all its rows at once
with :func:`training.asof.as_of_values`. The driver splits rather than a ``groupby``: a hash
shuffle would move the rows to where they already are, at the price of its shuffle actors. Every
view is one such pass; the results are put back in spine order by the row number each spine row
carries, so cardinality and order are the spine's, duplicates included.

The output holds the spine's columns, then per feature ``<view>__<feature>`` (the value, the
catalog default when there is none) and ``<view>__<feature>__status`` (``present``, ``default``,
``stale`` or ``not_found``, see :mod:`training.asof`). Its Parquet metadata names the Iceberg
table and snapshot read, the features and the cutoff, so the set can be rebuilt exactly
(:func:`write_training_set`, ``snapshot_id``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.catalog import Aggregation, Catalog, Feature, FieldType
from training.asof import Columns, as_of_values
from training.events import EventsRead, event_columns, read_events
from training.exceptions import FeatureRefError
from training.spec import (
    DEFAULT_TIMESTAMP_COLUMN,
    ROW,
    ViewRequest,
    check_keys,
    load_spine,
    parse_features,
    spine_times,
)

DEFAULT_BUCKETS = 16
BUCKET, KEY, TIME = "__bucket", "__key", "__time"
META_PREFIX = "freshline."

_SCALAR_TYPES: dict[FieldType, pa.DataType] = {
    FieldType.STRING: pa.string(),
    FieldType.INT: pa.int64(),
    FieldType.FLOAT: pa.float64(),
    FieldType.BOOL: pa.bool_(),
}


@dataclass(frozen=True)
class TrainingSetOptions:
    """How to build a set. ``ingested_before_ms``: only events ingested (``_ingested_at_ms``)
    before it count, so data that arrived after the cutoff cannot leak into the past;
    ``snapshot_id``: read this Iceberg snapshot instead of the current one (a rebuild)."""

    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN
    ingested_before_ms: int | None = None
    snapshot_id: int | None = None
    buckets: int = DEFAULT_BUCKETS

    def __post_init__(self) -> None:
        if self.buckets < 1:
            raise ValueError("buckets must be at least 1")


@dataclass(frozen=True)
class TrainingSet:
    """The set as a Dataset (spine order) and the metadata that rebuilds it."""

    dataset: Any  # ray.data.Dataset
    metadata: dict[str, str]


def training_set(
    spine: Any,
    features: Sequence[str],
    *,
    catalog: Catalog,
    events_table: Any,
    options: TrainingSetOptions | None = None,
) -> TrainingSet:
    """The training set of ``spine`` (path, Arrow table or Dataset) with ``features``
    (``view:feature``) read from ``events_table`` (the pyiceberg ``raw_events`` table)."""
    import ray.data

    table, metadata = build_table(
        spine, features, catalog=catalog, events_table=events_table, options=options
    )
    return TrainingSet(ray.data.from_arrow(table), metadata)


def training_dataset(
    spine: Any,
    features: Sequence[str],
    *,
    catalog: Catalog,
    events_table: Any,
    options: TrainingSetOptions | None = None,
) -> Any:
    """:func:`training_set`'s ``ray.data.Dataset`` alone."""
    built = training_set(
        spine, features, catalog=catalog, events_table=events_table, options=options
    )
    return built.dataset


def write_training_set(
    spine: Any,
    features: Sequence[str],
    out: str | Path,
    *,
    catalog: Catalog,
    events_table: Any,
    options: TrainingSetOptions | None = None,
) -> dict[str, str]:
    """Writes the set to one Parquet file with its rebuild metadata; returns the metadata."""
    import pyarrow.parquet as pq

    table, metadata = build_table(
        spine, features, catalog=catalog, events_table=events_table, options=options
    )
    existing = table.schema.metadata or {}
    pq.write_table(table.replace_schema_metadata({**existing, **metadata}), str(out))
    return metadata


def build_table(
    spine: Any,
    features: Sequence[str],
    *,
    catalog: Catalog,
    events_table: Any,
    options: TrainingSetOptions | None = None,
) -> tuple[pa.Table, dict[str, str]]:
    """The set as one Arrow table in spine order, and its metadata."""
    options = options or TrainingSetOptions()
    requests = parse_features(catalog, features)
    rows = load_spine(spine)
    check_keys(rows, requests)
    times = spine_times(rows, options.timestamp_column)
    read = _read(requests, catalog, events_table, times, options)
    out = rows
    for request in requests:
        for name, column in _view_columns(
            request, rows, times, read.table, catalog=catalog, options=options
        ):
            out = out.append_column(name, column)
    return out, _metadata(read, features, options)


def _read(
    requests: Sequence[ViewRequest],
    catalog: Catalog,
    events_table: Any,
    times: pa.Array,
    options: TrainingSetOptions,
) -> EventsRead:
    sources = {r.view.source for r in requests}
    if len(sources) != 1:
        raise FeatureRefError(f"one training set reads one source; these views read {sources}")
    source = catalog.source(sources.pop())
    values = [f.column for r in requests for f in r.features if f.column]
    columns = event_columns([r.key_column for r in requests], source.event_time_field, values)
    return read_events(
        events_table,
        columns,
        time_column=source.event_time_field,
        until_ms=int(np.max(times.to_numpy())) if len(times) else 0,
        ingested_before_ms=options.ingested_before_ms,
        snapshot_id=options.snapshot_id,
    )


def _metadata(
    read: EventsRead, features: Sequence[str], options: TrainingSetOptions
) -> dict[str, str]:
    return {
        f"{META_PREFIX}iceberg.table": read.table_name,
        f"{META_PREFIX}iceberg.snapshot_id": str(read.snapshot_id or ""),
        f"{META_PREFIX}features": ",".join(features),
        f"{META_PREFIX}timestamp_column": options.timestamp_column,
        f"{META_PREFIX}ingested_before_ms": str(options.ingested_before_ms or ""),
    }


def _buckets(keys: pa.ChunkedArray | pa.Array, buckets: int) -> Any:
    hashed = pd.util.hash_pandas_object(pd.Series(keys.to_pylist(), dtype=object), index=False)
    return (hashed.to_numpy() % np.uint64(buckets)).astype(np.int64)


def _view_columns(
    request: ViewRequest,
    rows: pa.Table,
    times: pa.Array,
    events: pa.Table,
    *,
    catalog: Catalog,
    options: TrainingSetOptions,
) -> list[tuple[str, pa.Array]]:
    """The request's value and status columns, in spine order, computed bucket by bucket."""
    import ray
    import ray.data

    keys = rows[request.key_column]
    spine = pa.table(
        {
            ROW: pa.array(np.arange(rows.num_rows, dtype=np.int64)),
            KEY: keys,
            TIME: times,
            BUCKET: pa.array(_buckets(keys, options.buckets)),
        }
    )
    refs = {b: ray.put(part) for b, part in _split(events, request.key_column, options.buckets)}
    source = catalog.source(request.view.source)
    compute = functools.partial(
        _batch_values,
        request=request,
        columns=Columns(key=request.key_column, time=source.event_time_field),
        types=_types(request, source.fields),
        refs=refs,
        empty=events.schema.empty_table(),
    )
    blocks: list[Any] = [ray.put(part) for _, part in _split(spine, KEY, options.buckets)]
    # batch_size=None: a batch is a whole block, so a bucket's rows are merged in one call.
    ds = ray.data.from_arrow_refs(blocks).map_batches(
        compute, batch_format="pyarrow", batch_size=None
    )
    parts = ray.get(ds.to_arrow_refs())
    computed = pa.concat_tables(parts).sort_by(ROW) if parts else pa.table({})
    if computed.num_rows != rows.num_rows:
        raise RuntimeError("a bucket lost or added spine rows")  # an invariant, not input
    return [(name, computed[name]) for name in computed.column_names if name != ROW]


def _split(table: pa.Table, key: str, buckets: int) -> list[tuple[int, pa.Table]]:
    """The non-empty buckets of ``table`` by the hash of its ``key`` column."""
    if not table.num_rows:
        return []
    bucket = _buckets(table[key], buckets)
    order = np.argsort(bucket, kind="stable")
    ordered, counts = table.take(pa.array(order)), np.bincount(bucket, minlength=buckets)
    starts = np.cumsum(counts) - counts
    return [(b, ordered.slice(int(starts[b]), int(counts[b]))) for b in range(buckets) if counts[b]]


def _types(request: ViewRequest, fields: dict[str, FieldType]) -> dict[str, pa.DataType]:
    return {f.name: _arrow_type(f, fields) for f in request.features}


def _arrow_type(feature: Feature, fields: dict[str, FieldType]) -> pa.DataType:
    agg = feature.aggregation
    if agg in (Aggregation.COUNT, Aggregation.DISTINCT_COUNT):
        return pa.int64()
    scalar = _SCALAR_TYPES[fields[feature.column]] if feature.column else pa.int64()
    if agg is Aggregation.LAST:
        return scalar
    if agg is Aggregation.LAST_N:
        return pa.list_(scalar)
    return pa.float64()


def _batch_values(
    batch: pa.Table,
    *,
    request: ViewRequest,
    columns: Columns,
    types: dict[str, pa.DataType],
    refs: dict[int, Any],
    empty: pa.Table,
) -> pa.Table:
    """A batch's rows, bucket by bucket (a batch is normally one bucket's block)."""
    buckets = np.asarray(batch[BUCKET].to_numpy(), dtype=np.int64)
    parts = []
    for bucket in np.unique(buckets).tolist():
        rows = batch.filter(pa.array(buckets == bucket))
        parts.append(
            _bucket_values(
                rows, request=request, columns=columns, types=types, refs=refs, empty=empty
            )
        )
    return pa.concat_tables(parts) if parts else batch.select([ROW])


def _bucket_values(
    batch: pa.Table,
    *,
    request: ViewRequest,
    columns: Columns,
    types: dict[str, pa.DataType],
    refs: dict[int, Any],
    empty: pa.Table,
) -> pa.Table:
    """One bucket's rows: their values and statuses, with ``ROW``."""
    import ray

    bucket = int(batch[BUCKET][0].as_py())
    events = ray.get(refs[bucket]) if bucket in refs else empty
    ts = np.asarray(batch[TIME].to_numpy(), dtype=np.int64)
    values = as_of_values(
        request.view,
        request.features,
        events,
        columns=columns,
        keys=batch[KEY].to_pylist(),
        ts=ts,
    )
    out: dict[str, pa.Array] = {ROW: batch[ROW].combine_chunks()}
    for feature in request.features:
        name = feature.name
        out[request.column(feature)] = pa.array(values.values[name].tolist(), type=types[name])
        out[request.status_column(feature)] = pa.array(
            values.status[name].tolist(), type=pa.string()
        )
    return pa.table(out)
