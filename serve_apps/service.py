"""The read path, free of HTTP: a plan in, served values out.

Per request: one deadline (monotonic clock), one :meth:`FallbackChain.read` for all keys, one
``as_of`` (wall clock, ms, taken after the read so no stored event can be newer than a value's
``as_of`` because of the read itself), then one :func:`serve_apps.values.evaluate_view` per view,
which merges the blocks of all the view's requested entities in one vectorised pass.

Invariants: never raises for store trouble (the chain turns it into defaults, status ``default``
and store ``defaults``); a corrupt stored block costs only its own (view, entity): logged, defaults
served; the result holds exactly one value per requested (ref, entity id). Nothing read from a
store is cached: every request merges what its store answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from regions.resilience import Deadline
from serve_apps.fallback import ChainResult, FallbackChain
from serve_apps.plan import CatalogIndex, FeatureRef, ReadPlan, ViewInfo, encoded_id
from serve_apps.values import Columns, Served, defaults, evaluate_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewValues:
    """The requested features of one view and their served values per entity id (``ids``,
    request order; ``columns`` in the same order)."""

    info: ViewInfo
    refs: tuple[FeatureRef, ...]
    ids: tuple[str, ...]
    columns: Columns

    def by_id(self) -> dict[str, list[Served]]:
        """Per entity id, one :class:`Served` per requested feature (the row shapes)."""
        return {i: self.columns.served(e) for e, i in enumerate(self.ids)}


@dataclass(frozen=True)
class ReadResult:
    as_of_ms: int
    store: str
    tried: list[tuple[str, str]]
    views: Mapping[str, ViewValues]


class ReadService:
    """Owns the chain of one replica; one event loop."""

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
        ids = plan.ids[info.entity.name]
        if result.fields is None:
            served = defaults(features, len(ids), result.store)
        else:
            stored = result.fields
            replies = [
                stored.get(info.prefix + encoded_id(i, info.entity.max_id_bytes), {}) for i in ids
            ]
            served = evaluate_view(
                info.layout,
                info.view.ttl_ms,
                features,
                replies,
                as_of_ms=as_of,
                store=result.store,
                where=info.prefix,
            )
        return ViewValues(info, tuple(refs), ids, served)
