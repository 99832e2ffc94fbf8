"""Serving-fallback and oracle reads of a region's DynamoDB online table (layout, marker and
error mapping: :mod:`regions.dynamodb_store`, which also holds the writer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from features.errors import StoreTimeout, StoreUnavailable
from regions.config import RegionConfig
from regions.dynamodb_store import (
    DEFAULT_RETRY,
    MAX_GET_KEYS,
    ClientFactory,
    Fields,
    Item,
    StoreBase,
    state_of,
)
from regions.resilience import Deadline, RetryPolicy, Sleep


class DynamoTileReader(StoreBase):
    """Serving-fallback reads. Items past ``expires_at`` are skipped: DynamoDB deletes expired
    items lazily (up to days later), so presence alone does not mean live. Every requested key is
    in the result, an empty dict when absent. Reads are eventually consistent unless ``consistent``
    (the marker read, :meth:`store_state`, always is consistent). ``get_all`` and ``get_fields``
    return what the table holds whatever its marker: serving checks it with :func:`require_ready`.
    """

    def __init__(
        self,
        region: RegionConfig,
        table: str,
        client_factory: ClientFactory,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        consistent: bool = False,
    ) -> None:
        super().__init__(
            region, table, client_factory, retry=retry, sleep=sleep, wall_clock=wall_clock
        )
        self._consistent = consistent

    def store_state(self, deadline: Deadline | None = None) -> bytes | None:
        """The marker (one GetItem): ``STORE_READY``, ``STORE_REHYDRATING`` or ``None``."""
        return state_of(self._with_retry(deadline, "get_item", **self.marker_read()).get("Item"))

    def get_all(self, keys: Sequence[str], deadline: Deadline | None = None) -> dict[str, Fields]:
        """Every live field of each key: one Query per key (paginated). Stops with
        ``StoreTimeout`` once ``deadline`` has passed: a caller that gave up (serving abandons a
        late call on its pool thread) must not leave a thread querying key after key."""
        out: dict[str, Fields] = {}
        for key in keys:
            items: list[Item] = []
            start: Item | None = None
            while True:
                self._check_deadline(deadline)
                page = self._query(key, start, deadline)
                items += page.get("Items", [])
                start = page.get("LastEvaluatedKey")
                if start is None:
                    break
            out[key] = self._live(items)
        return out

    def scan_all(self, keys: Sequence[str]) -> dict[str, Fields]:
        """Like :meth:`get_all`, from one paginated Scan of the whole table: for a reader that
        wants most of it (an oracle check), a few requests instead of a Query per key."""
        wanted: dict[str, list[Item]] = {key: [] for key in keys}
        start: Item | None = None
        while True:
            kwargs: dict[str, Any] = {"TableName": self._table, "ConsistentRead": self._consistent}
            if start is not None:
                kwargs["ExclusiveStartKey"] = start
            page = self._with_retry(None, "scan", **kwargs)
            for item in page.get("Items", []):
                wanted.get(item["pk"]["S"], []).append(item)
            start = page.get("LastEvaluatedKey")
            if start is None:
                return {key: self._live(items) for key, items in wanted.items()}

    def get_fields(
        self, wanted: Mapping[str, Sequence[str]], deadline: Deadline | None = None
    ) -> dict[str, Fields]:
        """The named fields of each key: BatchGetItem by 100, UnprocessedKeys retried."""
        ids = list(dict.fromkeys((k, f) for k, fields in wanted.items() for f in fields))
        found: list[Item] = []
        for i in range(0, len(ids), MAX_GET_KEYS):
            found += self._get_chunk(ids[i : i + MAX_GET_KEYS], deadline)
        out: dict[str, Fields] = {key: {} for key in wanted}
        for item in found:
            out.setdefault(item["pk"]["S"], {}).update(self._live([item]))
        return out

    def _check_deadline(self, deadline: Deadline | None) -> None:
        if deadline is not None and deadline.expired():
            raise StoreTimeout(f"{self.name}: deadline passed")

    def _query(self, key: str, start: Item | None, deadline: Deadline | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": key}},
            "ConsistentRead": self._consistent,
        }
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        return self._with_retry(deadline, "query", **kwargs)

    def _get_chunk(self, ids: Sequence[tuple[str, str]], deadline: Deadline | None) -> list[Item]:
        pending: list[Item] = [{"pk": {"S": k}, "sk": {"S": f}} for k, f in ids]
        found: list[Item] = []
        attempt = 0
        while pending:
            attempt += 1
            self._check_deadline(deadline)
            request = {self._table: {"Keys": pending, "ConsistentRead": self._consistent}}
            reply = self._with_retry(deadline, "batch_get_item", RequestItems=request)
            found += reply.get("Responses", {}).get(self._table, [])
            pending = reply.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
            if pending:
                delay = self._backoff_or_stop(attempt, deadline)
                if delay is None:
                    raise StoreUnavailable(f"{self.name}: {len(pending)} keys still unprocessed")
                self._sleep(delay)
        return found

    def _with_retry(
        self, deadline: Deadline | None, operation: str, **kwargs: Any
    ) -> dict[str, Any]:
        """``operation`` under the retry policy; a throttled call is retried as unavailable."""
        return self._retry.run(partial(self._once, operation, **kwargs), self._sleep, deadline)

    def _live(self, items: Sequence[Item]) -> Fields:
        now = self._wall_clock()
        return {
            item["sk"]["S"]: bytes(item["v"]["B"])
            for item in items
            if "expires_at" not in item or float(item["expires_at"]["N"]) > now
        }
