"""What a training set asks for: features by ``view:feature``, and a spine of (entity, time) rows.

The spine is Parquet, CSV, a ``pyarrow.Table`` or a ``ray.data.Dataset``. It holds, for every
requested view, the view's entity join key (``user_id`` for ``user_spend`` in the demo catalog),
a timestamp column (epoch milliseconds as integers, or an Arrow timestamp; a timezone-naive
timestamp is read as UTC), and any other columns (labels), which are carried through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from features.catalog import Catalog, Feature, FeatureView
from features.errors import CatalogError
from training.exceptions import FeatureRefError, SpineError

DEFAULT_TIMESTAMP_COLUMN = "timestamp"
ROW = "__row"
"""The spine position each output row carries until the set is put back in spine order."""


@dataclass(frozen=True)
class ViewRequest:
    """The requested features of one view, in request order, and the spine column of its key."""

    view: FeatureView
    features: tuple[Feature, ...]
    key_column: str

    def column(self, feature: Feature) -> str:
        """The output column of a feature's value (``view__feature``: a ':' is awkward in SQL)."""
        return f"{self.view.name}__{feature.name}"

    def status_column(self, feature: Feature) -> str:
        return f"{self.column(feature)}__status"


def parse_features(catalog: Catalog, refs: Sequence[str]) -> tuple[ViewRequest, ...]:
    """``["user_spend:tx_count_1h", ...]`` grouped by view (first-mention order); duplicates
    and unknown names raise :class:`FeatureRefError`."""
    if not refs:
        raise FeatureRefError("no features requested")
    by_view: dict[str, list[Feature]] = {}
    for ref in refs:
        view_name, sep, feature_name = ref.strip().partition(":")
        if not sep or not view_name or not feature_name:
            raise FeatureRefError(f"feature {ref!r} is not 'view:feature'")
        try:
            feature = catalog.view(view_name).feature(feature_name)
        except CatalogError as exc:
            raise FeatureRefError(f"feature {ref!r}: {exc}") from None
        chosen = by_view.setdefault(view_name, [])
        if feature in chosen:
            raise FeatureRefError(f"feature {ref!r} is requested twice")
        chosen.append(feature)
    return tuple(
        ViewRequest(catalog.view(v), tuple(fs), catalog.view(v).key_field(catalog))
        for v, fs in by_view.items()
    )


def load_spine(spine: Any) -> pa.Table:
    """The spine as one Arrow table: a path (``.parquet`` or ``.csv``), a table or a Dataset."""
    if isinstance(spine, pa.Table):
        return spine
    if isinstance(spine, str | Path):
        return _read_file(Path(spine))
    if hasattr(spine, "to_arrow_refs"):  # a ray.data.Dataset; imported lazily by its caller
        import ray

        tables = ray.get(spine.to_arrow_refs())
        return pa.concat_tables(tables) if tables else pa.table({})
    raise SpineError(f"a spine is a path, a pyarrow.Table or a ray.data.Dataset, not {spine!r}")


def _read_file(path: Path) -> pa.Table:
    try:
        if path.suffix == ".csv":
            from pyarrow import csv

            return csv.read_csv(path)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SpineError(f"cannot read the spine {path}: {exc}") from None


def spine_times(spine: pa.Table, column: str) -> pa.Array:
    """The timestamp column as int64 epoch milliseconds; nulls and other types are refused."""
    if column not in spine.column_names:
        raise SpineError(f"the spine has no timestamp column {column!r}")
    times = spine[column].combine_chunks()
    if pa.types.is_timestamp(times.type):
        times = pc.cast(times.cast(pa.timestamp("ms", tz=times.type.tz)), pa.int64())
    elif pa.types.is_integer(times.type):
        times = times.cast(pa.int64())
    else:
        raise SpineError(f"spine column {column!r} is {times.type}: need epoch ms or a timestamp")
    if times.null_count:
        raise SpineError(f"spine column {column!r} has {times.null_count} empty timestamps")
    return times


def check_keys(spine: pa.Table, requests: Sequence[ViewRequest]) -> None:
    """Every view's join key is a string column of the spine (nulls allowed: no entity)."""
    for request in requests:
        column = request.key_column
        if column not in spine.column_names:
            raise SpineError(f"the spine has no {column!r} column (entity of {request.view.name})")
        if not pa.types.is_string(spine[column].type) and not pa.types.is_large_string(
            spine[column].type
        ):
            raise SpineError(f"spine column {column!r} is {spine[column].type}: need strings")
