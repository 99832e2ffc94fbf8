"""From the stored blocks of a view's entities to served values with a status, event time and age.

The values come from :func:`features.block_merge.merge_blocks`, one vectorised pass over every
requested entity of a view, proven bitwise equal to :func:`features.tile_groups.read_view`, the
merge the offline backfills and tests use, so serving cannot drift from training. This module only
hands it the blocks and says what each value is worth; statuses, event times and ages are computed
as arrays over (feature, entity), never per value.

Status of one value (``as_of`` = the request time, wall clock, ms):

``not_found``  the store that answered holds no block for the entity in this view; default served.
``default``    the entity exists but the feature has no data in its window (or an empty result,
               such as the mean of nothing); the feature's default is served.
``stale``      the feature's newest data is older than the view's ``ttl``; default served.
``present``    anything else: the merged value.

Event time (how staleness is detected from stored tiles alone; tiles carry no event times):

- ``last`` features store ``(event_time, order, value)``: their event time is exact;
- a windowed feature's newest data lies in the newest covering tile that is stored, whose start is
  a lower bound. When a ``last`` feature of the view reports an event inside that very tile, that
  event is the entity's newest and its time is used (exact); otherwise the tile start (a lower
  bound, so ``age_ms`` errs on the old side and a value is never reported fresher than it is);
- other unwindowed features (``cusum``) fold every event of the entity, so their newest data is the
  entity's newest: the largest of the ``last`` times and tile starts stored for the view. With no
  such evidence at all the event time is ``null`` and only the stores' key TTL bounds the age.

Because ``ttl`` covers the longest window (a catalog rule), a windowed value can only be stale
through the head-tile lower bound; ``stale`` matters for ``last`` and ``cusum`` values of an entity
that went quiet.

Invariants: a value whose (lower-bound) event time is older than ``ttl`` is never ``present``;
tiles outside a feature's covering range never count (the merge's rule); a corrupt block costs only
its own entity (its values are defaults, see :func:`evaluate_view`); there is no cache of stored
bytes or merged values: every read merges what the store answered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from features.block_merge import NO_TILE, MergedView, merge_blocks
from features.blocks import Block, BlockLayout, blocks_of
from features.catalog import Aggregation, Feature
from features.errors import DataError

PRESENT = "present"
DEFAULT = "default"
NOT_FOUND = "not_found"
STALE = "stale"

log = logging.getLogger(__name__)

Served = tuple[Any, str, int | None, int | None, str]
"""``(value, status, event_time_ms, age_ms, store)`` of one (feature, entity)."""


@dataclass(frozen=True, slots=True)
class Columns:
    """One view's served values: per entity (request order), one list per field over the
    requested features (request order). The columnar response takes these lists as they are;
    :meth:`served` gives the per-value tuples the row shapes need."""

    values: list[list[Any]]
    statuses: list[list[str]]
    event_times: list[list[int | None]]
    ages: list[list[int | None]]
    store: str
    newest_ms: int | None = None  # the newest event time behind any served value (metrics)

    def served(self, entity: int) -> list[Served]:
        fields = (self.values, self.statuses, self.event_times, self.ages)
        return list(zip(*(f[entity] for f in fields), repeat(self.store), strict=False))


_STATUS = np.array([PRESENT, DEFAULT, STALE, NOT_FOUND], dtype=object)
_PRESENT, _DEFAULT, _STALE, _NOT_FOUND = range(4)
_NULL = np.array(None, dtype=object)
Ints = npt.NDArray[np.int64]


def defaults(features: Sequence[Feature], entities: int, store: str) -> Columns:
    """Every value the feature's default, status ``default`` (the chain fell through)."""
    nothing: list[int | None] = [None] * len(features)
    return Columns(
        [[f.default for f in features] for _ in range(entities)],
        [[DEFAULT] * len(features) for _ in range(entities)],
        [list(nothing) for _ in range(entities)],
        [list(nothing) for _ in range(entities)],
        store,
    )


