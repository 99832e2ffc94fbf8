"""The read path, free of HTTP: a plan in, served values out.

Per request: one deadline (monotonic clock), one :meth:`FallbackChain.read` for all keys, one
``as_of`` (wall clock, ms, taken after the read so no stored event can be newer than a value's
``as_of`` because of the read itself), then :func:`serve_apps.values.evaluate` per (view, entity).

Invariants: never raises for store trouble (the chain turns it into defaults, status ``default``
and store ``defaults``); a corrupt stored field costs only its own (view, entity): logged, defaults
served; the result holds exactly one value per requested (ref, entity id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from features.catalog import Feature
from features.errors import DataError
from regions.resilience import Deadline
from serve_apps.fallback import ChainResult, FallbackChain
from serve_apps.plan import CatalogIndex, FeatureRef, ReadPlan, ViewInfo, encoded_id
from serve_apps.values import DEFAULT, CachedGroup, MergeMemo, Served, cached_groups, evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewValues:
    """The requested features of one view and, per entity id, one :class:`Served` per feature."""

    info: ViewInfo
    refs: tuple[FeatureRef, ...]
    by_id: Mapping[str, list[Served]]


@dataclass(frozen=True)
class ReadResult:
    as_of_ms: int
    store: str
    tried: list[tuple[str, str]]
    views: Mapping[str, ViewValues]


class ReadService:
    """Owns the chain and the decoded-tile caches of one replica; one event loop."""

    def __init__(
        self,
        index: CatalogIndex,
        chain: FallbackChain,
        *,
        monotonic: Callable[[], float],
        wall_ms: Callable[[], int],
    ) -> None:
        self.index = index
        self.chain = chain
        self._monotonic = monotonic
        self._wall_ms = wall_ms
        self._groups: dict[str, tuple[CachedGroup, ...]] = {
            name: cached_groups(info.groups) for name, info in index.views.items()
        }
        # One memo per (view, requested feature set): a memo key holds only fields and head
        # tiles, and which groups are merged depends on the feature set.
        self._memos: dict[tuple[str, tuple[str, ...]], MergeMemo] = {}

    async def read(self, plan: ReadPlan) -> ReadResult:
        deadline = Deadline(plan.deadline_ms / 1000.0, self._monotonic)
        result = await self.chain.read(plan.keys, deadline)
        as_of = self._wall_ms()
        by_view: dict[str, list[FeatureRef]] = {}
        for ref in plan.refs:
            by_view.setdefault(ref.info.view.name, []).append(ref)
        views = {
            name: self._view_values(refs, plan, result, as_of) for name, refs in by_view.items()
        }
        return ReadResult(as_of, result.store, result.tried, views)

    def _view_values(
        self, refs: list[FeatureRef], plan: ReadPlan, result: ChainResult, as_of: int
    ) -> ViewValues:
        info = refs[0].info
        features = [r.feature for r in refs]
        groups = self._groups[info.view.name]
        memo = self._memos.setdefault((info.view.name, tuple(r.ref for r in refs)), {})
        by_id: dict[str, list[Served]] = {}
        for entity_id in plan.ids[info.entity.name]:
            if result.fields is None:
                by_id[entity_id] = _defaults(features, result.store)
                continue
            key = info.prefix + encoded_id(entity_id, info.entity.max_id_bytes)
            try:
                fields = result.fields.get(key, {})
                by_id[entity_id] = evaluate(
                    info, groups, features, fields, as_of_ms=as_of, store=result.store, memo=memo
                )
            except DataError as exc:
                log.error("corrupt tiles at %s in %s: %s", key, result.store, exc)
                by_id[entity_id] = _defaults(features, result.store)
        return ViewValues(info, tuple(refs), by_id)


def _defaults(features: list[Feature], store: str) -> list[Served]:
    return [(f.default, DEFAULT, None, None, store) for f in features]
