"""A replica follows the registry version published in its region's Redis, without a restart.

Every ``refresh_s`` the follower reads the published number (one ``HGET``). When it is higher
than the one the replica serves, it reads the record, builds the new :class:`CatalogIndex` and
hands it to ``use`` (``ServingHttp.use_catalog``) between two turns of the event loop. A request
plans against the index it started with and keeps it to its answer, so one answer never mixes
two versions; requests that start after the swap use the new one.

Failures never stop the replica or change what it serves: a Redis error or an unreadable record
is logged (once per kind until it clears) and retried at the next refresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from features.errors import CatalogError
from features.registry import RegistryVersion
from serve_apps.plan import CatalogIndex

log = logging.getLogger(__name__)

ReadNumber = Callable[[], Awaitable[int | None]]
ReadVersion = Callable[[], Awaitable[RegistryVersion | None]]
Use = Callable[[CatalogIndex, int], None]


class CatalogFollower:
    """Moves a replica to each newer published registry version of ``tenant``; ``serving`` is
    the number it serves now (None: a catalog from code, which any published version replaces)."""

    def __init__(
        self,
        tenant: str,
        serving: int | None,
        read_number: ReadNumber,
        read_version: ReadVersion,
        use: Use,
    ) -> None:
        self.tenant = tenant
        self.serving = serving
        self._read_number = read_number
        self._read_version = read_version
        self._use = use
        self._failing: str | None = None  # the kind of failure last logged, until one clears

    async def refresh(self) -> bool:
        """One check; True when the replica moved to a newer version."""
        try:
            number = await self._read_number()
            if number is None or (self.serving is not None and number <= self.serving):
                self._cleared()
                return False
            version = await self._read_version()
            if version is None or (self.serving is not None and version.number <= self.serving):
                return False
            index = CatalogIndex(version.catalog, self.tenant)
        except CatalogError as exc:
            self._failed("record", "published registry version refused: %s", exc)
            return False
        except Exception as exc:  # redis-py's errors share no root with ours
            self._failed("store", "registry version unreadable from Redis: %s", type(exc).__name__)
            return False
        self._use(index, version.number)
        log.warning("now serving registry version %d (was %s)", version.number, self.serving)
        self.serving = version.number
        self._cleared()
        return True

    async def run(self, refresh_s: float) -> None:
        """Refresh every ``refresh_s`` until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(refresh_s)

    def _failed(self, kind: str, message: str, *args: object) -> None:
        if self._failing != kind:
            log.warning(message, *args)
        self._failing = kind

    def _cleared(self) -> None:
        if self._failing is not None:
            log.warning("registry version readable again")
        self._failing = None
