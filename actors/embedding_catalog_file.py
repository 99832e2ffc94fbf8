"""A view's version catalog on disk: ``state_dir/catalog/<view>.json``.

Written by the view's catalog actor (``actors.embedding_versions``) before it tells anyone of a
change, and read by an index actor when it (re)starts, so a restarted actor follows the catalog
even if the push of the latest change never reached it. Written atomically (temporary file,
fsync, ``os.replace``): a reader sees the previous catalog or the next, never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from features.embedding_catalog import ViewCatalog
from features.errors import ConfigError


def catalog_path(state_dir: Path, view: str) -> Path:
    return state_dir / "catalog" / f"{view}.json"


def read_catalog(path: Path) -> ViewCatalog | None:
    """The catalog at ``path``; ``None`` when there is none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return ViewCatalog.model_validate_json(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a view catalog: {exc.error_count()} errors") from exc


def write_catalog(path: Path, catalog: ViewCatalog) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as out:
        out.write(catalog.model_dump_json(indent=2).encode())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
