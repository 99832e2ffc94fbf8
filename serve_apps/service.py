"""The read path, free of HTTP: a plan in, served values out.

Per request: one deadline (monotonic clock), one :meth:`FallbackChain.read` for all keys, one
``as_of`` (wall clock, ms, taken after the read so no stored event can be newer than a value's
``as_of`` because of the read itself), then one :func:`serve_apps.values.evaluate_view` per view,
which merges the blocks of all the view's requested entities in one vectorised pass.

Invariants: never raises for store trouble (the chain turns it into defaults, status ``default``
and store ``defaults``); a corrupt stored block costs only its own (view, entity): logged, defaults
served; the result holds exactly one value per requested (ref, entity id), and all of one
entity's values of one view come from the one version the plan picked for it (a rollout,
``features.rollout``), named in ``ViewValues.versions``. Nothing read from a store is cached: every
request merges what its store answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from regions.resilience import Deadline
from serve_apps.fallback import ChainResult, FallbackChain
from serve_apps.plan import CatalogIndex, FeatureRef, ReadPlan, ViewInfo, encoded_id
from serve_apps.values import Columns, Served, defaults, evaluate_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewValues:
    """The requested features of one view and their served values per entity id (``ids``,
    request order; ``columns`` and ``versions``, the view version that answered, in the same
    order)."""

    info: ViewInfo
    refs: tuple[FeatureRef, ...]
    ids: tuple[str, ...]
    columns: Columns
    versions: tuple[int, ...]

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
        ids = plan.ids[info.entity.name]
        answering = plan.answering[info.view.name]
        first = answering[0] if answering else info
        if all(a is first for a in answering):  # one version answers every id (no canary)
            served = self._evaluate(first, refs, ids, result, as_of)
        else:
            served = self._evaluate_split(answering, refs, ids, result, as_of)
        versions = tuple(a.view.version for a in answering)
        return ViewValues(info, tuple(refs), ids, served, versions)

    def _evaluate(
        self,
        info: ViewInfo,
        refs: list[FeatureRef],
        ids: Sequence[str],
        result: ChainResult,
        as_of: int,
    ) -> Columns:
        """The values of ``ids`` from one view version (its own definition of each feature)."""
        features = [info.features[r.feature.name] for r in refs]
        if result.fields is None:
            return defaults(features, len(ids), result.store)
        stored, max_id_bytes = result.fields, info.entity.max_id_bytes
        replies = [stored.get(info.prefix + encoded_id(i, max_id_bytes), {}) for i in ids]
        return evaluate_view(
            info.layout,
            info.view.ttl_ms,
            features,
            replies,
            as_of_ms=as_of,
            store=result.store,
            where=info.prefix,
        )

    def _evaluate_split(
        self,
        answering: Sequence[ViewInfo],
        refs: list[FeatureRef],
        ids: Sequence[str],
        result: ChainResult,
        as_of: int,
    ) -> Columns:
        """A canary: each version evaluates its own ids, the rows go back to request order."""
        groups: dict[int, tuple[ViewInfo, list[int]]] = {}
        for position, info in enumerate(answering):
            groups.setdefault(info.view.version, (info, []))[1].append(position)
        n = len(ids)
        fields: list[list[Any]] = [[None] * n for _ in range(4)]
        newest: list[int] = []
        for info, positions in groups.values():
            part = self._evaluate(info, refs, [ids[p] for p in positions], result, as_of)
            columns: tuple[list[Any], ...] = (
                part.values,
                part.statuses,
                part.event_times,
                part.ages,
            )
            for out, column in zip(fields, columns, strict=True):
                for j, p in enumerate(positions):
                    out[p] = column[j]
            if part.newest_ms is not None:
                newest.append(part.newest_ms)
        values, statuses, times, ages = fields
        return Columns(values, statuses, times, ages, result.store, max(newest, default=None))
