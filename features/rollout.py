"""Rolling a view out to a new version: pure transforms of a registry catalog, and who sees what.

A changed view definition is a new view version (``features.registry.plan``). Applying it does not
replace the old version: :func:`merge_repository` keeps the old definition computed beside the new
one as a :class:`~features.catalog.Rollout` at share 0 (shadow: nobody reads the new version).
Then, each step a new registry version:

- :func:`set_share` serves the candidate to a sticky ``share`` percent of entities (canary), 100
  promotes it;
- :func:`rollback` returns every entity to the previous version (share 0);
- :func:`retire` stops computing the version no entity reads (the previous one once promoted, or
  the candidate once rolled back); its stored keys expire by the view's TTL.

Which version answers for an entity is :func:`canary_bucket` ``< share``: a hash of the view name
and the entity id, so one entity keeps its version across requests, replicas and regions, and a
share that grows only adds entities to the candidate. Every function returns a new validated
catalog or raises :class:`~features.errors.CatalogError` naming the field.
"""

from __future__ import annotations

import hashlib

from features.catalog import Catalog, FeatureView, Rollout
from features.errors import CatalogError

BUCKETS = 100


def canary_bucket(view: str, entity_id: str) -> int:
    """The entity's bucket in ``[0, 100)`` for ``view``: the candidate serves it when the bucket
    is below the rollout's share. Salted by the view so that canaries of two views do not pick the
    same entities."""
    digest = hashlib.blake2b(entity_id.encode(), digest_size=8, person=view.encode()[:16])
    return int.from_bytes(digest.digest(), "big") % BUCKETS


def served_version(catalog: Catalog, view: str, entity_id: str) -> FeatureView:
    """The definition of ``view`` that answers for ``entity_id``."""
    candidate = catalog.view(view)
    rollout = catalog.rollout(view)
    if rollout is None or rollout.share == BUCKETS:
        return candidate
    if rollout.share and canary_bucket(view, entity_id) < rollout.share:
        return candidate
    return rollout.previous


def merge_repository(current: Catalog | None, proposed: Catalog) -> Catalog:
    """The registry catalog that applying a repository's ``proposed`` catalog publishes: rollouts
    of unchanged views carry over, a view whose version changed starts a rollout at share 0, and
    a view dropped from the repository drops its rollout. A new version of a view that is rolling
    out already is refused: finish that rollout first (``retire``)."""
    if current is None:
        return proposed
    rollouts: list[Rollout] = []
    for view in proposed.views:
        before = next((v for v in current.views if v.name == view.name), None)
        ongoing = current.rollout(view.name)
        if before is None or before.version == view.version:
            if ongoing is not None and before is not None:
                rollouts.append(ongoing)
            continue
        if ongoing is not None:
            raise CatalogError(
                f"view {view.name!r} is rolling out v{before.version} (share {ongoing.share} %, "
                f"previous v{ongoing.previous.version}); retire one of them before applying "
                f"v{view.version}",
                field=f"views[{view.name}].version",
            )
        rollouts.append(Rollout(view=view.name, previous=before, share=0))
    return _with(proposed, rollouts)


def set_share(catalog: Catalog, view: str, version: int, share: int) -> Catalog:
    """Serve ``version`` (the rollout's candidate) to ``share`` percent of entities."""
    rollout = _rollout(catalog, view)
    candidate = catalog.view(view)
    if version != candidate.version:
        raise CatalogError(
            f"view {view!r} is rolling out v{candidate.version} (previous "
            f"v{rollout.previous.version}); --to must be {candidate.version}",
            field="version",
        )
    if not 0 <= share <= BUCKETS:
        raise CatalogError(f"must be between 0 and {BUCKETS}, got {share}", field="share")
    return _replace(catalog, rollout.model_copy(update={"share": share}))


def rollback(catalog: Catalog, view: str) -> Catalog:
    """Every entity back on the previous version (share 0); the candidate stays computed."""
    return _replace(catalog, _rollout(catalog, view).model_copy(update={"share": 0}))


def retire(catalog: Catalog, view: str, version: int) -> Catalog:
    """Stop computing ``version`` of ``view``, which must serve no entity: the previous version
    once the candidate has share 100, or the candidate once the share is back at 0 (the previous
    definition becomes the view's again)."""
    rollout = _rollout(catalog, view)
    candidate = catalog.view(view)
    if version == rollout.previous.version:
        if rollout.share != BUCKETS:
            raise CatalogError(
                f"v{version} still serves {BUCKETS - rollout.share} % of entities; promote "
                f"v{candidate.version} (share 100) first",
                field="version",
            )
        return _with(catalog, [r for r in catalog.rollouts if r.view != view])
    if version == candidate.version:
        if rollout.share != 0:
            raise CatalogError(
                f"v{version} serves {rollout.share} % of entities; roll back first",
                field="version",
            )
        views = tuple(rollout.previous if v.name == view else v for v in catalog.views)
        rest = [r for r in catalog.rollouts if r.view != view]
        return Catalog.from_dict({**_plain(catalog), "views": views, "rollouts": rest})
    raise CatalogError(
        f"view {view!r} computes v{rollout.previous.version} and v{candidate.version}, not "
        f"v{version}",
        field="version",
    )


def _rollout(catalog: Catalog, view: str) -> Rollout:
    catalog.view(view)  # an unknown view is named as such
    rollout = catalog.rollout(view)
    if rollout is None:
        raise CatalogError(f"view {view!r} has no rollout in progress", field="view")
    return rollout


def _replace(catalog: Catalog, rollout: Rollout) -> Catalog:
    return _with(catalog, [rollout if r.view == rollout.view else r for r in catalog.rollouts])


def _with(catalog: Catalog, rollouts: list[Rollout]) -> Catalog:
    return Catalog.from_dict({**_plain(catalog), "rollouts": rollouts})


def _plain(catalog: Catalog) -> dict[str, object]:
    return {
        "entities": catalog.entities,
        "sources": catalog.sources,
        "views": catalog.views,
        "services": catalog.services,
    }
