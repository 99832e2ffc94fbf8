"""The shadow report of a view rolling out: its candidate version compared, feature by feature,
with its offline recomputation and with the previous version (``freshline shadow``).

Pure: the caller (``cluster.shadow_cli``) reads both versions' stored blocks as serving evaluates
them and recomputes the candidate with the training-set code (:func:`training.asof.as_of_values`)
as of the same instant; this module picks the entities and compares the values.

Two values are equal when they are the same value, or both numbers within
:data:`RELATIVE_TOLERANCE` of each other (relative to the larger magnitude), or both lists of
equal values. A feature's mean absolute difference is over the entities where both values are
numbers (``None`` when there are none): a count or sum off by a few events shows as a small mean,
a wrong window as a large one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RELATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class FeatureShadow:
    """One feature of the candidate: how often it equals the offline recomputation and the
    previous version's value (None: the previous version has no such feature)."""

    feature: str
    entities: int
    equal_offline: float
    mean_abs_diff_offline: float | None
    equal_previous: float | None
    mean_abs_diff_previous: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "entities": self.entities,
            "equal_offline": self.equal_offline,
            "mean_abs_diff_offline": self.mean_abs_diff_offline,
            "equal_previous": self.equal_previous,
            "mean_abs_diff_previous": self.mean_abs_diff_previous,
        }


def recent_entities(events: pa.Table, key: str, time: str, count: int) -> list[Any]:
    """The ``count`` entities with the newest events in ``events``, newest first (ties by id)."""
    if not events.num_rows or count <= 0:
        return []
    newest = events.group_by(key).aggregate([(time, "max")])
    ordered = newest.sort_by([(f"{time}_max", "descending"), (key, "ascending")])
    return list(ordered.column(key).slice(0, count).to_pylist())


def of_entities(events: pa.Table, key: str, entities: Sequence[Any]) -> pa.Table:
    """The events of ``entities`` only."""
    return events.filter(pc.is_in(events[key], value_set=pa.array(entities)))


def equal(a: Any, b: Any) -> bool:
    """The report's equality (module docstring)."""
    if _number(a) and _number(b):
        if a == b:
            return True
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return bool(abs(a - b) <= RELATIVE_TOLERANCE * max(abs(a), abs(b)))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compare(
    candidate: Mapping[str, Sequence[Any]],
    offline: Mapping[str, Sequence[Any]],
    previous: Mapping[str, Sequence[Any]],
) -> list[FeatureShadow]:
    """Per feature of ``candidate`` (values per feature, one per entity, the same entities in
    the same order in all three), the report's line; ``previous`` holds the features the
    previous version shares with the candidate."""
    out = []
    for name, values in candidate.items():
        rows = len(values)
        before = previous.get(name)
        out.append(
            FeatureShadow(
                feature=name,
                entities=rows,
                equal_offline=_share(values, offline[name]),
                mean_abs_diff_offline=_mean_abs_diff(values, offline[name]),
                equal_previous=None if before is None else _share(values, before),
                mean_abs_diff_previous=None if before is None else _mean_abs_diff(values, before),
            )
        )
    return out


def _share(got: Sequence[Any], want: Sequence[Any]) -> float:
    if not got:
        return 1.0
    return sum(equal(a, b) for a, b in zip(got, want, strict=True)) / len(got)


def _mean_abs_diff(got: Sequence[Any], want: Sequence[Any]) -> float | None:
    diffs = [abs(a - b) for a, b in zip(got, want, strict=True) if _number(a) and _number(b)]
    return sum(diffs) / len(diffs) if diffs else None


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