def evaluate_view(
    layout: BlockLayout,
    ttl_ms: int,
    features: Sequence[Feature],
    replies: Sequence[Mapping[str, bytes]],
    *,
    as_of_ms: int,
    store: str,
    where: str = "",
) -> Columns:
    """Per entity (``replies[e]``: its stored fields), the values of ``features`` (all of the
    layout's view) as of ``as_of_ms``. A corrupt block is logged with ``where`` and the key's
    index and serves defaults for its entity only."""
    blocks: list[list[Block]] = []
    bad: set[int] = set()
    for e, fields in enumerate(replies):
        try:
            blocks.append(blocks_of(layout, fields))
        except DataError as exc:
            log.error("corrupt block of entity %d of %s in %s: %s", e, where, store, exc)
            blocks.append([])
            bad.add(e)
    names = tuple(f.name for f in features)
    merged = _merge(layout, blocks, as_of_ms, names, bad=bad, where=where, store=store)
    kinds = _kinds(layout, names, features)
    codes, times, ages = _statuses(kinds, merged, ttl_ms, as_of_ms)
    found = np.array([bool(b) for b in blocks], dtype=bool)
    codes[:, ~found] = _NOT_FOUND
    if bad:
        codes[:, sorted(bad)] = _DEFAULT
    timed = (codes == _PRESENT) | (codes == _STALE)
    fallback = np.empty((len(features), 1), dtype=object)
    for i, feature in enumerate(features):  # one by one: a list default stays one value
        fallback[i, 0] = feature.default
    values = np.where(codes == _PRESENT, merged.values, fallback)
    dated = timed & (times != NO_TILE)
    event_times = np.where(dated, times, _NULL)
    age_values = np.where(dated, ages, _NULL)
    return Columns(
        values.T.tolist(),
        _STATUS[codes].T.tolist(),
        event_times.T.tolist(),
        age_values.T.tolist(),
        store,
        int(times[dated].max()) if dated.any() else None,
    )


def _merge(
    layout: BlockLayout,
    blocks: list[list[Block]],
    as_of_ms: int,
    names: tuple[str, ...],
    *,
    bad: set[int],
    where: str,
    store: str,
) -> MergedView:
    """One merge for all entities; when some block's rows are corrupt (checked only there), the
    entities are merged one by one to find them, and theirs count as empty."""
    try:
        return merge_blocks(layout, blocks, as_of_ms, names)
    except DataError:
        pass
    for e, mine in enumerate(blocks):
        try:
            merge_blocks(layout, [mine], as_of_ms, names)
        except DataError as exc:
            log.error("corrupt block of entity %d of %s in %s: %s", e, where, store, exc)
            blocks[e] = []
            bad.add(e)
    return merge_blocks(layout, blocks, as_of_ms, names)


def _statuses(
    kinds: Kinds, merged: MergedView, ttl_ms: int, as_of_ms: int
) -> tuple[npt.NDArray[np.intp], Ints, Ints]:
    """Status codes, event times (``NO_TILE``: unknown) and ages, features x entities, by the
    module docstring's rules."""
    newest = merged.newest.T  # features x entities
    last = merged.last_time.T
    newest_last = merged.newest_last
    tile, windowed, is_last = kinds
    # Windowed: the newest covering tile, or the entity's newest `last` event inside it.
    inside = (newest_last != NO_TILE) & (newest <= newest_last) & (newest_last - newest < tile)
    tiled_time = np.where(inside, newest_last, newest)
    # Other unwindowed (cusum): the entity's newest evidence, when it holds unwindowed states.
    entity_newest = np.maximum(newest_last, merged.latest_start)
    time = np.where(windowed, tiled_time, np.where(is_last, last, entity_newest))
    has = np.where(windowed, newest != NO_TILE, np.where(is_last, last != NO_TILE, True))
    has &= windowed | is_last | merged.unwindowed
    has &= np.not_equal(merged.values, _NULL)
    known = time != NO_TILE
    event_time = np.where(known, np.minimum(time, as_of_ms), NO_TILE)
    age = np.where(known, as_of_ms - event_time, 0)
    codes = np.where(has, np.where(known & (age > ttl_ms), _STALE, _PRESENT), _DEFAULT)
    return codes.astype(np.intp), event_time, age


Kinds = tuple[Ints, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]
# By (id of the view's layout, requested names); the layout is kept so its id stays unique.
_KINDS: dict[tuple[int, tuple[str, ...]], tuple[BlockLayout, Kinds]] = {}
_KINDS_LIMIT = 4096


def _kinds(layout: BlockLayout, names: tuple[str, ...], features: Sequence[Feature]) -> Kinds:
    """Per requested feature (a column): its tile ms (1 if unwindowed), windowed, ``last``.
    Constants of the view and the requested names, remembered (bounded) because
    ``Feature.tile_spec`` is rebuilt on every access; they hold no stored data, so they cannot
    go stale."""
    found = _KINDS.get((id(layout), names))
    if found is None:
        if len(_KINDS) >= _KINDS_LIMIT:
            _KINDS.clear()
        specs = [f.tile_spec for f in features]
        kinds = (
            np.array([1 if s is None else s.tile_ms for s in specs], dtype=np.int64)[:, None],
            np.array([s is not None for s in specs], dtype=bool)[:, None],
            np.array([f.aggregation is Aggregation.LAST for f in features], dtype=bool)[:, None],
        )
        found = _KINDS[(id(layout), names)] = (layout, kinds)
    return found[1]
