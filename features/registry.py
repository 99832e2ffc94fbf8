"""Feature repositories and registry versions: pure logic, no file or Kafka I/O.

A *feature repository* is a folder of YAML documents a user keeps (as a Feast user keeps a feature
repo). Each document holds any of the catalog's four lists, ``entities``, ``sources``, ``views``
and ``services``; the repository's catalog is their union. :func:`catalog_from_documents` builds it
and blames every error on the document that defined the offending item. ``cluster.registry``
reads the folder and publishes versions; this module decides what a version is:

- a :class:`RegistryVersion` is a validated catalog with its number (1, 2, ...), its parent's number
  and a digest of its canonical JSON;
- :func:`plan` lists what a new catalog adds, removes and changes against the current one, and
  refuses a view whose definition changed while its ``version`` stayed: stored tiles are keyed by
  view version, so the old tiles would be read as the new definition's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from features.catalog import Catalog
from features.errors import CatalogError

KINDS = ("entities", "sources", "views", "services")
_SINGULAR = {
    "entities": "entity",
    "sources": "source",
    "views": "view",
    "services": "service",
    "rollouts": "rollout of view",
}


class RepositoryError(CatalogError):
    """A feature repository that does not make a catalog. The message starts with the document
    that defined the culprit (when one did), then its dotted ``field`` path."""

    def __init__(self, message: str, *, document: str = "", field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.document = document
        if document:
            self.args = (f"{document}: {self.args[0]}",)


def catalog_from_documents(documents: Mapping[str, Any]) -> Catalog:
    """The catalog of a repository whose documents are ``{name: parsed YAML}``. Every error is a
    :class:`RepositoryError` naming the document (and the field, as ``Catalog.from_dict`` does)."""
    merged: dict[str, list[Any]] = {kind: [] for kind in KINDS}
    origin: dict[tuple[str, str], str] = {}
    for name in sorted(documents):
        for kind, item in _items(name, documents[name]):
            key = (kind, str(item.get("name", "")))
            if key in origin:
                raise RepositoryError(
                    f"{_SINGULAR[kind]} {key[1]!r} is also defined in {origin[key]}",
                    document=name,
                    field=f"{kind}[{key[1]}].name",
                )
            origin[key] = name
            merged[kind].append(item)
    try:
        return Catalog.from_dict(merged)
    except CatalogError as exc:
        message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
        document = _blame(exc.field or "", origin)
        raise RepositoryError(message, document=document, field=exc.field) from None


def _items(name: str, document: Any) -> Iterable[tuple[str, dict[str, Any]]]:
    if document is None:
        return  # an empty file: nothing defined
    if not isinstance(document, Mapping):
        raise RepositoryError(f"a document is a mapping of {', '.join(KINDS)}", document=name)
    unknown = sorted(set(document) - set(KINDS))
    if unknown:
        raise RepositoryError(
            f"unknown top-level key {unknown[0]!r} (expected one of {', '.join(KINDS)})",
            document=name,
        )
    for kind in KINDS:
        items = document.get(kind) or []
        if not isinstance(items, list):
            raise RepositoryError("must be a list", document=name, field=kind)
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise RepositoryError("needs a name", document=name, field=f"{kind}[{i}]")
            yield kind, dict(item)


def _blame(field: str, origin: Mapping[tuple[str, str], str]) -> str:
    """The document defining the item a dotted ``field`` path starts with (``views[x]...``)."""
    head = field.split(".", 1)[0]
    kind, _, rest = head.partition("[")
    return origin.get((kind, rest.rstrip("]")), "")


def catalog_json(catalog: Catalog) -> dict[str, Any]:
    """The catalog as JSON data. An empty ``rollouts`` is left out, so a catalog without one has
    the digest it had before rollouts existed and older registry records still verify."""
    data = catalog.model_dump(mode="json")
    if not data["rollouts"]:
        del data["rollouts"]
    return data


def canonical(catalog: Catalog) -> bytes:
    """The catalog as canonical JSON (sorted keys, no spaces): equal catalogs, equal bytes."""
    return json.dumps(catalog_json(catalog), sort_keys=True, separators=(",", ":")).encode()


def digest(catalog: Catalog) -> str:
    return hashlib.sha256(canonical(catalog)).hexdigest()


def computation_digest(catalog: Catalog) -> str:
    """A digest of what the pipeline computes from a catalog (entities, sources and every
    computed view version), blind to what only serving reads (services, rollout shares): two
    catalogs with equal ones need no consumer restart between them."""
    views = sorted(catalog.computed_views, key=lambda v: (v.name, v.version))
    data = {
        "entities": [e.model_dump(mode="json") for e in catalog.entities],
        "sources": [s.model_dump(mode="json") for s in catalog.sources],
        "views": [v.model_dump(mode="json") for v in views],
    }
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class RegistryVersion:
    """One applied catalog. ``number`` counts from 1; ``parent`` is the number it replaced (0 for
    the first). ``applied_at`` is timezone-aware UTC."""

    number: int
    parent: int
    catalog: Catalog
    applied_at: datetime

    def __post_init__(self) -> None:
        if self.number < 1 or self.parent != self.number - 1:
            raise CatalogError(f"registry version {self.number} cannot follow {self.parent}")
        if self.applied_at.tzinfo is None:
            raise CatalogError("applied_at must be timezone-aware")

    @property
    def digest(self) -> str:
        return digest(self.catalog)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "number": self.number,
                "parent": self.parent,
                "digest": self.digest,
                "applied_at": self.applied_at.astimezone(UTC).isoformat(),
                "catalog": catalog_json(self.catalog),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RegistryVersion:
        """Inverse of :meth:`encode`; a record whose catalog does not match its digest (or does
        not validate) raises :class:`CatalogError`."""
        try:
            data = json.loads(raw)
            version = cls(
                number=int(data["number"]),
                parent=int(data["parent"]),
                catalog=Catalog.from_dict(data["catalog"]),
                applied_at=datetime.fromisoformat(data["applied_at"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CatalogError(f"unreadable registry record: {exc}") from None
        if version.digest != data.get("digest"):
            raise CatalogError(f"registry version {version.number} does not match its digest")
        return version


@dataclass(frozen=True)
class Change:
    """One line of a plan: ``op`` is ``+`` (added), ``-`` (removed) or ``~`` (changed)."""

    op: str
    kind: str
    name: str
    detail: str = ""

    def __str__(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"{self.op} {_SINGULAR[self.kind]} {self.name}{tail}"


def plan(current: Catalog | None, proposed: Catalog) -> list[Change]:
    """What applying ``proposed`` over ``current`` changes, in kind then name order. A view whose
    definition changed under the same ``version`` raises :class:`CatalogError` naming it."""
    changes: list[Change] = []
    for kind in KINDS:
        before = _by_name(current, kind)
        after = _by_name(proposed, kind)
        for name in sorted(before.keys() | after.keys()):
            old, new = before.get(name), after.get(name)
            if old is None:
                changes.append(Change("+", kind, name, _version_of(kind, new)))
            elif new is None:
                changes.append(Change("-", kind, name, _version_of(kind, old)))
            elif old != new:
                changes.append(_changed(kind, name, old, new))
    return changes + _rollout_changes(current, proposed)


def _rollout_changes(current: Catalog | None, proposed: Catalog) -> list[Change]:
    before = {r.view: r for r in current.rollouts} if current is not None else {}
    after = {r.view: r for r in proposed.rollouts}
    changes = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if new is None:
            changes.append(Change("-", "rollouts", name, "rollout ended"))
        elif old != new:
            candidate = proposed.view(name).version
            what = f"v{new.previous.version} -> v{candidate}, share {new.share} %"
            changes.append(Change("+" if old is None else "~", "rollouts", name, what))
    return changes


def _by_name(catalog: Catalog | None, kind: str) -> dict[str, dict[str, Any]]:
    if catalog is None:
        return {}
    return {item.name: item.model_dump(mode="json") for item in getattr(catalog, kind)}


def _version_of(kind: str, item: Mapping[str, Any] | None) -> str:
    return f"v{item['version']}" if kind == "views" and item is not None else ""


def _changed(kind: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> Change:
    fields = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if kind == "views" and old["version"] == new["version"]:
        raise CatalogError(
            f"the definition of view {name!r} changed ({', '.join(fields)}) but its version stays "
            f"{old['version']}: stored tiles are kept per view version, so give the changed "
            f"definition version {old['version'] + 1}",
            field=f"views[{name}].version",
        )
    if kind == "views":
        return Change("~", kind, name, f"v{old['version']} -> v{new['version']}")
    return Change("~", kind, name, ", ".join(fields))
