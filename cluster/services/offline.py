"""The offline store: an Apache Iceberg warehouse through pyiceberg's SQL catalog on SQLite.

There is no process to run; ``start`` makes sure the catalog and the ``freshline`` namespace exist.
Tables are created by the writers that own their schemas (idempotently, on first write). Moving the
warehouse to S3-compatible storage is a matter of the ``warehouse`` URI and its credentials.
"""

from __future__ import annotations

import shutil
from typing import Any

from cluster.services.base import ServiceStatus
from cluster.settings import StackSettings

NAMESPACE = "freshline"


def iceberg_catalog(settings: StackSettings) -> Any:
    from pyiceberg.catalog.sql import SqlCatalog

    settings.offline_dir.mkdir(parents=True, exist_ok=True)
    if settings.iceberg_warehouse_uri is None:
        (settings.offline_dir / "warehouse").mkdir(exist_ok=True)
    return SqlCatalog(
        "freshline", uri=settings.iceberg_catalog_uri, warehouse=settings.iceberg_warehouse
    )


def _existing_catalog(settings: StackSettings) -> Any:
    """The catalog as it is, for reading: no folder made, no catalog table created."""
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        "freshline",
        uri=settings.iceberg_catalog_uri,
        warehouse=settings.iceberg_warehouse,
        init_catalog_tables="false",
    )


class OfflineStoreService:
    name = "iceberg"

    def __init__(self, settings: StackSettings) -> None:
        self._settings = settings

    def status(self) -> ServiceStatus:
        endpoint = self._settings.iceberg_warehouse
        if not (self._settings.offline_dir / "catalog.db").exists():
            return ServiceStatus(
                self.name, "iceberg", endpoint, None, "down", "catalog not created"
            )
        try:
            tables = _existing_catalog(self._settings).list_tables(NAMESPACE)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            return ServiceStatus(self.name, "iceberg", endpoint, None, "unhealthy", detail)
        return ServiceStatus(
            self.name, "iceberg", endpoint, None, "healthy", f"{len(tables)} tables"
        )

    def start(self) -> None:
        iceberg_catalog(self._settings).create_namespace_if_not_exists(NAMESPACE)

    def stop(self, *, graceful: bool = True) -> bool:
        return False

    def purge(self) -> None:
        shutil.rmtree(self._settings.offline_dir, ignore_errors=True)
