"""The version catalog of one embedding view: which model versions are indexed, which one serves.

A :class:`ViewCatalog` is an immutable value; every change returns a new one with ``generation``
one higher (the number the Serve apps follow, so a replica knows it has the latest). The life of a
model version::

    add ──► building ──(its index actors ready)──► live ──switch to another──► retiring
                                                     ▲                            │ grace over
                                                     └──── switch back ───────────┤
                                                                                  ▼
                                                          dropping ──(actors stopped, Redis
                                                                      vectors and snapshots
                                                                      deleted)──► gone

- ``view.model_versions`` are the versions indexed and searchable, including those retiring;
  "building" and "live" differ only in their actors' readiness, which this module does not see.
- ``view.serving_version`` is the version a search without ``version`` reads. :meth:`switch`
  moves it in one step and retires the previous one, to be dropped ``grace`` later; switching back
  to a retiring version cancels its retirement.
- A dropped version leaves ``model_versions`` at once (searches naming it are refused as unknown)
  and stays in ``dropping`` until its actors, Redis vectors and snapshots are gone; a version still
  dropping cannot be added again.
- The first version of ``model_versions`` is the *reporting* version: its index actor in the
  first region sends the view's dead letters (one reporter, so a bad event is reported once), so
  dropping the first version moves that duty to the next.

Invariants (checked on every construction): the serving version is live and not retiring;
retiring versions are live; a dropping version is not live; versions are unique.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.embeddings import EmbeddingView, Version
from features.errors import ConfigError


class VersionChangeRefused(ConfigError):
    """A version change the catalog's rules (or the state of its index actors) do not allow."""


class Retirement(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Version
    drop_after_ms: int = Field(ge=0)


class ViewCatalog(BaseModel):
    """One view's versions at one ``generation``; see the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generation: int = Field(ge=1)
    view: EmbeddingView
    retiring: tuple[Retirement, ...] = ()
    dropping: tuple[Version, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        live = set(self.view.model_versions)
        retiring = [r.version for r in self.retiring]
        if len(set(retiring)) != len(retiring) or not set(retiring) <= live:
            raise ValueError("retiring versions must be distinct live versions")
        if self.view.serving_version in retiring:
            raise ValueError("the serving version cannot be retiring")
        if len(set(self.dropping)) != len(self.dropping) or live & set(self.dropping):
            raise ValueError("dropping versions must be distinct and no longer live")
        return self

    @classmethod
    def initial(cls, view: EmbeddingView) -> ViewCatalog:
        return cls(generation=1, view=view)

    @property
    def name(self) -> str:
        return self.view.name

    def drop_after_ms(self, version: str) -> int | None:
        """When a retiring ``version`` is dropped; ``None`` when it is not retiring."""
        return next((r.drop_after_ms for r in self.retiring if r.version == version), None)

    def due(self, now_ms: int) -> tuple[str, ...]:
        """Retiring versions whose grace period is over."""
        return tuple(r.version for r in self.retiring if r.drop_after_ms <= now_ms)

    # --- Changes: each returns the next generation ----------------------------------------------

    def add(self, version: str) -> ViewCatalog:
        """``version`` is indexed side by side; reads do not move."""
        if version in self.view.model_versions:
            raise VersionChangeRefused(f"{version!r} is already a version of {self.name!r}")
        if version in self.dropping:
            raise VersionChangeRefused(f"{version!r} is still being dropped; add it once gone")
        return self._next(model_versions=(*self.view.model_versions, version))

    def switch(self, version: str, now_ms: int, grace_ms: int) -> ViewCatalog:
        """Reads move to ``version``; the previous serving version retires for ``grace_ms``.
        Whether ``version``'s index is ready is the caller's check (this module cannot see it)."""
        self._check_live(version)
        previous = self.view.serving_version
        if version == previous:
            return self
        retiring = tuple(r for r in self.retiring if r.version != version)
        retiring += (Retirement(version=previous, drop_after_ms=now_ms + _grace(grace_ms)),)
        return self._next(serving_version=version, retiring=retiring)

    def retire(self, version: str, now_ms: int, grace_ms: int) -> ViewCatalog:
        """``version`` stays searchable for ``grace_ms``, then is dropped; retiring a version
        that is already retiring sets its new drop time."""
        self._check_live(version)
        if version == self.view.serving_version:
            raise VersionChangeRefused(f"{version!r} serves reads: switch to another version first")
        retiring = tuple(r for r in self.retiring if r.version != version)
        retiring += (Retirement(version=version, drop_after_ms=now_ms + _grace(grace_ms)),)
        return self._next(retiring=retiring)

    def drop(self, version: str) -> ViewCatalog:
        """A retiring ``version`` leaves the view; its resources are now to be deleted."""
        if self.drop_after_ms(version) is None:
            raise VersionChangeRefused(f"{version!r} is not retiring")
        versions = tuple(v for v in self.view.model_versions if v != version)
        retiring = tuple(r for r in self.retiring if r.version != version)
        return self._next(
            model_versions=versions, retiring=retiring, dropping=(*self.dropping, version)
        )

    def forget(self, version: str) -> ViewCatalog:
        """``version``'s actors, vectors and snapshots are gone."""
        if version not in self.dropping:
            raise VersionChangeRefused(f"{version!r} is not being dropped")
        return self._next(dropping=tuple(v for v in self.dropping if v != version))

    def _check_live(self, version: str) -> None:
        if version not in self.view.model_versions:
            raise VersionChangeRefused(f"{version!r} is not a version of {self.name!r}")

    def _next(
        self,
        *,
        model_versions: tuple[str, ...] | None = None,
        serving_version: str | None = None,
        retiring: tuple[Retirement, ...] | None = None,
        dropping: tuple[str, ...] | None = None,
    ) -> ViewCatalog:
        fields = self.view.model_dump()
        if model_versions is not None:
            fields["model_versions"] = model_versions
        if serving_version is not None:
            fields["serving_version"] = serving_version
        return ViewCatalog(
            generation=self.generation + 1,
            view=EmbeddingView.model_validate(fields),
            retiring=self.retiring if retiring is None else retiring,
            dropping=self.dropping if dropping is None else dropping,
        )


def _grace(grace_ms: int) -> int:
    if grace_ms < 0:
        raise VersionChangeRefused("the grace period must not be negative")
    return grace_ms
